"""Triton resized_crop: crop + resize (bicubic a = -0.75 or bilinear, align_corners=False) + flip +
normalisation, the math of the CPU kernel (csrc/cpu/rows.cpp) in float32.

Grid: (N*C, blocks of Ho*Wo output pixels). A program reads its box, source image and flip once,
computes each pixel's taps (source rows and columns clamped to the crop, and their weights) and
gathers the 16 (bicubic) or 4 (bilinear) source pixels through the image's strides, with int64
offsets. uint8 and float images alike; mean and std come as a (2, C) float32 tensor.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import block_size, empty


@triton.jit
def _tap(real, size, K: tl.constexpr, BICUBIC: tl.constexpr):
    """(source index in [0, size), weight) of tap K at sample coordinate ``real`` (ATen's rules)."""
    if BICUBIC:
        fl = tl.floor(real)
        t = real - fl
        i = fl.to(tl.int64) - 1 + K
        i = tl.minimum(tl.maximum(i, 0), size - 1)
        # cubic convolution, A = -0.75: (A x - 5A) x + 8A) x - 4A for 1 <= x < 2, ((A+2) x - (A+3)) x x + 1 below
        if K == 0:
            x = t + 1.0
            w = ((-0.75 * x + 3.75) * x - 6.0) * x + 3.0
        elif K == 1:
            x = t
            w = (1.25 * x - 2.25) * x * x + 1.0
        elif K == 2:
            x = 1.0 - t
            w = (1.25 * x - 2.25) * x * x + 1.0
        else:
            x = (1.0 - t) + 1.0
            w = ((-0.75 * x + 3.75) * x - 6.0) * x + 3.0
    else:
        r = tl.maximum(real, 0.0)
        i0 = tl.minimum(tl.floor(r).to(tl.int64), size - 1)
        lam = tl.minimum(tl.maximum(r - i0.to(tl.float32), 0.0), 1.0)
        if K == 0:
            i = i0
            w = 1.0 - lam
        else:
            i = i0 + (i0 < size - 1).to(tl.int64)
            w = lam
    return i, w


@triton.jit
def _resized_crop_kernel(
    img_ptr,
    index_ptr,
    boxes_ptr,
    flip_ptr,
    stats_ptr,
    out_ptr,
    C,
    Ho,
    Wo,
    s_in,
    s_ic,
    s_ih,
    s_iw,
    s_idx,
    s_b0,
    s_b1,
    s_fl,
    BICUBIC: tl.constexpr,
    IS_UINT8: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    n = pid // C
    c = pid % C
    src = tl.load(index_ptr + n * s_idx)
    top = tl.load(boxes_ptr + n * s_b0)
    left = tl.load(boxes_ptr + n * s_b0 + s_b1)
    h = tl.load(boxes_ptr + n * s_b0 + 2 * s_b1)
    w = tl.load(boxes_ptr + n * s_b0 + 3 * s_b1)
    flipped = tl.load(flip_ptr + n * s_fl) != 0
    e = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = e < Ho * Wo
    y = e // Wo
    x = e % Wo
    x = tl.where(flipped, Wo - 1 - x, x)
    scale_y = h.to(tl.float32) / Ho
    scale_x = w.to(tl.float32) / Wo
    real_y = scale_y * (y.to(tl.float32) + 0.5) - 0.5
    real_x = scale_x * (x.to(tl.float32) + 0.5) - 0.5
    plane = img_ptr + src * s_in + c * s_ic + top * s_ih + left * s_iw
    TAPS: tl.constexpr = 4 if BICUBIC else 2
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for ky in tl.static_range(TAPS):
        iy, wy = _tap(real_y, h, ky, BICUBIC)
        r = tl.zeros([BLOCK], dtype=tl.float32)
        for kx in tl.static_range(TAPS):
            ix, wx = _tap(real_x, w, kx, BICUBIC)
            v = tl.load(plane + iy * s_ih + ix * s_iw, mask=inside, other=0).to(tl.float32)
            r += v * wx
        acc += r * wy
    if IS_UINT8:
        acc = tl.minimum(tl.maximum(acc, 0.0), 255.0) / 255.0
    mean = tl.load(stats_ptr + c)
    std = tl.load(stats_ptr + C + c)
    tl.store(out_ptr + pid * Ho * Wo + e, (acc - mean) / std, mask=inside)


def resized_crop(
    images: torch.Tensor,
    index: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    out_h: int,
    out_w: int,
    mean: list[float],
    std: list[float],
    bicubic: bool,
) -> torch.Tensor:
    N, C = boxes.shape[0], images.shape[1]
    out = empty((N, C, out_h, out_w), torch.float32, images.device)
    if out.numel() == 0:
        return out
    stats = torch.tensor([*mean, *std], dtype=torch.float32).to(images.device)
    BLOCK = block_size(out_h * out_w, cap=1024)
    grid = (N * C, triton.cdiv(out_h * out_w, BLOCK))
    _resized_crop_kernel[grid](
        images,
        index,
        boxes,
        flip.view(torch.uint8),
        stats,
        out,
        C,
        out_h,
        out_w,
        *images.stride(),
        index.stride(0),
        boxes.stride(0),
        boxes.stride(1),
        flip.stride(0),
        BICUBIC=bicubic,
        IS_UINT8=images.dtype == torch.uint8,
        BLOCK=BLOCK,
    )
    return out
