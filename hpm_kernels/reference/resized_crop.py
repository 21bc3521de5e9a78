"""resized_crop: images (B, C, H, W), index (N,), boxes (N, 4), flip (N,) -> (N, C, Ho, Wo) float32.

The ground truth is ``torch.nn.functional.interpolate`` itself, one crop at a time (this reads
the boxes on the host: fine for a reference). ``compute_dtype`` is for the tests, which run it in
float64 to measure the float32 error of the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    compute_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """out[n, c] = (v - mean[c]) / std[c], v = interpolate(images[index[n], c, box n], (out_h, out_w))
    flipped along W when flip[n]; uint8 images: v clamped to [0, 255] and divided by 255."""
    N, C = boxes.shape[0], images.shape[1]
    mode = "bicubic" if bicubic else "bilinear"
    out = torch.empty(N, C, out_h, out_w, dtype=compute_dtype, device=images.device)
    for n, (src, (top, left, h, w), f) in enumerate(zip(index.tolist(), boxes.tolist(), flip.tolist())):
        crop = images[src, :, top : top + h, left : left + w].to(compute_dtype)
        v = F.interpolate(crop[None], size=(out_h, out_w), mode=mode, align_corners=False)[0]
        if images.dtype == torch.uint8:
            v = v.clamp(0, 255) / 255
        out[n] = v.flip(-1) if f else v
    m = torch.tensor(mean, dtype=compute_dtype, device=images.device).view(1, C, 1, 1)
    s = torch.tensor(std, dtype=compute_dtype, device=images.device).view(1, C, 1, 1)
    out = (out - m) / s
    return out if compute_dtype == torch.float64 else out.to(torch.float32)
