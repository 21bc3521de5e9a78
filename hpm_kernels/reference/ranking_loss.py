"""pairwise_ranking_loss: HPM's relative loss-prediction objective in O(N*M*chunk) memory.

For every ordered pair (i, j) of one row with l_j != l_i, d = s_j - s_i and
  l_j > l_i: -log(sigmoid(d) + eps)        l_j < l_i: -log(1 - sigmoid(d) + eps);
the sum over the batch is divided by the number of such pairs (0 pairs: the loss is 0).
Pairs compared as NaN in ``target`` count as ties.

``1 - sigmoid(d)`` is evaluated as ``sigmoid(-d)``: the same number in exact arithmetic, without
the cancellation that makes the literal form lose every digit in float32 once |d| > ~16.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from ._dtypes import compute_dtype

#: Elements per (N, chunk, M) temporary; bounds the memory at a few times this many floats.
CHUNK_ELEMENTS = 1 << 22


def _pair_chunks(pred: torch.Tensor, target: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (rows i, sigmoid(d), 1 - sigmoid(d), [l_j > l_i], [l_j < l_i]) over chunks of i,
    each (N, chunk, M), where d[n, i, j] = s_j - s_i."""
    N, M = pred.shape
    chunk = max(1, min(M, CHUNK_ELEMENTS // max(1, N * M)))
    for start in range(0, M, chunk):
        i = slice(start, min(start + chunk, M))
        d = pred.unsqueeze(1) - pred[:, i].unsqueeze(2)
        li, lj = target[:, i].unsqueeze(2), target.unsqueeze(1)
        yield i, torch.sigmoid(d), torch.sigmoid(-d), lj > li, lj < li


def _cast(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = compute_dtype(pred.dtype, target.dtype)
    return pred.to(dtype), target.to(dtype)


def pairwise_ranking_loss(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """pred s' (N, M), target l (N, M) -> scalar loss (float32, float64 for float64 inputs)."""
    s, l = _cast(pred, target)
    total = s.new_zeros(())
    pairs = torch.zeros((), dtype=torch.int64, device=s.device)
    for _, sig, one_minus_sig, up, down in _pair_chunks(s, l):
        total = total + torch.where(up, -torch.log(sig + eps), 0.0).sum()
        total = total + torch.where(down, -torch.log(one_minus_sig + eps), 0.0).sum()
        pairs = pairs + up.sum() + down.sum()
    return total / pairs.clamp_min(1).to(s.dtype)


def pairwise_ranking_loss_backward(grad: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    """grad () -> d pred (N, M) in pred's dtype."""
    s, l = _cast(pred, target)
    d_s = torch.zeros_like(s)
    pairs = torch.zeros((), dtype=torch.int64, device=s.device)
    for i, sig, one_minus_sig, up, down in _pair_chunks(s, l):
        slope = sig * one_minus_sig
        d_d = torch.where(up, -slope / (sig + eps), 0.0) + torch.where(down, slope / (one_minus_sig + eps), 0.0)
        d_s += d_d.sum(dim=1)
        d_s[:, i] -= d_d.sum(dim=2)
        pairs = pairs + up.sum() + down.sum()
    return (d_s * (grad.to(s.dtype) / pairs.clamp_min(1).to(s.dtype))).to(pred.dtype)
