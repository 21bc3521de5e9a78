"""Triton patch_mse_loss forward and backward: target patches built in registers from the image.

Grid: (N*K,), one program per predicted patch (row of ``pred``). A program reads its patch
index from ``ids``, gathers the target patch straight from ``imgs`` through the image strides
(patchify addressing: element e = (i*p + j)*C + c of patch l is pixel (row (l // w)*p + i,
col (l % w)*p + j, channel c)), normalises it per patch when ``norm_pix`` (unbiased variance,
float32), and compares it with the pred row. No (N, K, P) target tensor is ever stored; the
backward recomputes it.

When P fits one block (``P <= MAX_BLOCK``, the common case: p = 16, C = 3 gives P = 768) the
whole row lives in registers and pred and the image patch are each read once. Otherwise the
program loops over P in chunks of ``MAX_BLOCK``: two passes over the image patch for the mean
and the variance (norm_pix only), then one pass over image and pred for the loss (forward) or
the gradient (backward).

Forward: one launch, plus the loss as ``per_patch.sum() / (N*K)`` (a deterministic torch
reduction on the device). Backward: one launch; ``grad_loss`` is read from device memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import acc_dtype, block_size, empty

#: Largest P a program holds in registers in one block; larger rows are processed in chunks.
MAX_BLOCK = 4096


@triton.jit
def _row_start(ids_ptr, K, p, w, s_in, s_ih, s_iw, s_idn, s_idk):
    """(n, k, offset of the patch's top-left pixel of channel 0 in the image) for this program."""
    row = tl.program_id(0)
    n = (row // K).to(tl.int64)
    k = (row % K).to(tl.int64)
    l = tl.load(ids_ptr + n * s_idn + k * s_idk).to(tl.int64)
    img_base = n * s_in + (l // w) * p * s_ih + (l % w) * p * s_iw
    return n, k, img_base


@triton.jit
def _load_patch(img_ptr, img_base, e, inside, C, p, s_ic, s_ih, s_iw):
    """Patch elements e (masked lanes 0) of the patch starting at img_base, in float32. Offsets in
    int64: a channel or row stride times its index may pass 2**31 in one large image."""
    e = e.to(tl.int64)
    ch = e % C
    j = (e // C) % p
    i = e // (C * p)
    x = tl.load(img_ptr + img_base + ch * s_ic + i * s_ih + j * s_iw, mask=inside, other=0.0)
    return x.to(tl.float32)


@triton.jit
def _target_block(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, NORM: tl.constexpr, BLOCK: tl.constexpr):
    """Single-block path: (e, inside, target) for the whole row, target normalised if NORM."""
    e = tl.arange(0, BLOCK)
    inside = e < P
    x = _load_patch(img_ptr, img_base, e, inside, C, p, s_ic, s_ih, s_iw)
    if NORM:
        mean = tl.div_rn(tl.sum(x, axis=0), tl.cast(P, tl.float32))
        d = tl.where(inside, x - mean, 0.0)
        var = tl.div_rn(tl.sum(d * d, axis=0), tl.cast(P - 1, tl.float32))
        x = d * tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    return e, inside, x


@triton.jit
def _chunked_stats(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, BLOCK: tl.constexpr):
    """Chunked path, norm_pix: (mean, 1 / sqrt(unbiased var + eps)) in two passes over the patch."""
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, P, BLOCK):
        e = start + tl.arange(0, BLOCK)
        acc += _load_patch(img_ptr, img_base, e, e < P, C, p, s_ic, s_ih, s_iw)
    mean = tl.div_rn(tl.sum(acc, axis=0), tl.cast(P, tl.float32))
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, P, BLOCK):
        e = start + tl.arange(0, BLOCK)
        inside = e < P
        d = tl.where(inside, _load_patch(img_ptr, img_base, e, inside, C, p, s_ic, s_ih, s_iw) - mean, 0.0)
        acc += d * d
    var = tl.div_rn(tl.sum(acc, axis=0), tl.cast(P - 1, tl.float32))
    return mean, tl.div_rn(1.0, tl.sqrt_rn(var + eps))


@triton.jit
def _patch_mse_fwd_kernel(
    pred_ptr,
    img_ptr,
    ids_ptr,
    per_ptr,
    K,
    P,
    C,
    p,
    w,
    s_pn,
    s_pk,
    s_pe,
    s_in,
    s_ic,
    s_ih,
    s_iw,
    s_idn,
    s_idk,
    s_on,
    s_ok,
    eps,
    NORM: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """per_patch[n, k] = mean over P of (pred[n, k] - target(ids[n, k]))^2, in float32."""
    n, k, img_base = _row_start(ids_ptr, K, p, w, s_in, s_ih, s_iw, s_idn, s_idk)
    pred_base = n * s_pn + k * s_pk
    if SINGLE:
        e, inside, t = _target_block(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, NORM, BLOCK)
        y = tl.load(pred_ptr + pred_base + e * s_pe, mask=inside, other=0.0).to(tl.float32)
        diff = tl.where(inside, y - t, 0.0)
        total = tl.sum(diff * diff, axis=0)
    else:
        if NORM:
            mean, rstd = _chunked_stats(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, BLOCK)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, P, BLOCK):
            e = start + tl.arange(0, BLOCK)
            inside = e < P
            t = _load_patch(img_ptr, img_base, e, inside, C, p, s_ic, s_ih, s_iw)
            if NORM:
                t = (t - mean) * rstd
            y = tl.load(pred_ptr + pred_base + e * s_pe, mask=inside, other=0.0).to(tl.float32)
            diff = tl.where(inside, y - t, 0.0)
            acc += diff * diff
        total = tl.sum(acc, axis=0)
    tl.store(per_ptr + n * s_on + k * s_ok, tl.div_rn(total, tl.cast(P, tl.float32)))


@triton.jit
def _patch_mse_bwd_kernel(
    grad_loss_ptr,
    gpp_ptr,
    pred_ptr,
    img_ptr,
    ids_ptr,
    out_ptr,
    K,
    NK,
    P,
    C,
    p,
    w,
    s_gn,
    s_gk,
    s_pn,
    s_pk,
    s_pe,
    s_in,
    s_ic,
    s_ih,
    s_iw,
    s_idn,
    s_idk,
    s_on,
    s_ok,
    eps,
    NORM: tl.constexpr,
    SINGLE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """d pred[n, k] = (grad_per_patch[n, k] + grad_loss / (N*K)) * 2 / P * (pred[n, k] - target)."""
    n, k, img_base = _row_start(ids_ptr, K, p, w, s_in, s_ih, s_iw, s_idn, s_idk)
    grad_loss = tl.load(grad_loss_ptr).to(tl.float32)
    g = tl.load(gpp_ptr + n * s_gn + k * s_gk).to(tl.float32)
    coef = (g + tl.div_rn(grad_loss, tl.cast(NK, tl.float32))) * tl.div_rn(2.0, tl.cast(P, tl.float32))
    pred_base = n * s_pn + k * s_pk
    out_base = n * s_on + k * s_ok
    if SINGLE:
        e, inside, t = _target_block(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, NORM, BLOCK)
        y = tl.load(pred_ptr + pred_base + e * s_pe, mask=inside, other=0.0).to(tl.float32)
        d = coef * (y - t)
        tl.store(out_ptr + out_base + e, d.to(out_ptr.dtype.element_ty), mask=inside)
    else:
        if NORM:
            mean, rstd = _chunked_stats(img_ptr, img_base, P, C, p, s_ic, s_ih, s_iw, eps, BLOCK)
        for start in range(0, P, BLOCK):
            e = start + tl.arange(0, BLOCK)
            inside = e < P
            t = _load_patch(img_ptr, img_base, e, inside, C, p, s_ic, s_ih, s_iw)
            if NORM:
                t = (t - mean) * rstd
            y = tl.load(pred_ptr + pred_base + e * s_pe, mask=inside, other=0.0).to(tl.float32)
            d = coef * (y - t)
            tl.store(out_ptr + out_base + e, d.to(out_ptr.dtype.element_ty), mask=inside)


def _config(P: int) -> dict[str, int | bool]:
    """Block over P (the whole row when it fits), single-block flag and warps (H100: ~8 float32
    values of each row operand per thread, 1 to 8 warps)."""
    block = block_size(P, cap=MAX_BLOCK)
    return {"BLOCK": block, "SINGLE": P <= block, "num_warps": max(1, min(8, block // 256))}


def patch_mse_loss(
    pred: torch.Tensor, imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    N, K, P = pred.shape
    dtype = acc_dtype(pred.dtype, imgs.dtype)
    per_patch = empty((N, K), dtype, pred.device)
    if N * K == 0:
        return torch.zeros((), dtype=dtype, device=pred.device), per_patch
    _patch_mse_fwd_kernel[(N * K,)](
        pred,
        imgs,
        ids,
        per_patch,
        K,
        P,
        imgs.shape[1],
        p,
        imgs.shape[3] // p,
        *pred.stride(),
        *imgs.stride(),
        *ids.stride(),
        *per_patch.stride(),
        eps,
        NORM=norm_pix,
        **_config(P),
    )
    return per_patch.sum() / (N * K), per_patch


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
    N, K, P = pred.shape
    out = empty((N, K, P), pred.dtype, pred.device)
    if N * K == 0:
        return out
    _patch_mse_bwd_kernel[(N * K,)](
        grad_loss,
        grad_per_patch,
        pred,
        imgs,
        ids,
        out,
        K,
        N * K,
        P,
        imgs.shape[1],
        p,
        imgs.shape[3] // p,
        *grad_per_patch.stride(),
        *pred.stride(),
        *imgs.stride(),
        *ids.stride(),
        out.stride(0),
        out.stride(1),
        eps,
        NORM=norm_pix,
        **_config(P),
    )
    return out
