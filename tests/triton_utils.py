"""Shared pieces of the Triton backend tests.

Without a GPU the kernels run on CPU tensors through TRITON_INTERPRET=1 (set in conftest.py),
where bfloat16 does not exist; with a GPU they run on CUDA tensors in all three dtypes.
"""

from __future__ import annotations

import contextlib
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

requires_triton = pytest.mark.skipif(
    not any(b.name == "triton" and b.available for b in hk.available_backends()),
    reason="Triton backend unavailable: "
    + next((str(b.reason) for b in hk.available_backends() if b.name == "triton"), "not registered"),
)


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
