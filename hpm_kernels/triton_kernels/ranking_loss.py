"""Triton pairwise_ranking_loss and its backward, tiled over the M x M pairs of each image.

Forward grid: (N, cdiv(M, BLOCK_I)). A program holds BLOCK_I patches i of image n and loops over
tiles of BLOCK_J patches j, accumulating the pair terms and the number of non-tied pairs in a
(BLOCK_I, BLOCK_J) float32 / int32 register tile; it writes one partial sum and one partial count.
A small torch reduction over those N * cdiv(M, BLOCK_I) partials gives the loss on the device: no
atomics (the result is deterministic), no host sync, nothing of size M x M in memory.

Backward grid: (N, cdiv(M, BLOCK_K)). The program owning patches k loops over all tiles of patches
m and gathers d loss / d s_k from both pairs that contain k. The pair (i=k, j=m) is the pair
(i=m, j=k) seen the other way round: its d is the exact negation (float subtraction is
sign-symmetric), its up/down are swapped, so its term of the loss and its slope G are the same
numbers with G negated. Hence grad_s[k] = sum_m G(m, k) - sum_m G(k, m) = 2 * sum_m G(m, k), and the
program evaluates one orientation only, summed over rows of its register tile. It also counts the
non-tied pairs (m, k) for all m: over all programs, every ordered pair once. The unscaled float32
gradient and the partial counts are then scaled by grad / max(count, 1) with torch ops.

Both kernels use one sigmoid pair per element: with x the signed difference of the pair (d for
an "up" pair, -d for a "down" pair) and e = exp(-|x|), sigmoid(x) and sigmoid(-x) are 1/(1+e) and
e/(1+e) in one order or the other: no overflow, no cancellation (the reference's sigmoid(-d)).

Out-of-range patches load NaN targets, which compare as ties, so the tile edges need no extra mask.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, empty

#: Patches per program (rows of the pair tile) and per loop step (columns); in the interpreter big
#: tiles are also the fast ones. 8 warps = 16 pairs per thread per step: compiled offline for sm_90
#: (ptxas -v), 4 warps needed 250 (forward) / 168 (backward, with a small spill) registers per
#: thread, 8 warps need 96 / 109 and spill nothing, so an SM holds twice the warps.
BLOCK_ROWS = 64
BLOCK_COLS = 64
NUM_WARPS = 8


@triton.jit
def _sigmoid_pair(x):
    """(sigmoid(x), sigmoid(-x)), both to full relative precision for any x."""
    e = tl.exp(-tl.abs(x))
    r = 1.0 / (1.0 + e)
    pos = x >= 0
    return tl.where(pos, r, e * r), tl.where(pos, e * r, r)


@triton.jit
def _ranking_loss_fwd_kernel(
    pred_ptr,
    target_ptr,
    sum_ptr,
    count_ptr,
    M,
    eps,
    s_pn,
    s_pm,
    s_tn,
    s_tm,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    i = blk.to(tl.int64) * BLOCK_I + tl.arange(0, BLOCK_I)  # int64 offsets: i * s_pm may pass 2**31
    in_i = i < M
    s_i = tl.load(pred_ptr + n * s_pn + i * s_pm, mask=in_i, other=0.0).to(tl.float32)
    l_i = tl.load(target_ptr + n * s_tn + i * s_tm, mask=in_i, other=float("nan")).to(tl.float32)
    s_i = s_i[:, None]
    l_i = l_i[:, None]
    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.int32)
    for j0 in range(0, M, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        in_j = j < M
        s_j = tl.load(pred_ptr + n * s_pn + j * s_pm, mask=in_j, other=0.0).to(tl.float32)
        l_j = tl.load(target_ptr + n * s_tn + j * s_tm, mask=in_j, other=float("nan")).to(tl.float32)
        d = s_j[None, :] - s_i
        up = l_j[None, :] > l_i
        down = l_j[None, :] < l_i
        sig_x, _ = _sigmoid_pair(tl.where(up, d, -d))
        acc += tl.where(up | down, -tl.log(sig_x + eps), 0.0)
        cnt += (up | down).to(tl.int32)
    out = n * tl.num_programs(1) + blk
    tl.store(sum_ptr + out, tl.sum(tl.sum(acc, axis=1), axis=0))
    tl.store(count_ptr + out, tl.sum(tl.sum(cnt, axis=1), axis=0))


@triton.jit
def _ranking_loss_bwd_kernel(
    pred_ptr,
    target_ptr,
    grad_ptr,
    count_ptr,
    M,
    eps,
    s_pn,
    s_pm,
    s_tn,
    s_tm,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    k = blk.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)  # int64 offsets, as in the forward
    in_k = k < M
    s_k = tl.load(pred_ptr + n * s_pn + k * s_pm, mask=in_k, other=0.0).to(tl.float32)
    l_k = tl.load(target_ptr + n * s_tn + k * s_tm, mask=in_k, other=float("nan")).to(tl.float32)
    s_k = s_k[None, :]
    l_k = l_k[None, :]
    # Tile (m, k): the pair (i=m, j=k), d = s_k - s_m.
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    cnt = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.int32)
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        in_m = m < M
        s_m = tl.load(pred_ptr + n * s_pn + m * s_pm, mask=in_m, other=0.0).to(tl.float32)
        l_m = tl.load(target_ptr + n * s_tn + m * s_tm, mask=in_m, other=float("nan")).to(tl.float32)
        d = s_k - s_m[:, None]
        up = l_k > l_m[:, None]
        down = l_k < l_m[:, None]
        # Term -log(sigmoid(x) + eps) with x = +-d: d/dx = -sigmoid(x) sigmoid(-x) / (sigmoid(x) + eps).
        sig_x, sig_nx = _sigmoid_pair(tl.where(up, d, -d))
        slope = sig_x * sig_nx / (sig_x + eps)
        acc += tl.where(up, -slope, tl.where(down, slope, 0.0))
        cnt += (up | down).to(tl.int32)
    g = 2.0 * tl.sum(acc, axis=0)
    tl.store(grad_ptr + n * M + k, g, mask=in_k)
    tl.store(count_ptr + n * tl.num_programs(1) + blk, tl.sum(tl.sum(cnt, axis=1), axis=0))


def _grid(N: int, M: int) -> tuple[int, int]:
    return (N, triton.cdiv(M, BLOCK_ROWS))


def pairwise_ranking_loss(pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    N, M = pred.shape
    dtype = acc_dtype(pred.dtype, target.dtype)
    grid = _grid(N, M)
    partial_sum = empty((grid[0] * grid[1],), torch.float32, pred.device)
    partial_count = empty((grid[0] * grid[1],), torch.int32, pred.device)
    if partial_sum.numel():
        _ranking_loss_fwd_kernel[grid](
            pred,
            target,
            partial_sum,
            partial_count,
            M,
            eps,
            *pred.stride(),
            *target.stride(),
            BLOCK_I=BLOCK_ROWS,
            BLOCK_J=BLOCK_COLS,
            num_warps=NUM_WARPS,
        )
    # Empty partials (N = 0 or M = 0) sum to 0 pairs: the loss is 0 / 1.
    pairs = partial_count.sum(dtype=torch.int64).clamp_min(1)
    return (partial_sum.sum() / pairs.to(torch.float32)).to(dtype)


def pairwise_ranking_loss_backward(grad: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, eps: float) -> torch.Tensor:
    N, M = pred.shape
    grid = _grid(N, M)
    d_s = empty((N, M), torch.float32, pred.device)
    partial_count = empty((grid[0] * grid[1],), torch.int32, pred.device)
    if d_s.numel():
        _ranking_loss_bwd_kernel[grid](
            pred,
            target,
            d_s,
            partial_count,
            M,
            eps,
            *pred.stride(),
            *target.stride(),
            BLOCK_K=BLOCK_ROWS,
            BLOCK_M=BLOCK_COLS,
            num_warps=NUM_WARPS,
        )
    pairs = partial_count.sum(dtype=torch.int64).clamp_min(1)
    return (d_s * (grad.to(torch.float32) / pairs.to(torch.float32))).to(pred.dtype)
