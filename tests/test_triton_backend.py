"""How the "triton" backend declares itself and is chosen."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels.ops._dispatch import choose
from tests.triton_utils import ON_GPU, requires_triton

pytestmark = requires_triton


def test_listed_as_available():
    (info,) = [b for b in hk.available_backends() if b.name == "triton"]
    assert info.available and info.reason is None
    assert "cuda" in info.devices and "float64" not in info.dtypes


@pytest.mark.skipif(ON_GPU, reason="CPU-only behaviour")
def test_auto_never_sends_cpu_tensors_to_triton():
    x = torch.randn(2, 3, 8, 8)
    # the C++ CPU backend when it is built, else the reference; the interpreter only by name
    assert choose("patchify", None, x, row=4) in {"cpu", "reference"}
    with hk.backend("triton"):
        assert choose("patchify", None, x, row=4) == "triton"


@pytest.mark.skipif(ON_GPU, reason="the interpreter's limits")
def test_interpreter_refuses_bfloat16_by_name():
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    with pytest.raises(hk.BackendUnavailableError, match="no bfloat16"):
        hk.patchify(x, 4, backend="triton")


def test_float64_and_long_rows_are_refused_with_the_reason():
    device = "cuda" if ON_GPU else "cpu"
    with pytest.raises(hk.BackendUnavailableError, match="float64"):
        hk.patchify(torch.randn(1, 1, 4, 4, dtype=torch.float64, device=device), 2, backend="triton")
    scores = torch.randn(1, 4097, device=device)
    with pytest.raises(hk.BackendUnavailableError, match="rows up to 4096"):
        hk.select_patches(scores, torch.rand_like(scores), 0.75, 0.5, backend="triton")
