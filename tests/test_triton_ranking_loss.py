"""Triton pairwise_ranking_loss (value and gradient) against the reference (CPU: through the interpreter)."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from tests.triton_utils import DEVICE, DTYPE_PARAMS, ON_GPU, assert_close, requires_triton, run_reference, run_triton

pytestmark = requires_triton

# (N, M): M = 0/1, M below, between and above multiples of the 64-wide tiles, N = 0.
SHAPES = [(1, 1), (2, 7), (3, 49), (2, 64), (2, 147), (1, 300), (1, 0), (0, 5)]


def _loss_and_grad(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6):
    """(loss, d loss / d pred) for an upstream gradient of M: the gradient is a sum over ~M pairs
    divided by ~M^2 pairs, so this scales its entries to O(1) and the dtype's tolerance means
    something. Forward and backward both run inside the caller's backend (and poison) context."""
    x = pred.detach().clone().requires_grad_()
    loss = hk.pairwise_ranking_loss(x, target, eps)
    loss.backward(torch.tensor(float(max(pred.shape[1], 1)), device=pred.device))
    return loss.detach(), x.grad


def _check(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, fill: str = "high"):
    got_loss, got_grad = run_triton(_loss_and_grad, pred, target, eps, fill=fill)
    want_loss, want_grad = run_reference(_loss_and_grad, pred, target, eps)
    assert got_loss.dtype == torch.float32
    assert_close(got_loss, want_loss)
    assert got_grad.dtype == pred.dtype
    assert_close(got_grad, want_grad)
    return got_loss, got_grad


def _inputs(gen, N, M, dtype, target_dtype=None, scale=1.0):
    pred = (scale * torch.randn(N, M, generator=gen)).to(DEVICE, dtype)
    target = torch.rand(N, M, generator=gen).to(DEVICE, target_dtype or dtype)
    return pred, target


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_backward(gen, shape, dtype):
    _check(*_inputs(gen, *shape, dtype))


@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1])
def test_eps_and_poison_fill(gen, eps):
    # fill="low": the int32 partial counts start at INT_MIN, the float buffers at NaN.
    _check(*_inputs(gen, 2, 70, torch.float32), eps=eps, fill="low")


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ties(gen, dtype):
    pred = torch.randn(3, 100, generator=gen).to(DEVICE, dtype)
    # All ties (a constant target, a row of NaN): no pair counts, the loss and gradient are 0.
    for target in [torch.full_like(pred, 0.25), torch.full_like(pred, float("nan"))]:
        loss, grad = _check(pred, target)
        assert loss.item() == 0.0 and not grad.any()
    # Many ties: a target with 3 distinct values per row, and one row all tied.
    target = torch.randint(0, 3, (3, 100), generator=gen).to(DEVICE, dtype)
    target[1] = 1.0
    _check(pred, target)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_nan_targets(gen, dtype):
    pred, target = _inputs(gen, 2, 147, dtype)
    target[torch.rand(2, 147, generator=gen).to(DEVICE) < 0.3] = float("nan")
    _check(pred, target)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_saturated_sigmoid(gen, dtype):
    # |d| up to ~200: sigmoid(d) underflows below eps for half the pairs, 1 - sigmoid rounds to 0.
    _check(*_inputs(gen, 2, 147, dtype, scale=30.0))


@pytest.mark.parametrize(
    ("pred_dtype", "target_dtype"),
    [(torch.float16, torch.float32), (torch.float32, torch.float16)]
    + ([(torch.bfloat16, torch.float32), (torch.bfloat16, torch.float16)] if ON_GPU else []),
    ids=str,
)
def test_mixed_dtypes(gen, pred_dtype, target_dtype):
    _check(*_inputs(gen, 3, 49, pred_dtype, target_dtype))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_non_contiguous_inputs(gen, dtype):
    pred = torch.randn(147, 3, generator=gen).to(DEVICE, dtype).t()  # (3, 147), strides (1, 3)
    target = torch.rand(147, 6, generator=gen).to(DEVICE, dtype).t()[::2]  # (3, 147), strides (2, 6)
    assert not pred.is_contiguous() and not target.is_contiguous()
    got = _check(pred, target)
    assert all(torch.equal(a, b) for a, b in zip(got, _check(pred.contiguous(), target.contiguous()), strict=True))


def test_against_float64_reference(gen):
    """The float32 kernel against the reference evaluated in float64 on the same inputs."""
    pred, target = _inputs(gen, 2, 300, torch.float32, scale=3.0)
    got_loss, got_grad = run_triton(_loss_and_grad, pred, target)
    want_loss, want_grad = run_reference(_loss_and_grad, pred.double(), target.double())
    torch.testing.assert_close(got_loss.double(), want_loss, atol=0.0, rtol=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, atol=1e-6, rtol=1e-5)


def test_large_row(gen):
    """M in the thousands: the j loop runs 18 steps per program, 18 programs per image."""
    _check(*_inputs(gen, 1, 1100, torch.float32))


def test_deterministic(gen):
    """No atomics: two runs agree bit for bit."""
    pred, target = _inputs(gen, 3, 300, torch.float32)
    first = run_triton(_loss_and_grad, pred, target)
    second = run_triton(_loss_and_grad, pred, target)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
