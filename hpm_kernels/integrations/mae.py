"""``patch_mae``: one call turns a model written to the MAE interface into one on the fused ops.

Two interfaces are recognised by their methods and attributes:

* **MAE** (the reference ``MaskedAutoencoderViT``, copied by most MAE code bases): ``patchify``,
  ``unpatchify``, ``random_masking``, ``forward_encoder(imgs, mask_ratio)``,
  ``forward_decoder(latent, ids_restore)``, ``forward_loss(imgs, pred, mask)``, ``forward``;
* **HPM** (the official HPM code, which extends it): ``forward_encoder(imgs, mask)`` with a boolean
  mask, ``forward_decoder(latent, mask)`` with a reconstruction and a loss-prediction decoder,
  ``forward_loss`` returning ``{"mean", "matrix"}``, ``generate_mask(loss_pred, mask_ratio, images,
  guide, epoch, total_epoch)`` and ``forward_learning_loss(loss_pred, mask, loss_target, relative)``.

Both need ``patch_embed`` (a timm-style ``PatchEmbed`` whose ``proj`` is a Conv2d with a square
kernel equal to its stride), ``pos_embed``, ``cls_token``, ``blocks``, ``norm``, ``decoder_embed``,
``mask_token``, ``decoder_pos_embed``, ``decoder_blocks``, ``decoder_norm``, ``decoder_pred`` and
read ``norm_pix_loss`` (False if absent) at every call. The methods are replaced on the instance
only (the class is untouched; ``unpatch_mae`` deletes them again), by functions that compute the
reference method bodies with the fused ops:

* ``patchify`` / ``unpatchify``: ``hk.patchify`` / ``hk.unpatchify`` (MAE's (i, j, c) order);
* ``forward_encoder``: only the visible patches are embedded: ``hk.patchify(imgs, p, ids_keep)``
  through the Conv2d's equivalent linear map; MAE's mask comes from ``hk.select_patches`` on the
  same ``torch.rand(N, L)`` draw as ``random_masking`` (same masks, loss and gradients as the
  unpatched model under the same seed, to float rounding: visible tokens enter the encoder in
  raster order instead of noise order, and ``ids_restore`` says so);
* ``forward_loss``: ``hk.patch_mse_loss`` (norm-pix inside the kernel, target never stored);
* HPM ``forward_decoder``: the same two decoders, position embeddings by ``hk.gather_tokens``
  instead of boolean indexing (which copies to the host);
* HPM ``generate_mask``: one ``hk.select_patches`` call for the batch, no Python loop, no host
  sync. The same distribution as the official loop (the hardest ``int(M * ratio)`` patches always
  masked, the rest of the masked set uniform over the other patches), not the same random draws;
  ties in ``loss_pred`` go to the lower index (the official ``argsort`` leaves them unspecified);
* HPM ``forward_learning_loss(relative=True)``: ``hk.pairwise_ranking_loss``, O(N*M) memory
  instead of N x M x M tensors (0 instead of NaN when a batch has no untied pair);
  ``relative=False`` runs the original method.

The HPM interface passes masks as boolean tensors, so the number of visible patches is data:
the patched ``forward_encoder`` reads it once per call (one small device-to-host copy; the
original's boolean indexing made three per forward and ``generate_mask`` one per image) and
checks on the device that every row has the same count. What the patch does not understand
(``vis_mask_ratio > 0``, a ``forward_loss`` with another signature, e.g. feature targets) is left
alone, listed in the returned report and warned about; nothing is changed silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
import types
import warnings
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import assert_on_device
from ..ops.gather_tokens import gather_tokens
from ..ops.patch_mse_loss import patch_mse_loss
from ..ops.patchify import patchify, unpatchify
from ..ops.ranking_loss import pairwise_ranking_loss
from ..ops.select_patches import Selection, select_patches

REQUIRED = (
    "patch_embed",
    "pos_embed",
    "cls_token",
    "blocks",
    "norm",
    "decoder_embed",
    "mask_token",
    "decoder_pos_embed",
    "decoder_blocks",
    "decoder_norm",
    "decoder_pred",
)
_STATE = "_hk_patch"


@dataclasses.dataclass
class PatchReport:
    """What :func:`patch_mae` did to a model."""

    interface: str  #: "mae" or "hpm"
    patch_size: int
    backend: str | None
    patched: list[str]  #: methods replaced on the instance
    left_alone: dict[str, str]  #: method -> why the patch did not touch it

    def __str__(self) -> str:
        lines = [f"patch_mae: {self.interface} interface, patch {self.patch_size}, backend {self.backend or 'auto'}"]
        lines.append("  fused: " + ", ".join(self.patched))
        lines += [f"  left alone: {name}: {why}" for name, why in self.left_alone.items()]
        return "\n".join(lines)


@dataclasses.dataclass
class _State:
    report: PatchReport
    last: tuple[torch.Tensor, Selection] | None = None  # (the mask tensor handed out, its selection)
    override: Selection | None = None  # use_selection's: masks chosen by the caller (HPM on an MAE model)


# -- inspection --------------------------------------------------------------------------------
def _patch_size(model: nn.Module) -> int:
    proj = getattr(model.patch_embed, "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise ValueError(
            f"patch_mae: `model.patch_embed.proj` must be the nn.Conv2d patch embedding of timm's PatchEmbed, "
            f"got {type(proj).__name__}"
        )
    k, s = tuple(proj.kernel_size), tuple(proj.stride)
    if k[0] != k[1] or k != s or tuple(proj.padding) != (0, 0) or tuple(proj.dilation) != (1, 1) or proj.groups != 1:
        raise ValueError(
            "patch_mae: hpm_kernels cuts square p x p patches; the model's patch embedding is "
            f"Conv2d(kernel_size={k}, stride={s}, padding={proj.padding}, dilation={proj.dilation}, groups={proj.groups}), "
            "which needs kernel_size == stride == (p, p), no padding, dilation or groups"
        )
    return k[0]


def _interface(model: nn.Module) -> str:
    missing = [name for name in REQUIRED if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"patch_mae: {type(model).__name__} does not follow the MAE interface: no {', '.join(f'`{m}`' for m in missing)} "
            f"(needs {', '.join(REQUIRED)})"
        )
    if hasattr(model, "generate_mask") and hasattr(model, "forward_learning_loss"):
        return "hpm"
    if hasattr(model, "random_masking"):
        return "mae"
    raise ValueError(
        f"patch_mae: {type(model).__name__} has neither `random_masking` (MAE) nor `generate_mask` and "
        "`forward_learning_loss` (official HPM): which masking interface it follows is unknown"
    )


def _params(method) -> list[str]:
    return list(inspect.signature(method).parameters)


# -- the replacements (bound to the instance) ----------------------------------------------------
def _backend(self) -> str | None:
    return getattr(self, _STATE).report.backend


def _p(self) -> int:
    return getattr(self, _STATE).report.patch_size


def _patchify(self, imgs: torch.Tensor) -> torch.Tensor:
    """imgs (N, C, H, W) -> (N, L, p*p*C)."""
    return patchify(imgs, _p(self), backend=_backend(self))


def _unpatchify(self, x: torch.Tensor) -> torch.Tensor:
    """(N, L, p*p*C) -> imgs (N, C, H, W), on the model's patch grid."""
    p = _p(self)
    gh, gw = _grid(self, x.shape[1])
    return unpatchify(x, p, gh * p, gw * p, backend=_backend(self))


