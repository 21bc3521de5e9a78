"""Triton patchify / unpatchify / gather_tokens against the reference (CPU: through the interpreter)."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from tests.triton_utils import DEVICE, DTYPE_PARAMS, assert_close, requires_triton, run_reference, run_triton

pytestmark = requires_triton

# (N, C, H, W, p): p = 4/8/14/16, C = 1/3, H != W, L not a power of two.
SHAPES = [(2, 3, 8, 12, 4), (1, 1, 16, 24, 8), (2, 3, 28, 14, 14), (1, 3, 32, 16, 16), (3, 1, 12, 20, 4)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _images(gen, shape, dtype, layout):
    N, C, H, W, _ = shape
    if layout == "strided":  # every other column of a wider image
        return torch.randn(N, C, H, 2 * W, generator=gen).to(DEVICE, dtype)[..., ::2]
    imgs = torch.randn(N, C, H, W, generator=gen).to(DEVICE, dtype)
    return imgs.to(memory_format=torch.channels_last) if layout == "channels_last" else imgs


def _ids(gen, N, L, K):
    return torch.randint(0, L, (N, K), generator=gen).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_patchify_forward_backward(gen, shape, dtype, layout):
    N, _, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = _images(gen, shape, dtype, layout)
    for ids in [None, _ids(gen, N, L, 0), _ids(gen, N, L, L), _ids(gen, N, L, max(1, L // 3))]:
        want = run_reference(hk.patchify, imgs, p, ids)
        got = run_triton(hk.patchify, imgs, p, ids)
        assert torch.equal(got, want)
        grad = torch.randn(want.shape, generator=gen).to(DEVICE, dtype)
        x_ref = imgs.detach().clone().requires_grad_()
        x_tri = imgs.detach().clone().requires_grad_()
        run_reference(hk.patchify, x_ref, p, ids).backward(grad)
        run_triton(hk.patchify, x_tri, p, ids).backward(grad)
        assert_close(x_tri.grad, x_ref.grad)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_unpatchify(gen, shape, dtype):
    N, C, H, W, p = shape
    patches = torch.randn(N, (H // p) * (W // p), p * p * C, generator=gen).to(DEVICE, dtype)
    for source in [patches, patches.transpose(0, 1).contiguous().transpose(0, 1)]:
        got = run_triton(hk.unpatchify, source, p, H, W, fill="low")
        assert torch.equal(got, run_reference(hk.unpatchify, source, p, H, W))


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_patchify_backward_adds_repeated_ids(gen, dtype):
    imgs = torch.randn(2, 3, 8, 8, generator=gen).to(DEVICE, dtype).requires_grad_()
    ids = torch.tensor([[1, 1, 1, 0], [3, 2, 3, 3]], device=DEVICE)
    grad = torch.rand(2, 4, 48, generator=gen).to(DEVICE, dtype)
    run_triton(hk.patchify, imgs, 4, ids).backward(grad)
    x = imgs.detach().clone().requires_grad_()
    run_reference(hk.patchify, x, 4, ids).backward(grad)
    assert_close(imgs.grad, x.grad)


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("x_batch", ["N", 1])
@pytest.mark.parametrize("D", [1, 7, 64, 1100])
def test_gather_tokens_forward_backward(gen, dtype, x_batch, D):
    N, L = 3, 11
    x = torch.randn(N if x_batch == "N" else 1, L, D, generator=gen).to(DEVICE, dtype)
    for K in [0, 1, L, 2 * L]:
        ids = _ids(gen, N, L, K)
        assert torch.equal(run_triton(hk.gather_tokens, x, ids), run_reference(hk.gather_tokens, x, ids))
        grad = torch.randn(N, K, D, generator=gen).to(DEVICE, dtype)
        x_ref, x_tri = x.clone().requires_grad_(), x.clone().requires_grad_()
        run_reference(hk.gather_tokens, x_ref, ids).backward(grad)
        run_triton(hk.gather_tokens, x_tri, ids).backward(grad)
        assert_close(x_tri.grad, x_ref.grad)


def test_gather_tokens_non_contiguous_inputs(gen):
    x = torch.randn(9, 4, 10, generator=gen).to(DEVICE).transpose(0, 1)  # (4, 9, 10), strided
    ids = torch.randint(0, 9, (6, 4), generator=gen).to(DEVICE).t()  # (4, 6), strided
    assert torch.equal(run_triton(hk.gather_tokens, x, ids), run_reference(hk.gather_tokens, x, ids))
