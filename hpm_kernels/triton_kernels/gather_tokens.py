"""Triton gather_tokens forward (row gather) and backward (atomic scatter-add in float32)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_size, empty


@triton.jit
def _gather_rows_kernel(
    x_ptr,
    ids_ptr,
    out_ptr,
    K,
    D,
    s_xn,
    s_xl,
    s_xd,
    s_idn,
    s_idk,
    s_on,
    s_ok,
    s_od,
    SHARED_X: tl.constexpr,
    SCATTER_ADD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Gather: out[n, k] = x[xn, ids[n, k]]. Scatter-add: x[xn, ids[n, k]] += out[n, k].
    xn = 0 when one x row-set is shared by the whole batch, else n."""
    row = tl.program_id(0)
    n = (row // K).to(tl.int64)
    k = (row % K).to(tl.int64)
    l = tl.load(ids_ptr + n * s_idn + k * s_idk).to(tl.int64)
    if SHARED_X:
        xn = 0
    else:
        xn = n
    d = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets: d * s_xd may pass 2**31
    inside = d < D
    x_off = xn * s_xn + l * s_xl + d * s_xd
    o_off = n * s_on + k * s_ok + d * s_od
    if SCATTER_ADD:
        g = tl.load(out_ptr + o_off, mask=inside).to(tl.float32)
        tl.atomic_add(x_ptr + x_off, g, mask=inside, sem="relaxed")
    else:
        tl.store(out_ptr + o_off, tl.load(x_ptr + x_off, mask=inside), mask=inside)


def _launch(x: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, scatter_add: bool) -> None:
    N, K, D = rows.shape
    if N * K * D == 0:
        return
    BLOCK = block_size(D, cap=1024)
    _gather_rows_kernel[(N * K, triton.cdiv(D, BLOCK))](
        x,
        ids,
        rows,
        K,
        D,
        *x.stride(),
        *ids.stride(),
        *rows.stride(),
        SHARED_X=x.shape[0] != N,
        SCATTER_ADD=scatter_add,
        BLOCK=BLOCK,
    )


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    N, K = ids.shape
    out = empty((N, K, x.shape[2]), x.dtype, x.device)
    _launch(x, ids, out, scatter_add=False)
    return out


def gather_tokens_backward(grad: torch.Tensor, ids: torch.Tensor, L: int, x_batch: int) -> torch.Tensor:
    acc = torch.zeros((x_batch, L, grad.shape[2]), dtype=torch.float32, device=grad.device)
    _launch(acc, ids, grad, scatter_add=True)
    return acc.to(grad.dtype)
