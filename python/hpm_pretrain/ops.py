"""The five HPM ops as the trainer calls them, behind ``--ops fused|reference``.

``fused`` calls hpm_kernels' public ops (custom ops; Triton on CUDA). ``reference`` calls the
same math from :mod:`hpm_kernels.reference` as plain PyTorch, differentiated by autograd, with no
custom-op dispatch: the ground truth the fused path is compared against.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch

import hpm_kernels as hk
from hpm_kernels import reference


class Selection(NamedTuple):
    ids_keep: torch.Tensor
    ids_mask: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


class Ops(Protocol):
    name: str

    def patchify(self, imgs: torch.Tensor, p: int, ids: torch.Tensor | None = None) -> torch.Tensor: ...
    def gather_tokens(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor: ...
    def patch_mse_loss(
        self, pred: torch.Tensor, imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def select_patches(self, scores: torch.Tensor, noise: torch.Tensor, mask_ratio: float, hard_ratio: float) -> Selection: ...
    def ranking_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class FusedOps:
    name = "fused"

    def patchify(self, imgs, p, ids=None):
        return hk.patchify(imgs, p, ids)

    def gather_tokens(self, x, ids):
        return hk.gather_tokens(x, ids)

    def patch_mse_loss(self, pred, imgs, p, ids, norm_pix):
        return hk.patch_mse_loss(pred, imgs, p, ids, norm_pix)

    def select_patches(self, scores, noise, mask_ratio, hard_ratio):
        return Selection(*hk.select_patches(scores, noise, mask_ratio, hard_ratio))

    def ranking_loss(self, pred, target):
        return hk.pairwise_ranking_loss(pred, target)


class ReferenceOps:
    name = "reference"

    def patchify(self, imgs, p, ids=None):
        return reference.patchify(imgs, p, ids)

    def gather_tokens(self, x, ids):
        return reference.gather_tokens(x, ids)

    def patch_mse_loss(self, pred, imgs, p, ids, norm_pix):
        return reference.patch_mse_loss(pred, imgs.detach(), p, ids, norm_pix, 1e-6)

    def select_patches(self, scores, noise, mask_ratio, hard_ratio):
        len_keep, num_hard = hk.mask_counts(scores.shape[1], mask_ratio, hard_ratio)
        return Selection(*reference.select_patches(scores.detach(), noise, len_keep, num_hard))

    def ranking_loss(self, pred, target):
        return reference.pairwise_ranking_loss(pred, target.detach(), 1e-6)


def make_ops(name: str) -> Ops:
    if name == "fused":
        return FusedOps()
    if name == "reference":
        return ReferenceOps()
    raise ValueError(f"`ops` must be 'fused' or 'reference', got {name!r}")
