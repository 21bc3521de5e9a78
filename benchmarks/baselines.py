"""Baselines written from SPEC.md's description of the official HPM code (not copied from it).

They are what the fused ops are measured against: a per-sample mask loop with a device-to-host
copy per image, the eager N x M x M relative loss, and einsum patchify + gather + eager
norm-pix + MSE; for patchify and gather_tokens, MAE's einsum patchify of the whole image then a
gather, and MAE's token gather with an index repeated D times.
"""

from __future__ import annotations

import numpy as np
import torch


def select_per_sample_loop(scores: torch.Tensor, mask_ratio: float, hard_ratio: float, rng: np.random.Generator):
    """Official-style mask generation: one host round trip, a NumPy delete and shuffle per image."""
    N, L = scores.shape
    len_keep = int(L * (1 - mask_ratio))
    num_hard = int((L - len_keep) * hard_ratio)
    mask = np.ones((N, L), dtype=bool)
    for i in range(N):
        order = torch.argsort(scores[i], descending=True).cpu().numpy()  # sync per sample
        rest = np.delete(np.arange(L), order[:num_hard])
        rng.shuffle(rest)
        mask[i, rest[:len_keep]] = False
    mask = torch.from_numpy(mask).to(scores.device)
    ids_keep = torch.nonzero(~mask)[:, 1].view(N, len_keep)
    ids_mask = torch.nonzero(mask)[:, 1].view(N, L - len_keep)
    return ids_keep, ids_mask, mask


def ranking_loss_eager(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The relative loss with (N, M, M) tensors, as the official code builds it."""
    pred, target = pred.float(), target.float()
    d = pred.unsqueeze(1) - pred.unsqueeze(2)  # d[n, i, j] = s_j - s_i
    up = (target.unsqueeze(1) > target.unsqueeze(2)).float()
    down = (target.unsqueeze(1) < target.unsqueeze(2)).float()
    sig = torch.sigmoid(d)
    loss = -up * torch.log(sig + eps) - down * torch.log(1 - sig + eps)
    return loss.sum() / (up.sum() + down.sum()).clamp_min(1)


def patch_mse_loss_eager(pred: torch.Tensor, imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool = True):
    """einsum patchify of the whole image, gather of the masked patches, eager norm-pix, MSE."""
    N, C, H, W = imgs.shape
    x = imgs.reshape(N, C, H // p, p, W // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x).reshape(N, (H // p) * (W // p), p * p * C)
    target = torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1])).float()
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(-1)
    return per_patch.mean(), per_patch


def patchify_gather_eager(imgs: torch.Tensor, p: int, ids: torch.Tensor | None = None) -> torch.Tensor:
    """MAE's einsum patchify of every patch, then (with ``ids``) a gather of the chosen ones."""
    N, C, H, W = imgs.shape
    x = imgs.reshape(N, C, H // p, p, W // p, p)
    x = torch.einsum("nchpwq->nhwpqc", x).reshape(N, (H // p) * (W // p), p * p * C)
    if ids is None:
        return x
    return torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, x.shape[-1]))


def gather_tokens_repeat(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """MAE's token gather: ``torch.gather`` with the index materialised D times."""
    return torch.gather(x, 1, ids.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
