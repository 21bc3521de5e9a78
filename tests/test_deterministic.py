"""Deterministic mode: backends whose backward adds with float atomics (Triton, CUDA C++ for
patchify-with-ids and gather_tokens) are skipped by "auto" under
``torch.use_deterministic_algorithms(True)``, and raise PyTorch's alert when asked for by name.
The C++ CPU and the reference backward are deterministic (fixed summation order; torch's
index_put_/scatter_add_, deterministic in that mode)."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import backends
from tests.triton_utils import requires_triton


@contextlib.contextmanager
def deterministic(warn_only: bool = False):
    before, before_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=warn_only)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=before_warn)


def _inputs():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    ids = torch.tensor([[0, 3, 3], [1, 2, 0]])  # a repeat: two adds into one place
    x = torch.randn(1, 4, 5, generator=g, requires_grad=True)  # batch-1 x: every row adds into it
    return imgs, ids, x


@requires_triton
@pytest.mark.parametrize("op", ["patchify", "gather_tokens"])
def test_an_atomic_backward_asked_for_by_name_raises_the_alert(op):
    imgs, ids, x = _inputs()
    out = hk.patchify(imgs, 4, ids, backend="triton") if op == "patchify" else hk.gather_tokens(x, ids, backend="triton")
    with deterministic(), pytest.raises(RuntimeError, match=rf"hpm::{op}_backward on backend 'triton' \(float atomic adds\)"):
        out.sum().backward()
    out = hk.patchify(imgs, 4, ids, backend="triton") if op == "patchify" else hk.gather_tokens(x, ids, backend="triton")
    with deterministic(warn_only=True), pytest.warns(UserWarning, match=f"hpm::{op}_backward"):
        out.sum().backward()


@requires_triton
def test_patchify_without_ids_needs_no_alert():
    imgs, _, _ = _inputs()
    with deterministic():
        hk.patchify(imgs, 4, backend="triton").sum().backward()  # the backward is unpatchify: no atomics
    assert imgs.grad is not None


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_cpu_and_reference_backward_are_deterministic_and_silent(name):
    imgs, ids, x = _inputs()
    with deterministic(), warnings.catch_warnings():
        warnings.simplefilter("error")
        hk.patchify(imgs, 4, ids, backend=name).sum().backward()
        hk.gather_tokens(x, ids, backend=name).square().sum().backward()
    first = (imgs.grad.clone(), x.grad.clone())
    imgs.grad = x.grad = None
    with deterministic():
        hk.patchify(imgs, 4, ids, backend=name).sum().backward()
        hk.gather_tokens(x, ids, backend=name).square().sum().backward()
    assert torch.equal(imgs.grad, first[0]) and torch.equal(x.grad, first[1])


def test_auto_skips_an_atomic_backend_in_deterministic_mode(monkeypatch):
    """A backend declaring atomic_backward, top priority: "auto" picks it normally and skips it
    (saying why) under deterministic mode."""
    fake = dataclasses.replace(
        backends._REGISTRY["reference"], name="atomic", priority=100, atomic_backward=backends.ATOMIC_BACKWARD
    )
    monkeypatch.setitem(backends._REGISTRY, "atomic", fake)
    cpu = torch.device("cpu")
    assert backends.resolve("gather_tokens", None, cpu, [torch.float32], 4) == "atomic"
    assert backends.resolve("select_patches", None, cpu, [torch.float32], 4) == "atomic"
    with deterministic():
        assert backends.resolve("gather_tokens", None, cpu, [torch.float32], 4) != "atomic"
        assert backends.resolve("patchify_backward", None, cpu, [torch.float32], 4) != "atomic"
        assert backends.resolve("select_patches", None, cpu, [torch.float32], 4) == "atomic"  # no atomics there
        why = fake.auto_refusal("gather_tokens", cpu, [torch.float32], 4)
        assert "float atomics" in why and "use_deterministic_algorithms" in why


def test_the_gpu_backends_declare_their_atomic_backward():
    for name in ("triton", "cuda"):
        if name in backends._REGISTRY:
            assert backends._REGISTRY[name].atomic_backward == backends.ATOMIC_BACKWARD
    for name in ("cpu", "reference"):
        assert not backends._REGISTRY[name].atomic_backward
