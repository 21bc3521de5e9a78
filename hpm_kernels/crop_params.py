"""Random-resized-crop parameters as a pure function of (seed, epoch, image number).

:func:`random_resized_crop_params` returns, for each image number ``index[n]``, the crop box and
the flip of torchvision's ``RandomResizedCrop`` + ``RandomHorizontalFlip``, drawn from a
counter-based generator instead of a stateful one: row n depends only on
``(seed, epoch, index[n])``, never on the other images of the batch, the data-loader worker
count or the point a run resumed from.

Generator (splitmix64, Steele, Lea & Flood 2014, used as a hash). With ``mix`` the splitmix64
finaliser ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB;
z ^= z >> 31`` and all arithmetic modulo 2**64 (numpy uint64, where wraparound is defined)::

    key(seed, epoch, index) = mix(mix(mix(seed + G) ^ (epoch + 2G)) ^ (index + 3G))
    draw(k)                 = mix(key + (k + 1) * G)          G = 0x9E3779B97F4A7C15
    U(k)                    = (draw(k) >> 11) * 2**-53        uniform float64 in [0, 1), 53 bits

Attempt a = 0..9 of torchvision's ``RandomResizedCrop.get_params`` uses draws 4a (scale),
4a + 1 (log aspect ratio), 4a + 2 (top) and 4a + 3 (left); draw 40 is the flip.
``uniform(lo, hi) = lo + (hi - lo) * U`` and ``randint(0, m) = floor(U * m)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from . import _validation as v

ATTEMPTS = 10
DRAWS_PER_ATTEMPT = 4
FLIP_DRAW = ATTEMPTS * DRAWS_PER_ATTEMPT

_G = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _u64(value: int) -> np.ndarray:
    return np.array([value & _MASK64], dtype=np.uint64)


def uniforms(seed: int, epoch: int, index: np.ndarray, draws: int) -> np.ndarray:
    """(len(index), draws) float64 in [0, 1): U(k) for k = 0..draws-1 of each image number."""
    with np.errstate(over="ignore"):
        key = _mix(_u64(seed) + _G)
        key = _mix(key ^ (_u64(epoch) + _G * np.uint64(2)))
        key = _mix(key ^ (index.astype(np.uint64) + _G * np.uint64(3)))
        k = np.arange(1, draws + 1, dtype=np.uint64)
        bits = _mix(key[:, None] + k[None, :] * _G)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pair(name: str, value: object, *, positive: bool) -> tuple[float, float]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"`{name}` must be a pair (low, high) of floats, got {value!r}")
    lo, hi = (v.check_ratio(name, x, 0.0, math.inf, open_low=positive, open_high=True) for x in value)
    if lo > hi:
        raise ValueError(f"`{name}` must have low <= high, got {tuple(value)}")
    return lo, hi


def _size(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise TypeError(f"`{name}` must be an int or a pair (height, width) of ints, got {value!r}")
    return v.check_int(name, value[0], 1), v.check_int(name, value[1], 1)


def _index_array(index: object) -> np.ndarray:
    if isinstance(index, torch.Tensor):
        if index.dtype != torch.int64:
            raise TypeError(f"`index` must have dtype torch.int64, got {index.dtype}")
        if index.dim() != 1:
            raise ValueError(f"`index` must be 1-D with shape (N,), got shape {tuple(index.shape)}")
        out = index.detach().cpu().numpy()
    elif isinstance(index, Sequence) and not isinstance(index, str):
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in index):
            raise TypeError("`index` must be a sequence of ints (image numbers)")
        out = np.asarray([int(i) for i in index], dtype=np.int64).reshape(-1)
    else:
        raise TypeError(f"`index` must be an int64 torch.Tensor of shape (N,) or a sequence of ints, got {type(index).__name__}")
    if out.size and out.min() < 0:
        raise ValueError(f"`index` must hold image numbers >= 0, found {int(out.min())}")
    return out


def random_resized_crop_params(
    seed: int,
    epoch: int,
    index: torch.Tensor | Sequence[int],
    image_size: int | tuple[int, int],
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop boxes and flips of torchvision's ``RandomResizedCrop(scale, ratio)`` +
    ``RandomHorizontalFlip(flip_p)`` for images ``index`` of size ``image_size`` = (H, W).

    Row n is a pure function of ``(seed, epoch, index[n])`` (module docstring: the generator).
    The box follows ``RandomResizedCrop.get_params`` exactly: up to 10 attempts of
    ``target_area = H*W * uniform(*scale)``, ``aspect = exp(uniform(log r0, log r1))``,
    ``w = round(sqrt(target_area * aspect))``, ``h = round(sqrt(target_area / aspect))`` (round
    half to even, as Python's ``round``); the first with ``0 < w <= W`` and ``0 < h <= H`` is
    placed at ``top = randint(0, H - h + 1)``, ``left = randint(0, W - w + 1)``; if none fits,
    the central crop of the whole image with its aspect ratio clamped to ``ratio``.

    Args:
        seed, epoch: ints >= 0 (the seed is taken modulo 2**64).
        index: (N,) int64 tensor (any device; read on the host) or a sequence of image numbers >= 0.
        image_size: (H, W) or an int for square images.
        scale, ratio: as torchvision's (area fraction; width / height).
        flip_p: probability of a horizontal flip, in [0, 1].

    Returns:
        ``(boxes, flip)`` on the CPU: boxes (N, 4) int64 rows (top, left, height, width), inside
        the image; flip (N,) bool. Feed them to :func:`hpm_kernels.resized_crop`.
    """
    seed = v.check_int("seed", seed, 0)
    epoch = v.check_int("epoch", epoch, 0)
    H, W = _size("image_size", image_size)
    s0, s1 = _pair("scale", scale, positive=False)
    r0, r1 = _pair("ratio", ratio, positive=True)
    flip_p = v.check_ratio("flip_p", flip_p, 0.0, 1.0, open_low=False, open_high=False)
    idx = _index_array(index)
    N = idx.shape[0]

    u = uniforms(seed, epoch, idx, FLIP_DRAW + 1)
    area = float(H * W)
    att = u[:, :FLIP_DRAW].reshape(N, ATTEMPTS, DRAWS_PER_ATTEMPT)
    target_area = area * (s0 + (s1 - s0) * att[..., 0])
    log_r0, log_r1 = math.log(r0), math.log(r1)
    aspect = np.exp(log_r0 + (log_r1 - log_r0) * att[..., 1])
    w = np.round(np.sqrt(target_area * aspect))  # numpy rounds half to even, as Python's round()
    h = np.round(np.sqrt(target_area / aspect))
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)
    first = ok.argmax(axis=1)
    found = ok[np.arange(N), first]
    rows = np.arange(N)
    w_a, h_a = w[rows, first], h[rows, first]
    top = np.floor(att[rows, first, 2] * (H - h_a + 1))
    left = np.floor(att[rows, first, 3] * (W - w_a + 1))

    # torchvision's fallback: the central crop with the aspect ratio clamped to [r0, r1].
    in_ratio = W / H
    if in_ratio < r0:
        fw, fh = W, round(W / r0)
    elif in_ratio > r1:
        fw, fh = round(H * r1), H
    else:
        fw, fh = W, H
    boxes = np.stack(
        [
            np.where(found, top, (H - fh) // 2),
            np.where(found, left, (W - fw) // 2),
            np.where(found, h_a, fh),
            np.where(found, w_a, fw),
        ],
        axis=1,
    ).astype(np.int64)
    flip = u[:, FLIP_DRAW] < flip_p
    return torch.from_numpy(boxes.reshape(N, 4)), torch.from_numpy(flip)
