"""patchify / unpatchify: (N, C, H, W) <-> (N, L, P) with P = p*p*C in MAE order (i, j, c)."""

from __future__ import annotations

import torch


def _patch_view(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """A view of ``imgs`` (N, C, H, W) as (N, H/p, W/p, p, p, C); splitting dims never copies."""
    N, C, H, W = imgs.shape
    return imgs.view(N, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)


def _rows_cols(ids: torch.Tensor, W: int, p: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    w = W // p
    batch = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1)
    return batch, ids // w, ids % w


def patchify(imgs: torch.Tensor, p: int, ids: torch.Tensor | None) -> torch.Tensor:
    """imgs (N, C, H, W) -> (N, L, P), or (N, K, P) holding only patches ``ids`` (N, K)."""
    N, C, H, W = imgs.shape
    P = p * p * C
    view = _patch_view(imgs, p)
    if ids is None:
        out = imgs.new_empty(N, (H // p) * (W // p), P)
        out.view(N, H // p, W // p, p, p, C).copy_(view)
        return out
    batch, rows, cols = _rows_cols(ids, W, p)
    return view[batch, rows, cols].reshape(N, ids.shape[1], P)


def unpatchify(patches: torch.Tensor, p: int, H: int, W: int) -> torch.Tensor:
    """patches (N, L, P) -> imgs (N, C, H, W) with C = P / (p*p)."""
    N, _, P = patches.shape
    C = P // (p * p)
    out = patches.new_empty(N, C, H, W)
    _patch_view(out, p).copy_(patches.reshape(N, H // p, W // p, p, p, C))
    return out


def patchify_backward(grad: torch.Tensor, p: int, H: int, W: int, ids: torch.Tensor | None) -> torch.Tensor:
    """grad (N, L or K, P) -> image-shaped gradient; zeros where no patch was taken, sums on repeats."""
    if ids is None:
        return unpatchify(grad, p, H, W)
    N, K, P = grad.shape
    C = P // (p * p)
    acc = torch.float64 if grad.dtype == torch.float64 else torch.float32
    out = torch.zeros(N, C, H, W, dtype=acc, device=grad.device)
    batch, rows, cols = _rows_cols(ids, W, p)
    _patch_view(out, p).index_put_((batch.expand(N, K), rows, cols), grad.reshape(N, K, p, p, C).to(acc), accumulate=True)
    return out.to(grad.dtype)
