"""Triton select_patches: HPM mask generation, one program per row, the whole batch in one launch.

Each program loads its row of ``scores`` and ``noise`` (any float dtype, any strides) into
registers and maps every value to an int32 with the same order (the float bits, with the
magnitude bits of negatives flipped; -0.0 becomes +0.0, NaN becomes -inf for scores and +inf for
noise, as in the reference). Then, with no sort:

1. hard = the ``num_hard`` largest score keys, ties to the lower index: a radix select finds the
   ``num_hard``-th largest key ``t`` two bits at a time (16 steps, each one block reduction),
   every key above ``t`` is hard, and of the keys equal to ``t`` the first ones (a cumsum) fill
   the rest;
2. visible = the ``len_keep`` smallest noise keys among the other patches, ties to the lower
   index: the same select on the bitwise complement of the noise key (which reverses the order);
3. compaction: a cumsum of the visible flags gives every patch its slot in ``ids_keep`` or
   ``ids_mask`` (both ascending by construction) and its ``ids_restore`` entry.

``len_keep`` and ``num_hard`` are plain ints the op wrapper computes from the shape, so there is
no host sync, and the whole batch is one launch with one program per row (rows up to 4096).
A select rather than ``tl.sort``: 2 x 16 reductions instead of two bitonic sorts of 64-bit keys,
and a few hundred times faster under the interpreter (whose ``tl.sort`` reduces in Python).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import MAX_SELECT_ROW as MAX_ROW
from ._common import block_size, empty


@triton.jit
def _ordered_key(ptr, offs, inside, NAN_BITS: tl.constexpr):
    """Load floats and map them to int32 with the same order: -0.0 -> +0.0, NaN -> the float
    whose bits are NAN_BITS. Integer ops only, so no float compare (or FTZ) is involved."""
    bits = tl.load(ptr + offs, mask=inside, other=0.0).to(tl.float32).to(tl.int32, bitcast=True)
    mag = bits & 0x7FFFFFFF
    bits = tl.where(mag == 0, 0, bits)
    bits = tl.where(mag > 0x7F800000, NAN_BITS, bits)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _top(key, valid, r):
    """Flags of the r largest keys among the valid lanes, ties to the lower lane (none if r = 0).
    Needs r <= the number of valid lanes, and keys > INT32_MIN (true of _ordered_key's keys and
    of their complements, since NaN bits never reach them)."""
    key = tl.where(valid, key, -2147483648)  # never counted: every candidate below is larger
    # t = the r-th largest valid key = the largest t with count(key >= t) >= r, found two bits
    # at a time from the top; t only grows and count(key >= t) >= r holds throughout (for r = 0
    # it ends at INT32_MAX, above every valid key). Each step counts the keys at or above three
    # candidates t + d * step (d = 1, 2, 3) in one reduction: three 16-bit fields of an int64
    # (a row has at most 4096 lanes). The first step splits int32 at -2^30, 0 and 2^30.
    t = tl.full([], -2147483648, tl.int32)
    for i in tl.static_range(16):
        step = 1 << (30 - 2 * i)  # a constexpr: i is one in a static_range
        c1 = t + step
        c2 = c1 + step
        c3 = c2 + step
        ge = (key >= c1).to(tl.int64) + ((key >= c2).to(tl.int64) << 16) + ((key >= c3).to(tl.int64) << 32)
        counts = tl.sum(ge, axis=0)
        t = tl.where(
            (counts >> 32) >= r,
            c3,
            tl.where(((counts >> 16) & 0xFFFF) >= r, c2, tl.where((counts & 0xFFFF) >= r, c1, t)),
        )
    above = key > t
    tied = key == t
    tied_i = tied.to(tl.int32)
    tied_before = tl.cumsum(tied_i, axis=0) - tied_i
    return above | (tied & (tied_before < r - tl.sum(above.to(tl.int32), axis=0)))


@triton.jit
def _select_patches_kernel(
    scores_ptr,
    noise_ptr,
    keep_ptr,
    masked_ptr,
    restore_ptr,
    mask_ptr,
    L,
    len_keep,
    num_hard,
    s_sn,
    s_sl,
    s_nn,
    s_nl,
    s_kn,
    s_mn,
    s_rn,
    s_bn,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BLOCK)
    inside = idx < L
    lanes = idx.to(tl.int64)  # input offsets in int64: a transposed input has a large lane stride

    # 1. hard: the num_hard highest scores (NaN ranks as -inf, whose bits are 0xFF800000).
    score_key = _ordered_key(scores_ptr + n * s_sn, lanes * s_sl, inside, -8388608)
    hard = _top(score_key, inside, num_hard)

    # 2. visible: the len_keep smallest noise values of the rest (NaN ranks as +inf, 0x7F800000).
    # ~x = -1 - x reverses the order, so the smallest noise keys are the largest complements.
    noise_key = _ordered_key(noise_ptr + n * s_nn, lanes * s_nl, inside, 2139095040)
    keep = _top(~noise_key, inside & (hard == 0), len_keep)
    masked = inside & (keep == 0)

    # 3. compaction into ascending index lists, and the inverse permutation.
    keep_i = keep.to(tl.int32)
    kept_before = tl.cumsum(keep_i, axis=0) - keep_i
    masked_before = idx - kept_before
    tl.store(keep_ptr + n * s_kn + kept_before, lanes, mask=keep)
    tl.store(masked_ptr + n * s_mn + masked_before, lanes, mask=masked)
    restore = tl.where(keep, kept_before, len_keep + masked_before)
    tl.store(restore_ptr + n * s_rn + idx, restore.to(tl.int64), mask=inside)
    tl.store(mask_ptr + n * s_bn + idx, masked.to(tl.uint8), mask=inside)


def _num_warps(block: int) -> int:
    return 4 if block <= 256 else 8 if block <= 1024 else 16


def select_patches(
    scores: torch.Tensor, noise: torch.Tensor, len_keep: int, num_hard: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    N, L = scores.shape
    if L > MAX_ROW:
        raise ValueError(f"the Triton select_patches holds rows of at most {MAX_ROW} patches, got L = {L}")
    device = scores.device
    ids_keep = empty((N, len_keep), torch.int64, device)
    ids_mask = empty((N, L - len_keep), torch.int64, device)
    ids_restore = empty((N, L), torch.int64, device)
    mask = empty((N, L), torch.bool, device)
    if N * L == 0:
        return ids_keep, ids_mask, ids_restore, mask
    BLOCK = block_size(L, cap=MAX_ROW)
    _select_patches_kernel[(N,)](
        scores,
        noise,
        # An empty output (len_keep = 0 or L) is never written: ids_restore stands in for it.
        ids_keep if len_keep else ids_restore,
        ids_mask if L - len_keep else ids_restore,
        ids_restore,
        mask.view(torch.uint8),
        L,
        len_keep,
        num_hard,
        scores.stride(0),
        scores.stride(1),
        noise.stride(0),
        noise.stride(1),
        ids_keep.stride(0),
        ids_mask.stride(0),
        ids_restore.stride(0),
        mask.stride(0),
        BLOCK=BLOCK,
        num_warps=_num_warps(BLOCK),
    )
    return ids_keep, ids_mask, ids_restore, mask
