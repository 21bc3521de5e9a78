"""The reference ops against the naive loops of tests/naive.py on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hpm_kernels as hk
from tests import naive

# (N, C, H, W, p): square and not, grey and RGB, L not a power of two.
SHAPES = [(2, 3, 8, 12, 4), (1, 1, 28, 28, 4), (3, 3, 14, 28, 7), (2, 2, 6, 9, 3), (1, 3, 16, 16, 16)]
# float32 against the float64 naive loop: the "1e-6 in float32" bar of the foundation issue.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-6, atol=1e-6)}


def _ids(gen, N, L, K, repeats=False):
    if repeats:
        return torch.randint(0, L, (N, K), generator=gen)
    return torch.stack([torch.randperm(L, generator=gen)[:K] for _ in range(N)])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_patchify_matches_naive(gen, shape, dtype):
    N, C, H, W, p = shape
    imgs = torch.randn(N, C, H, W, generator=gen, dtype=dtype)
    L = (H // p) * (W // p)
    out = hk.patchify(imgs, p)
    assert out.shape == (N, L, p * p * C) and out.dtype == dtype
    np.testing.assert_array_equal(out.double().numpy(), naive.patchify(imgs, p))
    for K, repeats in [(0, False), (L, False), (max(1, L // 2), False), (L + 3, True)]:
        ids = _ids(gen, N, L, K, repeats)
        np.testing.assert_array_equal(hk.patchify(imgs, p, ids).double().numpy(), naive.patchify(imgs, p, ids))


@pytest.mark.parametrize("shape", SHAPES)
def test_unpatchify_matches_naive(gen, shape):
    N, C, H, W, p = shape
    patches = torch.randn(N, (H // p) * (W // p), p * p * C, generator=gen, dtype=torch.float64)
    np.testing.assert_array_equal(hk.unpatchify(patches, p, H, W).numpy(), naive.unpatchify(patches, p, H, W))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_patch_mse_loss_matches_naive(gen, shape, dtype, norm_pix):
    N, C, H, W, p = shape
    L, P = (H // p) * (W // p), p * p * C
    imgs = torch.randn(N, C, H, W, generator=gen, dtype=dtype) * 2 + 0.5
    for K in [0, 1, L, max(1, (3 * L) // 4)]:
        ids = _ids(gen, N, L, K)
        pred = torch.randn(N, K, P, generator=gen, dtype=dtype)
        loss, per_patch = hk.patch_mse_loss(pred, imgs, p, ids, norm_pix=norm_pix)
        want_loss, want_pp = naive.patch_mse_loss(pred, imgs, p, ids, norm_pix=norm_pix)
        assert loss.shape == () and per_patch.shape == (N, K)
        assert loss.dtype == per_patch.dtype == dtype
        np.testing.assert_allclose(per_patch.double().numpy(), want_pp, **TOL[dtype])
        np.testing.assert_allclose(loss.item(), want_loss, **TOL[dtype])


@pytest.mark.parametrize("x_batch", ["N", 1])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gather_tokens_matches_naive(gen, x_batch, dtype):
    N, L, D = 3, 13, 5
    x = torch.randn(N if x_batch == "N" else 1, L, D, generator=gen, dtype=dtype)
    for K in [0, 1, L, 2 * L]:
        ids = torch.randint(0, L, (N, K), generator=gen)
        out = hk.gather_tokens(x, ids)
        assert out.shape == (N, K, D) and out.dtype == dtype
        np.testing.assert_array_equal(out.double().numpy(), naive.gather_tokens(x, ids))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N,M", [(1, 1), (2, 7), (3, 49), (2, 147)])
def test_ranking_loss_matches_naive(gen, dtype, N, M):
    pred = torch.randn(N, M, generator=gen, dtype=dtype) * 3
    target = torch.rand(N, M, generator=gen, dtype=dtype)
    target[:, ::3] = target[:, :1].clone()  # ties, which count for nothing
    got = hk.pairwise_ranking_loss(pred, target)
    assert got.shape == () and got.dtype == dtype
    np.testing.assert_allclose(got.item(), naive.pairwise_ranking_loss(pred, target), **TOL[dtype])


def test_ranking_loss_chunking_does_not_change_the_value(gen, monkeypatch):
    from hpm_kernels.reference import ranking_loss as rl

    pred = torch.randn(3, 40, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 40, generator=gen, dtype=torch.float64)
    whole = hk.pairwise_ranking_loss(pred, target)
    (g_whole,) = torch.autograd.grad(whole, pred)
    monkeypatch.setattr(rl, "CHUNK_ELEMENTS", 7)  # chunks of 1 row of i
    chunked = hk.pairwise_ranking_loss(pred, target)
    (g_chunked,) = torch.autograd.grad(chunked, pred)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(g_chunked, g_whole, rtol=1e-12, atol=1e-15)


def test_ranking_loss_all_ties_is_zero_with_zero_gradient(gen):
    pred = torch.randn(2, 6, generator=gen, requires_grad=True)
    target = torch.full((2, 6), 0.3)
    loss = hk.pairwise_ranking_loss(pred, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.count_nonzero(pred.grad) == 0
