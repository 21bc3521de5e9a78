"""gather_tokens: x (N or 1, L, D), ids (N, K) -> (N, K, D); backward scatters and adds."""

from __future__ import annotations

import torch

from ._dtypes import compute_dtype


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    N, K = ids.shape
    D = x.shape[2]
    return x.expand(N, -1, -1).gather(1, ids.unsqueeze(-1).expand(N, K, D))


def gather_tokens_backward(grad: torch.Tensor, ids: torch.Tensor, L: int, x_batch: int) -> torch.Tensor:
    """grad (N, K, D) -> (x_batch, L, D); a batch-1 ``x`` was broadcast, so its gradient sums over N."""
    N, K, D = grad.shape
    acc = compute_dtype(grad.dtype)
    out = torch.zeros(N, L, D, dtype=acc, device=grad.device)
    out.scatter_add_(1, ids.unsqueeze(-1).expand(N, K, D), grad.to(acc))
    if x_batch != N:
        out = out.sum(0, keepdim=True)
    return out.to(grad.dtype)
