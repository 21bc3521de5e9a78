"""Triton patchify / unpatchify / patchify backward: one kernel moves patches either way.

Grid: (rows, blocks of P) where a row is one patch of the (N, K, P) patch tensor. The image side
is addressed through its strides, so channels-last and other non-contiguous images need no copy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_size, empty

TO_PATCHES, TO_IMAGE, ADD_TO_IMAGE = 0, 1, 2


@triton.jit
def _patch_copy_kernel(
    img_ptr,
    patch_ptr,
    ids_ptr,
    K,
    P,
    C,
    p,
    w,
    s_in,
    s_ic,
    s_ih,
    s_iw,
    s_pn,
    s_pk,
    s_idn,
    s_idk,
    MODE: tl.constexpr,
    HAS_IDS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    n = (row // K).to(tl.int64)
    k = (row % K).to(tl.int64)
    if HAS_IDS:
        l = tl.load(ids_ptr + n * s_idn + k * s_idk).to(tl.int64)
    else:
        l = k
    r = l // w
    c0 = l % w
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64 offsets: large images
    inside = e < P
    ch = e % C
    j = (e // C) % p
    i = e // (C * p)
    img_off = n * s_in + ch * s_ic + (r * p + i) * s_ih + (c0 * p + j) * s_iw
    patch_off = n * s_pn + k * s_pk + e
    if MODE == 0:
        x = tl.load(img_ptr + img_off, mask=inside)
        tl.store(patch_ptr + patch_off, x, mask=inside)
    elif MODE == 1:
        x = tl.load(patch_ptr + patch_off, mask=inside)
        tl.store(img_ptr + img_off, x, mask=inside)
    else:
        x = tl.load(patch_ptr + patch_off, mask=inside).to(tl.float32)
        tl.atomic_add(img_ptr + img_off, x, mask=inside, sem="relaxed")


def _launch(img: torch.Tensor, patches: torch.Tensor, ids: torch.Tensor | None, p: int, mode: int) -> None:
    N, K, P = patches.shape
    if N * K * P == 0:
        return
    C, W = img.shape[1], img.shape[3]
    BLOCK = block_size(P, cap=1024)
    ids_arg = ids if ids is not None else patches
    s_idn, s_idk = (ids.stride(0), ids.stride(1)) if ids is not None else (0, 0)
    grid = (N * K, triton.cdiv(P, BLOCK))
    _patch_copy_kernel[grid](
        img,
        patches,
        ids_arg,
        K,
        P,
        C,
        p,
        W // p,
        *img.stride(),
        patches.stride(0),
        patches.stride(1),
        s_idn,
        s_idk,
        MODE=mode,
        HAS_IDS=ids is not None,
        BLOCK=BLOCK,
    )


def _contiguous_rows(t: torch.Tensor) -> torch.Tensor:
    """The kernels index the last dim of a patch tensor with unit stride."""
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def patchify(imgs: torch.Tensor, p: int, ids: torch.Tensor | None) -> torch.Tensor:
    N, C, H, W = imgs.shape
    K = (H // p) * (W // p) if ids is None else ids.shape[1]
    out = empty((N, K, p * p * C), imgs.dtype, imgs.device)
    _launch(imgs, out, ids, p, TO_PATCHES)
    return out


def unpatchify(patches: torch.Tensor, p: int, H: int, W: int) -> torch.Tensor:
    N, _, P = patches.shape
    out = empty((N, P // (p * p), H, W), patches.dtype, patches.device)
    _launch(out, _contiguous_rows(patches), None, p, TO_IMAGE)
    return out


def patchify_backward(grad: torch.Tensor, p: int, H: int, W: int, ids: torch.Tensor | None) -> torch.Tensor:
    if ids is None:
        return unpatchify(grad, p, H, W)
    N, _, P = grad.shape
    acc = torch.zeros((N, P // (p * p), H, W), dtype=torch.float32, device=grad.device)
    _launch(acc, _contiguous_rows(grad), ids, p, ADD_TO_IMAGE)
    return acc.to(grad.dtype)
