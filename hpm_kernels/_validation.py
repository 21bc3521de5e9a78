"""Argument checks shared by the public ops.

Every check raises ``TypeError`` (wrong kind or dtype), ``ValueError`` (wrong shape or value) or
``IndexError`` (index out of range) with a message that starts with the argument's name in
backticks and says what was expected. Checks here look only at metadata (shape, dtype, device),
so they cost nothing on the GPU and trace cleanly under ``torch.compile``; the checks that look at
data (:func:`check_index_range`, :func:`check_box_range`) run inside the op at run time, reading
the data on CPU and asserting on the device elsewhere (no host sync).
"""

from __future__ import annotations

import math
import numbers
import os

import torch

from .backends import FLOAT_DTYPES

_FLOAT_NAMES = "float16, bfloat16, float32 or float64"

#: Index-range (and crop-box) checks. On CPU tensors they read the indices and raise a clear
#: ``IndexError`` / ``ValueError``; on other devices they never copy to the host: the check is a
#: device-side assertion (``torch._assert_async``), as PyTorch's own index kernels do, which fails
#: the next synchronising call with a device-side assert and the message below in the kernel log.
#: ``HPM_KERNELS_CHECK_INDICES=0`` skips them (indices known valid, e.g. from ``select_patches``).
CHECK_INDICES = os.environ.get("HPM_KERNELS_CHECK_INDICES", "1") != "0"


def assert_on_device(ok: torch.Tensor, message: str) -> None:
    """Fail (asynchronously on an accelerator, at once on CPU) unless the 0-d bool ``ok`` is True;
    never reads ``ok`` on the host."""
    torch._assert_async(ok, message)


def check_float_tensor(name: str, t: object, ndim: int, dims: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor of shape {dims}, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"`{name}` must have a floating dtype ({_FLOAT_NAMES}), got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"`{name}` must be {ndim}-D with shape {dims}, got shape {tuple(t.shape)}")
    return t


def check_index_tensor(name: str, ids: object, batch: int | None, dims: str = "(N, K)") -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"`{name}` must be an int64 torch.Tensor of shape {dims}, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise TypeError(f"`{name}` must have dtype torch.int64, got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"`{name}` must be 2-D with shape {dims}, got shape {tuple(ids.shape)}")
    if batch is not None and ids.shape[0] != batch:
        raise ValueError(f"`{name}` must have batch size N = {batch} (dim 0), got {ids.shape[0]}")
    return ids


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        where = ", ".join(f"`{k}` on {v.device}" for k, v in present.items())
        raise ValueError(f"all tensor arguments must be on one device, got {where}")
    return next(iter(present.values())).device


def check_image(name: str, imgs: object) -> torch.Tensor:
    check_float_tensor(name, imgs, 4, "(N, C, H, W)")
    if min(imgs.shape[1:]) < 1:
        raise ValueError(f"`{name}` must have C, H and W >= 1, got shape {tuple(imgs.shape)}")
    return imgs


def check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return value


def check_patch_size(p: object, H: int, W: int) -> int:
    p = check_int("p", p, 1)
    if H % p or W % p:
        raise ValueError(f"`p` = {p} must divide the image height and width, got H = {H}, W = {W}")
    return p


def check_ratio(name: str, value: object, low: float, high: float, *, open_low: bool, open_high: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}")
    value = float(value)
    above = value > low if open_low else value >= low
    below = value < high if open_high else value <= high
    if not (math.isfinite(value) and above and below):
        interval = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
        raise ValueError(f"`{name}` must be in {interval}, got {value}")
    return value


def check_eps(value: object) -> float:
    return check_ratio("eps", value, 0.0, math.inf, open_low=False, open_high=True)


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}")
    return value


def check_index_range(name: str, ids: torch.Tensor, size: int) -> None:
    """Raise ``IndexError`` unless every element of ``ids`` is in ``[0, size)`` (CPU tensors); on
    other devices a device-side assertion, no host sync (see ``CHECK_INDICES``)."""
    if not CHECK_INDICES or ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= size)
    if ids.device.type != "cpu":
        assert_on_device(~bad.any(), f"`{name}` must hold indices in [0, {size})")
        return
    if bool(bad.any()):
        value = int(ids[bad][0])
        raise IndexError(f"`{name}` must hold indices in [0, {size}), found {value}")


def check_box_range(name: str, boxes: torch.Tensor, H: int, W: int) -> None:
    """Raise ``ValueError`` unless every row (top, left, height, width) of ``boxes`` (N, 4) is a
    non-empty box inside an H x W image. On CPU it reads the boxes; elsewhere it asserts on the
    device (no host sync), like :func:`check_index_range`, and is skipped with it."""
    if not CHECK_INDICES or boxes.numel() == 0:
        return
    top, left, h, w = boxes.unbind(1)
    bad = (h < 1) | (w < 1) | (top < 0) | (left < 0) | (top > H - h) | (left > W - w)
    if boxes.device.type != "cpu":
        assert_on_device(~bad.any(), f"`{name}` rows (top, left, height, width) must be boxes inside the {H} x {W} image")
        return
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"`{name}` rows (top, left, height, width) must be boxes inside the {H} x {W} image "
            f"(height, width >= 1, top, left >= 0, top + height <= {H}, left + width <= {W}), "
            f"row {row} is {tuple(boxes[row].tolist())}"
        )
