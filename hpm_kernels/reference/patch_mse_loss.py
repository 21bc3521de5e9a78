"""patch_mse_loss: per-patch MSE between predictions and (optionally normalised) target patches."""

from __future__ import annotations

import torch

from ._dtypes import compute_dtype
from .patchify import patchify


def target_patches(imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """(N, K, P) target in ``dtype``: patches ``ids`` of ``imgs``, normalised per patch with the
    unbiased variance, ``(x - mean) / sqrt(var + eps)``, when ``norm_pix``."""
    target = patchify(imgs, p, ids).to(dtype)
    if norm_pix and target.numel():
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + eps).sqrt()
    return target


def patch_mse_loss(
    pred: torch.Tensor, imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """pred (N, K, P), imgs (N, C, H, W), ids (N, K) -> (loss (), per_patch (N, K)).

    ``loss`` is the mean of ``per_patch``; 0 when K = 0 (no patch, no loss).
    """
    dtype = compute_dtype(pred.dtype, imgs.dtype)
    target = target_patches(imgs, p, ids, norm_pix, eps, dtype)
    per_patch = (pred.to(dtype) - target).square().mean(dim=-1)
    loss = per_patch.sum() / max(per_patch.numel(), 1)
    return loss, per_patch


def patch_mse_loss_backward(
    grad_loss: torch.Tensor,
    grad_per_patch: torch.Tensor,
    pred: torch.Tensor,
    imgs: torch.Tensor,
    p: int,
    ids: torch.Tensor,
    norm_pix: bool,
    eps: float,
) -> torch.Tensor:
    """d pred = (grad_per_patch + grad_loss / (N*K)) * 2 (pred - target) / P, in pred's dtype."""
    N, K, P = pred.shape
    dtype = compute_dtype(pred.dtype, imgs.dtype)
    target = target_patches(imgs, p, ids, norm_pix, eps, dtype)
    coef = (grad_per_patch.to(dtype) + grad_loss.to(dtype) / max(N * K, 1)) * (2.0 / P)
    return (coef.unsqueeze(-1) * (pred.to(dtype) - target)).to(pred.dtype)
