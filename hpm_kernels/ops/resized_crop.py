"""``hpm::resized_crop``: batched random-resized-crop + horizontal flip + normalisation.

MAE's augmentation (``RandomResizedCrop`` + ``RandomHorizontalFlip`` + ``Normalize``) for a whole
batch in one call, reading the images in place (uint8 or float, any strides), optionally through
an ``index`` into a larger in-memory dataset, so no gathered copy of the batch is made.

Output element ``out[n, c, y, x] = (v - mean[c]) / std[c]`` with ``v`` the value at (y, x) of
``interpolate(images[index[n], c, top:top+h, left:left+w], (Ho, Wo), align_corners=False)``,
flipped along W when ``flip[n]``; for uint8 images ``v`` is clamped to [0, 255] and divided by 255
(no rounding). ``"bicubic"`` is the cubic convolution with a = -0.75 and clamped borders of
``torch.nn.functional.interpolate(mode="bicubic")`` (= torchvision's tensor ``resize`` with
``antialias=False``), ``"bilinear"`` that of ``mode="bilinear"``. Every backend computes in
float32 (sample coordinates, weights and sums), like ``interpolate`` on float32.

Tolerances (tests/test_resized_crop.py): float32 results of every backend within 1e-5 of the
reference; the reference within 1e-6 of ``interpolate`` in float64 and of torchvision's tensor
``resized_crop`` (antialias=False); uint8 against torchvision's uint8 output (which rounds to an
integer) within 0.5/255 before normalisation.

Difference from the PIL path. torchvision on PIL images (what the trainer's per-item data path
does) resizes with PIL's bicubic, which uses a = -0.5 and, when downscaling, widens the filter
(antialiasing), then rounds to uint8. So this op is not PIL's bicubic: when upscaling (the
Fashion-MNIST case: crops of at most 28 px resized to 32 px) only the kernel coefficient and the
rounding differ; when downscaling, PIL also low-pass filters. Measured on the first 512
Fashion-MNIST training images, output 32 x 32, boxes from :func:`random_resized_crop_params`
(seed 0, epoch 0; crop sides 11 to 28 px, all upscaled), values in [0, 1] before normalisation:
bicubic max |this op - PIL path| = 0.122, mean 0.0053 (the a = -0.5 vs -0.75 kernels, at edges);
bilinear against PIL's bilinear: max 0.0039 (= 1/255: PIL's rounding), mean 0.00083. Command:
``.venv/bin/python -m hpm_kernels.ops.resized_crop`` (runs :func:`_compare_with_pil`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from .. import _validation as v
from ..crop_params import _size, random_resized_crop_params
from ._dispatch import choose, kernel_for

IMAGE_DTYPES = (torch.uint8, torch.float16, torch.bfloat16, torch.float32)
INTERPOLATIONS = ("bicubic", "bilinear")


@torch.library.custom_op("hpm::resized_crop", mutates_args=())
def _resized_crop(
    images: torch.Tensor,
    index: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    out_h: int,
    out_w: int,
    mean: list[float],
    std: list[float],
    bicubic: bool,
    backend: str,
) -> torch.Tensor:
    v.check_index_range("index", index, images.shape[0])
    v.check_box_range("boxes", boxes, images.shape[2], images.shape[3])
    kernel = kernel_for("resized_crop", backend, images, index, boxes, flip, row=out_w)
    return kernel(images, index, boxes, flip, out_h, out_w, mean, std, bicubic)


@_resized_crop.register_fake
def _(images, index, boxes, flip, out_h, out_w, mean, std, bicubic, backend):
    return images.new_empty(boxes.shape[0], images.shape[1], out_h, out_w, dtype=torch.float32)


def _check_images(images: object) -> torch.Tensor:
    dims = "(B, C, H, W)"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"`images` must be a torch.Tensor of shape {dims}, got {type(images).__name__}")
    if images.dtype not in IMAGE_DTYPES:
        raise TypeError(f"`images` must have dtype uint8, float16, bfloat16 or float32, got {images.dtype}")
    if images.dim() != 4:
        raise ValueError(f"`images` must be 4-D with shape {dims}, got shape {tuple(images.shape)}")
    if min(images.shape[1:]) < 1:
        raise ValueError(f"`images` must have C, H and W >= 1, got shape {tuple(images.shape)}")
    if images.requires_grad:
        raise ValueError(
            "`images` requires grad, but resized_crop is data augmentation and has no gradient: pass images.detach()"
        )
    return images


def _check_1d(name: str, t: object, dtype: torch.dtype, n: int | None, what: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a {what} torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"`{name}` must have dtype {dtype}, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"`{name}` must be 1-D with shape (N,), got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"`{name}` must have N = {n} elements, got {t.shape[0]}")
    return t


def _check_boxes(boxes: object, n: int) -> torch.Tensor:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"`boxes` must be an int64 torch.Tensor of shape (N, 4), got {type(boxes).__name__}")
    if boxes.dtype != torch.int64:
        raise TypeError(f"`boxes` must have dtype torch.int64, got {boxes.dtype}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(f"`boxes` must have shape (N, 4) (rows top, left, height, width), got {tuple(boxes.shape)}")
    if boxes.shape[0] != n:
        raise ValueError(f"`boxes` must have N = {n} rows (one per output image), got {boxes.shape[0]}")
    return boxes


def _check_stats(name: str, values: object, C: int, *, positive: bool) -> list[float]:
    if isinstance(values, torch.Tensor) or hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise TypeError(f"`{name}` must be a sequence of C = {C} floats, got {type(values).__name__}")
    if len(values) != C:
        raise ValueError(f"`{name}` must have C = {C} values (one per channel), got {len(values)}")
    out = []
    for x in values:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"`{name}` must hold floats, got {type(x).__name__}")
        x = float(x)
        if not math.isfinite(x) or (positive and x <= 0):
            raise ValueError(f"`{name}` must hold finite floats{' > 0' if positive else ''}, got {x}")
        out.append(x)
    return out


def _check_interpolation(interpolation: object) -> bool:
    if not isinstance(interpolation, str):
        raise TypeError(f"`interpolation` must be 'bicubic' or 'bilinear', got {type(interpolation).__name__}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be 'bicubic' or 'bilinear', got {interpolation!r}")
    return interpolation == "bicubic"


def resized_crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    flip: torch.Tensor,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    index: torch.Tensor | None = None,
    interpolation: str = "bicubic",
    backend: str | None = None,
) -> torch.Tensor:
    """Crop, resize, flip and normalise a batch: MAE's augmentation in one call (not differentiable).

    Args:
        images: (B, C, H, W) uint8, or float32/float16/bfloat16 with values in [0, 1]; any strides.
        boxes: (N, 4) int64 rows (top, left, height, width) with height, width >= 1 and the box
            inside the image (checked at run time, like the index range; see ``HPM_KERNELS_CHECK_INDICES``).
        flip: (N,) bool; flip output n horizontally.
        size: (Ho, Wo) output size, or an int for a square.
        mean, std: C floats each (std > 0): ``out = (v - mean[c]) / std[c]``.
        index: optional (N,) int64 in [0, B): output n reads image ``index[n]`` (repeats allowed);
            None: N = B and output n reads image n.
        interpolation: ``"bicubic"`` (a = -0.75) or ``"bilinear"``, both as
            ``F.interpolate(..., align_corners=False, antialias=False)``.
        backend: backend name for this call (default: context manager, env, then auto).

    Returns:
        (N, C, Ho, Wo) float32. For uint8 images the interpolated value is clamped to [0, 255]
        and divided by 255 before the normalisation (no rounding); float images are not clamped.
        See the module docstring for how this differs from PIL's resize.
    """
    _check_images(images)
    B, C = images.shape[:2]
    if index is not None:
        _check_1d("index", index, torch.int64, None, "(N,) int64")
    N = B if index is None else index.shape[0]
    _check_boxes(boxes, N)
    _check_1d("flip", flip, torch.bool, N, "(N,) bool")
    out_h, out_w = _size("size", size)
    mean = _check_stats("mean", mean, C, positive=False)
    std = _check_stats("std", std, C, positive=True)
    bicubic = _check_interpolation(interpolation)
    v.check_same_device(images=images, boxes=boxes, flip=flip, index=index)
    if index is None:
        index = torch.arange(B, device=images.device)
    name = choose("resized_crop", backend, images, index, boxes, flip, row=out_w)
    return _resized_crop(images, index, boxes, flip, out_h, out_w, mean, std, bicubic, name)


def random_resized_crop(
    images: torch.Tensor,
    index: torch.Tensor,
    seed: int,
    epoch: int,
    size: int | tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    interpolation: str = "bicubic",
    backend: str | None = None,
) -> torch.Tensor:
    """:func:`hpm_kernels.random_resized_crop_params` + :func:`resized_crop` for images ``index``
    (N,) int64 of a dataset ``images`` (B, C, H, W) held in memory (e.g. on the GPU).

    The parameters are computed on the host from ``index.cpu()``: pass ``index`` on the host (a
    data loader has it there) and no device-to-host copy happens; an index on ``images``' device
    costs one small read. The index, boxes and flips are then copied to ``images``' device. Row n
    depends only on (seed, epoch, index[n]). Returns (N, C, Ho, Wo) float32.
    """
    _check_images(images)
    _check_1d("index", index, torch.int64, None, "(N,) int64")
    boxes, flip = random_resized_crop_params(
        seed, epoch, index.cpu(), (images.shape[2], images.shape[3]), scale=scale, ratio=ratio, flip_p=flip_p
    )
    device = images.device
    return resized_crop(
        images,
        boxes.to(device, non_blocking=True),
        flip.to(device, non_blocking=True),
        size,
        mean,
        std,
        index=index.to(device, non_blocking=True),
        interpolation=interpolation,
        backend=backend,
    )


def _compare_with_pil(count: int = 512, interpolation: str = "bicubic") -> tuple[float, float]:
    """(max, mean) |this op - torchvision's PIL path| on Fashion-MNIST, values in [0, 1], 32 x 32."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from hpm_pretrain.data import DEFAULT_FASHION_MNIST_PATH, load_fashion_mnist

    imgs, _ = load_fashion_mnist(DEFAULT_FASHION_MNIST_PATH, "train")
    imgs = torch.from_numpy(np.array(imgs[:count]))[:, None]
    index = torch.arange(count)
    boxes, _ = random_resized_crop_params(0, 0, index, (28, 28))
    flip = torch.zeros(count, dtype=torch.bool)
    ours = resized_crop(imgs, boxes, flip, 32, [0.0], [1.0], index=index, interpolation=interpolation)
    mode = InterpolationMode.BICUBIC if interpolation == "bicubic" else InterpolationMode.BILINEAR
    pil = []
    for n in range(count):
        t, l, h, w = boxes[n].tolist()
        out = TF.resized_crop(Image.fromarray(imgs[n, 0].numpy()), t, l, h, w, [32, 32], mode)
        pil.append(torch.from_numpy(np.asarray(out, dtype=np.float32) / 255.0))
    diff = (ours[:, 0] - torch.stack(pil)).abs()
    return diff.max().item(), diff.mean().item()


if __name__ == "__main__":
    for mode in INTERPOLATIONS:
        worst, mean_diff = _compare_with_pil(interpolation=mode)
        print(f"{mode}: max |op - PIL| = {worst:.4g}, mean = {mean_diff:.4g} (512 Fashion-MNIST images, 32 x 32, [0, 1])")
