"""The official-structure HPM step: the baseline for the same-math speed-up of the trainer's step.

Same model (hpm_pretrain's HPMViT, same parameters for the same seed), same losses, the
structure SPEC describes for the official code:

- the EMA teacher runs the encoder on the full image, then **both** decoders — the
  reconstruction decoder too, whose output is thrown away — and the loss predictor's scores;
- the mask comes from the per-sample selection loop (``baselines.select_per_sample_loop``: a
  device-to-host copy, a NumPy delete and shuffle per image);
- patchify is MAE's einsum of the whole image followed by a gather, token gathers index with a
  tensor repeated D times;
- the reconstruction loss is ``baselines.patch_mse_loss_eager`` (einsum + gather + eager
  norm-pix + MSE) and the ranking loss ``baselines.ranking_loss_eager`` (N×M×M tensors);
- then backward, AdamW and the EMA update exactly as the trainer does them.
"""

from __future__ import annotations

from collections.abc import Callable

import baselines
import numpy as np
import torch

from hpm_pretrain.model import HPMViT
from hpm_pretrain.ops import Selection
from hpm_pretrain.train import ema_update


class OfficialOps:
    """The ops of hpm_pretrain's Ops protocol, written the way the official code computes them."""

    name = "official"

    def __init__(self, rng: np.random.Generator | None = None):
        self.rng = rng if rng is not None else np.random.default_rng(0)

    def patchify(self, imgs, p, ids=None):
        return baselines.patchify_gather_eager(imgs, p, ids)

    def gather_tokens(self, x, ids):
        return baselines.gather_tokens_repeat(x.expand(ids.shape[0], -1, -1), ids)

    def patch_mse_loss(self, pred, imgs, p, ids, norm_pix):
        return baselines.patch_mse_loss_eager(pred, imgs, p, ids, norm_pix)

    def select_patches(self, scores, noise, mask_ratio, hard_ratio):
        ids_keep, ids_mask, mask = baselines.select_per_sample_loop(scores, mask_ratio, hard_ratio, self.rng)
        ids_restore = torch.argsort(torch.cat([ids_keep, ids_mask], dim=1), dim=1)
        return Selection(ids_keep, ids_mask, ids_restore, mask)

    def ranking_loss(self, pred, target):
        return baselines.ranking_loss_eager(pred, target.detach())


def _noop(part: str) -> None:
    pass


def official_forward(
    student: HPMViT,
    teacher: HPMViT,
    imgs: torch.Tensor,
    mask_ratio: float,
    hard_ratio: float,
    norm_pix: bool,
    mark: Callable[[str], None] = _noop,
) -> torch.Tensor:
    """Teacher (both decoders) -> per-sample selection -> student -> eager losses; returns the loss.

    ``student`` and ``teacher`` are HPMViT models built with :class:`OfficialOps`. ``mark(part)``
    is called at the end of the teacher, selection and student-forward parts; the losses part
    ends in :func:`official_step` once the loss is read on the host.
    """
    ops: OfficialOps = student.ops
    L, p = student.cfg.num_patches, student.cfg.patch_size
    with torch.no_grad():
        x = teacher.decoder_input(teacher.encode(imgs), None, None)
        teacher.reconstruct(x, L)  # the official teacher also reconstructs every patch; discarded
        scores = teacher.predict_loss(x, 1).float()
    mark("teacher")
    sel = ops.select_patches(scores, None, mask_ratio, hard_ratio)
    mark("selection")
    pixels, pred_scores = student(imgs, sel)
    mark("student forward")
    loss_rec, per_patch = ops.patch_mse_loss(pixels, imgs, p, sel.ids_mask, norm_pix)
    loss = loss_rec + ops.ranking_loss(pred_scores, per_patch)
    return loss


def official_step(
    student: HPMViT,
    teacher: HPMViT,
    optimizer: torch.optim.Optimizer,
    imgs: torch.Tensor,
    mask_ratio: float = 0.75,
    hard_ratio: float = 0.5,
    norm_pix: bool = False,
    ema_decay: float = 0.999,
    autocast=None,
    mark: Callable[[str], None] = _noop,
) -> float:
    """One official-structure HPM optimizer step; returns the loss (read on the host, as the
    trainer does). ``mark`` as in :func:`official_forward`, plus backward + optimizer and EMA."""
    if autocast is None:
        autocast = torch.autocast(imgs.device.type, enabled=False)
    with autocast:
        loss = official_forward(student, teacher, imgs, mask_ratio, hard_ratio, norm_pix, mark)
    value = float(loss.detach())
    mark("losses")
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    mark("backward + optimizer")
    ema_update(teacher, student, ema_decay)
    mark("EMA")
    return value
