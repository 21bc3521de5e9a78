"""``torch.nn`` modules over the ops, for people composing their own models.

Shapes: images (N, C, H, W); patch size p; L = (H/p)*(W/p) patches of P = p*p*C values (MAE's
order); M masked patches per image.
"""

from __future__ import annotations

import torch
from torch import nn

from .ops.patch_mse_loss import patch_mse_loss
from .ops.ranking_loss import pairwise_ranking_loss
from .ops.select_patches import Selection, mask_counts, select_patches


class PatchMSELoss(nn.Module):
    """MAE's reconstruction loss at the masked patches, the target cut from the images in-kernel.

    ``forward(pred (N, M, P), imgs (N, C, H, W), ids_mask (N, M)) -> (loss scalar, per_patch (N, M) float32)``;
    ``per_patch`` is HPM's per-patch loss ``l`` (the ranking target). ``norm_pix``: the target
    patch normalised by its mean and unbiased variance (MAE's ``norm_pix_loss``).
    """

    def __init__(self, patch_size: int, norm_pix: bool = True, eps: float = 1e-6, *, backend: str | None = None):
        super().__init__()
        self.patch_size, self.norm_pix, self.eps, self.backend = patch_size, norm_pix, eps, backend

    def forward(self, pred: torch.Tensor, imgs: torch.Tensor, ids_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return patch_mse_loss(pred, imgs, self.patch_size, ids_mask, self.norm_pix, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, norm_pix={self.norm_pix}, eps={self.eps}"


class PairwiseRankingLoss(nn.Module):
    """HPM's relative loss-prediction objective, O(N*M) memory.

    ``forward(pred (N, M), target (N, M)) -> scalar``: over ordered pairs of one image's masked
    patches with different targets, a logistic loss that ``pred`` orders them as ``target`` does,
    summed over the batch and divided by the number of such pairs. ``target`` is treated as a constant.
    """

    def __init__(self, eps: float = 1e-6, *, backend: str | None = None):
        super().__init__()
        self.eps, self.backend = eps, backend

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pairwise_ranking_loss(pred, target, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class HardPatchSelector(nn.Module):
    """HPM's mask generation for a batch: predicted hardness + noise -> :class:`~hpm_kernels.Selection`.

    ``forward(scores (N, L), noise (N, L) or None, hard_ratio) -> Selection``: the ``num_hard``
    highest-scoring patches are masked, then the ``len_keep`` lowest-noise others stay visible
    (``noise`` None: ``torch.rand`` from ``generator``). :meth:`hard_ratio` is the easy-to-hard
    schedule ``hard_ratio_max * (epoch + 1) / epochs`` (0.5 at the end, as the paper).
    """

    def __init__(self, mask_ratio: float = 0.75, hard_ratio_max: float = 0.5, *, backend: str | None = None):
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"`mask_ratio` must be in (0, 1), got {mask_ratio}")
        if not 0 <= hard_ratio_max <= 1:
            raise ValueError(f"`hard_ratio_max` must be in [0, 1], got {hard_ratio_max}")
        self.mask_ratio, self.hard_ratio_max, self.backend = mask_ratio, hard_ratio_max, backend

    def hard_ratio(self, epoch: int, epochs: int) -> float:
        """Easy-to-hard: the fraction of the masked patches chosen by score in ``epoch`` (0-based) of ``epochs``."""
        if epochs < 1 or not 0 <= epoch < epochs:
            raise ValueError(f"need 0 <= epoch < epochs and epochs >= 1, got epoch {epoch}, epochs {epochs}")
        return self.hard_ratio_max * (epoch + 1) / epochs

    def counts(self, num_patches: int, hard_ratio: float) -> tuple[int, int]:
        """``(len_keep, num_hard)`` for ``num_patches`` patches, as the official code computes them."""
        return mask_counts(num_patches, self.mask_ratio, hard_ratio)

    def forward(
        self,
        scores: torch.Tensor,
        noise: torch.Tensor | None = None,
        hard_ratio: float = 0.0,
        *,
        generator: torch.Generator | None = None,
    ) -> Selection:
        if noise is None:
            noise = torch.rand(scores.shape, device=scores.device, generator=generator)
        return select_patches(scores, noise, self.mask_ratio, hard_ratio, backend=self.backend)

    def extra_repr(self) -> str:
        return f"mask_ratio={self.mask_ratio}, hard_ratio_max={self.hard_ratio_max}"