def _grid(self, L: int) -> tuple[int, int]:
    grid = getattr(self.patch_embed, "grid_size", None)
    if grid is not None and grid[0] * grid[1] == L:
        return int(grid[0]), int(grid[1])
    side = math.isqrt(L)
    if side * side != L:
        raise ValueError(f"unpatchify: {L} patches make no square grid and patch_embed has no matching grid_size")
    return side, side


def _embed_visible(self, imgs: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
    """The Conv2d patch embedding of the patches ``ids_keep`` only, plus their position embeddings:
    (N, K, D). conv weight (D, C, p, p) -> linear weight over MAE's (i, j, c) patch order."""
    proj = self.patch_embed.proj
    weight = proj.weight.permute(0, 2, 3, 1).reshape(proj.out_channels, -1)
    x = F.linear(patchify(imgs, _p(self), ids_keep, backend=_backend(self)), weight, proj.bias)
    norm = getattr(self.patch_embed, "norm", None)
    if norm is not None:
        x = norm(x)
    return x + gather_tokens(self.pos_embed[:, 1:].to(x.dtype), ids_keep, backend=_backend(self))


def _encode(self, x: torch.Tensor) -> torch.Tensor:
    cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1)
    for blk in self.blocks:
        x = blk(x)
    return self.norm(x)


