"""Helpers shared by the Triton launchers."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch
import triton

#: Kernels run through Triton's CPU interpreter (TRITON_INTERPRET=1, read when they are defined).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Tests set this to a function dtype -> fill value, so outputs are poisoned before a kernel
#: writes them and any element a kernel forgets shows up.
POISON: Callable[[torch.dtype], object] | None = None


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Output allocation for the launchers (poisoned under test)."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON is not None:
        out.fill_(POISON(dtype))
    return out


def block_size(n: int, cap: int = 4096) -> int:
    """Power of two >= n (at least 16, Triton's smallest useful block), at most cap."""
    return min(max(16, triton.next_power_of_2(max(n, 1))), cap)


def acc_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """Accumulation/loss dtype: float32 for the half and float32 inputs the kernels accept."""
    return torch.float32


def device_context(device: torch.device) -> contextlib.AbstractContextManager:
    """Triton launches on the *current* CUDA device and its current stream: make the tensor's
    device current for the launch (a no-op for CPU tensors under the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def on_input_device(kernel: Callable) -> Callable:
    """Wrap a launcher so that it runs in the device context of its first tensor argument (the
    inputs of one op are on one device: the ops check that)."""

    @functools.wraps(kernel)
    def launch(*args, **kwargs):
        device = next(a.device for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
        with device_context(device):
            return kernel(*args, **kwargs)

    return launch
