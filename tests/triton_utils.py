"""Shared pieces of the Triton backend tests.

Without a GPU the kernels run on CPU tensors through TRITON_INTERPRET=1 (set in conftest.py),
where bfloat16 does not exist; with a GPU they run on CUDA tensors in all three dtypes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels.triton_kernels import _common

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
DTYPE_PARAMS = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in DTYPES]

# (atol, rtol) for kernel outputs in their own dtype, against the reference on the same inputs.
# Both accumulate in float32, so for half dtypes the bound is the rounding of the output itself.
TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-2, 1e-2),
}


try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only torch without Triton: the backend says it is unavailable
    triton = None
else:

    @triton.jit
    def _count_blocks(n, BLOCK: tl.constexpr):
        count = 0
        for _ in range(0, n, BLOCK):
            count += 1
        return count

    @triton.jit
    def _probe_device_function_loop(out_ptr, n, BLOCK: tl.constexpr):
        tl.store(out_ptr, _count_blocks(n, BLOCK))


def _interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run these kernels here, or None. Before Triton 3.8 the
    interpreter turns a scalar argument of a device function into an int with ``int(array)``,
    which NumPy >= 2.4 refuses for a 1-element array; a ``range(0, n, BLOCK)`` in a device function
    then raises TypeError. Probed by running such a function, not guessed from version numbers."""
    if ON_GPU or triton is None or os.environ.get("TRITON_INTERPRET") != "1":
        return None
    import numpy

    out = torch.zeros(1, dtype=torch.int32)
    try:
        _probe_device_function_loop[(1,)](out, 5, BLOCK=2)
    except Exception as e:
        return (
            f"Triton {triton.__version__}'s interpreter fails with NumPy {numpy.__version__} on a loop over a device "
            f"function's scalar argument ({type(e).__name__}: {e}); run the interpreter tests with NumPy < 2.4 or Triton >= 3.8"
        )
    return None if out.item() == 3 else f"Triton's interpreter probe computed {out.item()} blocks of 2 in 5, not 3"


def _triton_unusable() -> str | None:
    info = next((b for b in hk.available_backends() if b.name == "triton"), None)
    if info is None:
        return "Triton backend unavailable: not registered"
    if not info.available:
        return f"Triton backend unavailable: {info.reason}"
    return _interpreter_problem()


TRITON_UNUSABLE = _triton_unusable()
requires_triton = pytest.mark.skipif(TRITON_UNUSABLE is not None, reason=str(TRITON_UNUSABLE))


def _poison_value(fill: str):
    def value(dtype: torch.dtype):
        if dtype == torch.bool:
            return fill == "high"
        if dtype.is_floating_point:
            return float("nan")
        return torch.iinfo(dtype).max if fill == "high" else torch.iinfo(dtype).min

    return value


@contextlib.contextmanager
def poisoned(fill: str = "high") -> Iterator[None]:
    """Fill every output the Triton launchers allocate (NaN for floats; the extreme of the
    dtype, or True/False, for integers and bools) before the kernels write it."""
    old = _common.POISON
    _common.POISON = _poison_value(fill)
    try:
        yield
    finally:
        _common.POISON = old


def run_triton(fn, *args, fill: str = "high", **kwargs):
    """fn(*args, **kwargs) on the Triton backend with poisoned outputs."""
    with poisoned(fill), hk.backend("triton"):
        return fn(*args, **kwargs)


def run_reference(fn, *args, **kwargs):
    with hk.backend("reference"):
        return fn(*args, **kwargs)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and shape, no NaN (poison) left, values within TOL of the output's dtype."""
    atol, rtol = TOL[got.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=False)