def _mae_select(self, N: int, L: int, mask_ratio: float, device: torch.device) -> Selection:
    override = getattr(self, _STATE).override
    if override is not None:
        if tuple(override.mask.shape) != (N, L):
            raise ValueError(f"use_selection: the selection is for masks {tuple(override.mask.shape)}, the batch has {(N, L)}")
        return override
    noise = torch.rand(N, L, device=device)  # the draw random_masking makes, in the same place
    return select_patches(noise, noise, mask_ratio, 0.0, backend=_backend(self))


def _remember(self, mask: torch.Tensor, sel: Selection) -> torch.Tensor:
    getattr(self, _STATE).last = (mask, sel)
    return mask


def _mae_random_masking(self, x: torch.Tensor, mask_ratio: float):
    """x (N, L, D) -> (x_masked (N, K, D) in raster order, mask (N, L) 1 = masked, ids_restore (N, L))."""
    N, L, _ = x.shape
    sel = _mae_select(self, N, L, mask_ratio, x.device)
    mask = _remember(self, sel.mask.to(x.dtype), sel)
    return gather_tokens(x, sel.ids_keep, backend=_backend(self)), mask, sel.ids_restore


def _mae_forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
    """imgs (N, C, H, W) -> (latent (N, 1 + K, D), mask (N, L), ids_restore (N, L))."""
    p = _p(self)
    N, L = imgs.shape[0], (imgs.shape[2] // p) * (imgs.shape[3] // p)
    sel = _mae_select(self, N, L, mask_ratio, imgs.device)
    mask = _remember(self, sel.mask.to(self.pos_embed.dtype), sel)
    return _encode(self, _embed_visible(self, imgs, sel.ids_keep)), mask, sel.ids_restore


def _ids_from_mask(self, mask: torch.Tensor) -> Selection:
    """The selection behind a (N, L) mask (nonzero / True = masked): the one this model handed out
    if it is that tensor, else recovered by a stable sort (one host read of the per-row count)."""
    last = getattr(self, _STATE).last
    if last is not None and last[0] is mask:
        return last[1]
    masked = mask.to(torch.bool)
    L = masked.shape[1]
    num_mask = int(masked[0].sum())  # the one host read: the count sets the output shapes
    counts = masked.sum(1)
    assert_on_device((counts == num_mask).all(), "patch_mae: every row of `mask` must mask as many patches")
    order = torch.argsort(masked.to(torch.int8), dim=1, stable=True)  # visible (raster), then masked (raster)
    ids_keep, ids_mask = order[:, : L - num_mask], order[:, L - num_mask :]
    sel = Selection(ids_keep, ids_mask, torch.argsort(order, dim=1), masked)
    getattr(self, _STATE).last = (mask, sel)
    return sel


def _mae_forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pred (N, L, P) for every patch, mask (N, L) 1 = masked -> mean loss over the masked patches."""
    sel = _ids_from_mask(self, mask)
    norm_pix = bool(getattr(self, "norm_pix_loss", False))
    pred_masked = gather_tokens(pred, sel.ids_mask, backend=_backend(self))
    loss, _ = patch_mse_loss(pred_masked, imgs, _p(self), sel.ids_mask, norm_pix, backend=_backend(self))
    return loss


def _hpm_forward_encoder(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """imgs (N, C, H, W), mask (N, L) bool True = masked -> latent (N, 1 + K, D)."""
    sel = _ids_from_mask(self, mask)
    return _encode(self, _embed_visible(self, imgs, sel.ids_keep))


def _hpm_forward_decoder(self, latent: torch.Tensor, mask: torch.Tensor):
    """latent (N, 1 + K, D) -> (pixels (N, K + M, P), M, predicted loss (N, K + M)); tokens
    [cls, visible (raster), mask tokens (raster)] as the official code orders them."""
    sel = _ids_from_mask(self, mask)
    x = self.decoder_embed(latent)
    pos = self.decoder_pos_embed.to(x.dtype)
    M = sel.ids_mask.shape[1]
    tokens = [x[:, :1] + pos[:, :1], x[:, 1:] + gather_tokens(pos[:, 1:], sel.ids_keep, backend=_backend(self))]
    if M:
        mask_tokens = self.mask_token.to(x.dtype) + gather_tokens(pos[:, 1:], sel.ids_mask, backend=_backend(self))
        tokens.append(mask_tokens)
    x = torch.cat(tokens, dim=1)
    loss_pred = x
    for blk in self.decoder_blocks:
        x = blk(x)
    pixels = self.decoder_pred(self.decoder_norm(x))[:, 1:]
    for blk in self.decoder_blocks_losspred:
        loss_pred = blk(loss_pred)
    loss_pred = self.decoder_pred_losspred(self.decoder_norm_losspred(loss_pred))[:, 1:]
    return pixels, M, loss_pred.mean(dim=-1)


def _hpm_forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> dict:
    """pred (N, M, P) for the masked patches (raster order) -> {"mean": scalar, "matrix": (N, M)}."""
    sel = _ids_from_mask(self, mask)
    norm_pix = bool(getattr(self, "norm_pix_loss", False))
    loss, per_patch = patch_mse_loss(pred, imgs, _p(self), sel.ids_mask, norm_pix, backend=_backend(self))
    return {"mean": loss, "matrix": per_patch}


@torch.no_grad()
def _hpm_generate_mask(self, loss_pred, mask_ratio=0.75, images=None, guide=True, epoch=0, total_epoch=200):
    """loss_pred (N, L) -> mask (N, L) float, 1 = masked: the hardest ``int(M * r)`` patches with
    ``r = 0.5 (epoch + 1) / total_epoch`` (0.5 without ``guide``), the rest of the M uniformly at random."""
    ratio = 0.5 * (epoch + 1) / total_epoch if guide else 0.5
    scores = loss_pred.reshape(loss_pred.shape[0], -1).float()
    noise = torch.rand(scores.shape, device=scores.device)  # when int(M * ratio) = 0 this is random masking
    sel = select_patches(scores, noise, mask_ratio, ratio, backend=_backend(self))
    return sel.mask.to(loss_pred.dtype if loss_pred.is_floating_point() else torch.float32)


def _hpm_forward_learning_loss(self, loss_pred, mask, loss_target, relative=False):
    if not relative:
        return type(self).forward_learning_loss(self, loss_pred, mask, loss_target, relative)
    pred = loss_pred.reshape(loss_pred.shape[0], -1)
    return pairwise_ranking_loss(pred, loss_target.reshape(pred.shape), backend=_backend(self))


# -- public API ---------------------------------------------------------------------------------
def patch_mae(model: nn.Module, *, backend: str | None = None) -> nn.Module:
    """Replace, on this instance, the MAE/HPM interface methods with fused-op versions; returns the
    model. The report (what was fused, what was left alone and why) is ``patch_report(model)``;
    anything left alone is also warned about. Patching a patched model re-patches it.

    Args:
        model: an ``nn.Module`` following the MAE or the official HPM interface (module docstring).
        backend: an hpm_kernels backend for every op of the model ("reference", "cpu", "triton", "cuda",
            ...), or None for the automatic choice.

    Raises:
        ValueError: the model lacks an attribute the interface needs, or its patch embedding is
            not a square Conv2d with stride = kernel.
    """
    if getattr(model, _STATE, None) is not None:
        unpatch_mae(model)
    interface = _interface(model)
    p = _patch_size(model)
    methods = {"patchify": _patchify, "unpatchify": _unpatchify}
    left: dict[str, str] = {}
    if interface == "mae":
        methods.update(random_masking=_mae_random_masking, forward_encoder=_mae_forward_encoder)
        loss_method = _mae_forward_loss
    else:
        if getattr(model, "vis_mask_ratio", 0) > 0:
            left["forward_encoder"] = f"vis_mask_ratio = {model.vis_mask_ratio} (visible-token masking) is not fused"
            left["forward_decoder"] = "kept with the unfused forward_encoder"
        else:
            methods.update(forward_encoder=_hpm_forward_encoder, forward_decoder=_hpm_forward_decoder)
        methods.update(generate_mask=_hpm_generate_mask, forward_learning_loss=_hpm_forward_learning_loss)
        loss_method = _hpm_forward_loss
        for name in ("decoder_blocks_losspred", "decoder_norm_losspred", "decoder_pred_losspred"):
            if not hasattr(model, name) and "forward_decoder" in methods:
                del methods["forward_decoder"]
                left["forward_decoder"] = f"no `{name}`: not the official two-decoder layout"
    loss_params = _params(model.forward_loss)
    if loss_params[:3] == ["imgs", "pred", "mask"]:
        methods["forward_loss"] = loss_method
    else:
        left["forward_loss"] = f"signature ({', '.join(loss_params)}) is not (imgs, pred, mask): another target, not fused"
    report = PatchReport(interface, p, backend, sorted(methods), left)
    setattr(model, _STATE, _State(report))
    for name, fn in methods.items():
        setattr(model, name, types.MethodType(fn, model))
    for name, why in left.items():
        warnings.warn(f"patch_mae: {type(model).__name__}.{name} left alone: {why}", stacklevel=2)
    return model


def unpatch_mae(model: nn.Module) -> nn.Module:
    """Undo :func:`patch_mae`: the instance's methods are its class's again (bit-identical behaviour)."""
    state = getattr(model, _STATE, None)
    if state is None:
        raise ValueError(f"unpatch_mae: {type(model).__name__} is not patched by patch_mae")
    for name in state.report.patched:
        model.__dict__.pop(name, None)
    delattr(model, _STATE)
    return model


@contextlib.contextmanager
def use_selection(model: nn.Module, selection: Selection) -> Iterator[nn.Module]:
    """Inside this block the patched MAE model masks with ``selection`` (e.g. HPM's, from
    :func:`hpm_kernels.select_patches` or :class:`hpm_kernels.nn.HardPatchSelector`) instead of
    drawing random masks; its ``mask_ratio`` argument is then ignored. This is how an MAE-interface
    model becomes an HPM student without touching its code. ``full_selection`` gives the
    every-patch-visible selection an HPM teacher scores with."""
    state = getattr(model, _STATE, None)
    if state is None or state.report.interface != "mae":
        raise ValueError("use_selection: the model must be an MAE-interface model patched by patch_mae")
    previous, state.override = state.override, selection
    try:
        yield model
    finally:
        state.override = previous


def full_selection(N: int, L: int, device: torch.device | str | None = None) -> Selection:
    """Every patch visible, none masked: ``ids_keep`` = 0..L-1 per row, ``ids_mask`` (N, 0)."""
    ids = torch.arange(L, device=device).expand(N, L).contiguous()
    return Selection(ids, ids[:, :0], ids.clone(), torch.zeros(N, L, dtype=torch.bool, device=device))


def patch_report(model: nn.Module) -> PatchReport | None:
    """What :func:`patch_mae` did to ``model`` (None if it is not patched)."""
    state = getattr(model, _STATE, None)
    return None if state is None else state.report
