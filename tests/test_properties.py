"""Property tests: every op against the naive float64 loops of tests/naive.py on shapes and
layouts drawn by hypothesis. Tensor data comes from a torch.Generator seeded by hypothesis, so a
failing example replays exactly (the profile prints the blob)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from hpm_kernels import gather_tokens, pairwise_ranking_loss, patch_mse_loss, patchify, select_patches, unpatchify
from tests import naive

seeds = st.integers(0, 2**31 - 1)
LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed")


@st.composite
def image_shapes(draw, min_P: int = 1):
    """(N, C, p, H, W) with tiny sizes; H != W allowed; P = p*p*C >= min_P."""
    N = draw(st.integers(1, 3))
    C = draw(st.sampled_from([1, 3]))
    p = draw(st.sampled_from([1, 2, 3, 4] if min_P <= 1 else [2, 3, 4] if C == 1 else [1, 2, 3, 4]))
    h = draw(st.integers(1, 4))
    w = draw(st.integers(1, 4))
    return N, C, p, h * p, w * p


def make_images(gen: torch.Generator, shape, layout: str, dtype=torch.float64) -> torch.Tensor:
    N, C, H, W = shape
    if layout == "contiguous":
        x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype)
    elif layout == "channels_last":
        x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype).to(memory_format=torch.channels_last)
    elif layout == "sliced":
        # a strided window of a bigger tensor: every dim has an unusual stride and an offset
        big = torch.randn(N + 1, C + 2, 2 * H + 1, W + 3, generator=gen, dtype=torch.float64).to(dtype)
        x = big[1:, 1 : C + 1, 1::2, 2 : W + 2]
    else:  # "transposed": H/W strides swapped (W-major storage)
        x = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64).to(dtype).transpose(2, 3).contiguous().transpose(2, 3)
    assert x.shape == (N, C, H, W)
    return x


def random_ids(gen: torch.Generator, N: int, K: int, L: int) -> torch.Tensor:
    return torch.randint(0, L, (N, K), generator=gen, dtype=torch.int64)


# --------------------------------------------------------------------------------------------
# patchify / unpatchify


@given(
    shape=image_shapes(),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16]),
    seed=seeds,
)
def test_patchify_matches_naive(shape, layout, dtype, seed):
    N, C, p, H, W = shape
    gen = torch.Generator().manual_seed(seed)
    imgs = make_images(gen, (N, C, H, W), layout, dtype)
    out = patchify(imgs, p)
    L, P = (H // p) * (W // p), p * p * C
    assert out.shape == (N, L, P) and out.dtype == dtype
    # pure data movement: exact in every dtype (naive widens to float64 exactly)
    np.testing.assert_array_equal(out.double().numpy(), naive.patchify(imgs, p))
    # round trip
    back = unpatchify(out, p, H, W)
    assert back.shape == imgs.shape and back.dtype == dtype
    assert torch.equal(back, imgs)
    np.testing.assert_array_equal(back.double().numpy(), naive.unpatchify(out, p, H, W))


@given(shape=image_shapes(), layout=st.sampled_from(LAYOUTS), data=st.data(), seed=seeds)
def test_patchify_with_ids_matches_naive(shape, layout, data, seed):
    N, C, p, H, W = shape
    L = (H // p) * (W // p)
    K = data.draw(st.one_of(st.just(0), st.just(L), st.integers(0, L + 3)), label="K")
    gen = torch.Generator().manual_seed(seed)
    imgs = make_images(gen, (N, C, H, W), layout)
    ids = random_ids(gen, N, K, L)  # repeats allowed, K may exceed L
    out = patchify(imgs, p, ids)
    assert out.shape == (N, K, p * p * C) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), naive.patchify(imgs, p, ids))
    # with ids = arange(L) it is plain patchify
    full = torch.arange(L).expand(N, L)
    assert torch.equal(patchify(imgs, p, full), patchify(imgs, p))


@given(shape=image_shapes(), seed=seeds)
def test_unpatchify_matches_naive(shape, seed):
    N, C, p, H, W = shape
    gen = torch.Generator().manual_seed(seed)
    L, P = (H // p) * (W // p), p * p * C
    patches = torch.randn(N, L, P, generator=gen, dtype=torch.float64)
    out = unpatchify(patches, p, H, W)
    np.testing.assert_array_equal(out.numpy(), naive.unpatchify(patches, p, H, W))
    assert torch.equal(patchify(out, p), patches)


# --------------------------------------------------------------------------------------------
# gather_tokens


@given(
    N=st.integers(1, 3),
    L=st.integers(1, 8),
    D=st.integers(1, 5),
    shared=st.booleans(),
    data=st.data(),
    seed=seeds,
)
def test_gather_tokens_matches_naive(N, L, D, shared, data, seed):
    K = data.draw(st.integers(0, L + 2), label="K")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1 if shared else N, L, D, generator=gen, dtype=torch.float64)
    ids = random_ids(gen, N, K, L)
    out = gather_tokens(x, ids)
    assert out.shape == (N, K, D) and out.dtype == torch.float64
    np.testing.assert_array_equal(out.numpy(), naive.gather_tokens(x, ids))


# --------------------------------------------------------------------------------------------
# patch_mse_loss


def _check_patch_mse(shape, layout, norm_pix, data, seed, dtype, rtol, atol):
    N, C, p, H, W = shape
    L, P = (H // p) * (W // p), p * p * C
    if P < 2:
        norm_pix = False
    K = data.draw(st.one_of(st.just(0), st.integers(0, L + 2)), label="K")
    gen = torch.Generator().manual_seed(seed)
    imgs = make_images(gen, (N, C, H, W), layout, dtype)
    ids = random_ids(gen, N, K, L)
    pred = torch.randn(N, K, P, generator=gen, dtype=torch.float64).to(dtype)
    loss, per_patch = patch_mse_loss(pred, imgs, p, ids, norm_pix=norm_pix)
    want_loss, want_per_patch = naive.patch_mse_loss(pred, imgs, p, ids, norm_pix=norm_pix)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.shape == () and loss.dtype == out_dtype
    assert per_patch.shape == (N, K) and per_patch.dtype == out_dtype
    np.testing.assert_allclose(per_patch.double().numpy(), want_per_patch, rtol=rtol, atol=atol)
    np.testing.assert_allclose(loss.item(), want_loss, rtol=rtol, atol=atol)
    if K == 0:
        assert loss.item() == 0.0


@given(
    shape=image_shapes(),
    layout=st.sampled_from(LAYOUTS),
    norm_pix=st.booleans(),
    data=st.data(),
    seed=seeds,
)
def test_patch_mse_loss_matches_naive_float64(shape, layout, norm_pix, data, seed):
    _check_patch_mse(shape, layout, norm_pix, data, seed, torch.float64, rtol=1e-9, atol=1e-12)


@given(
    shape=image_shapes(),
    layout=st.sampled_from(LAYOUTS),
    data=st.data(),
    seed=seeds,
)
def test_patch_mse_loss_matches_naive_float32(shape, layout, data, seed):
    # float32 without norm_pix: a difference, a square and a mean, all well conditioned
    _check_patch_mse(shape, layout, False, data, seed, torch.float32, rtol=1e-5, atol=1e-6)


@given(
    shape=image_shapes(min_P=2),
    layout=st.sampled_from(LAYOUTS),
    spread=st.sampled_from([1.0, 1e-2, 1e-4]),
    data=st.data(),
    seed=seeds,
)
def test_patch_mse_loss_norm_pix_matches_naive_float32(shape, layout, spread, data, seed):
    """float32 with norm_pix. The normalisation divides the (float32-rounded) deviation from
    the mean by sqrt(var + 1e-6), which amplifies float32 rounding by up to 1000 for a nearly
    constant patch; that is inherent to accumulating in float32 (SPEC section 2), not a bug.
    So the tolerance grows with 1 / sqrt(var + eps) of each target patch."""
    N, C, p, H, W = shape
    L, P = (H // p) * (W // p), p * p * C
    K = data.draw(st.integers(0, L + 2), label="K")
    gen = torch.Generator().manual_seed(seed)
    imgs = make_images(gen, (N, C, H, W), layout, torch.float32)
    imgs = imgs.mul_(spread).add_(1.0)  # in place keeps the layout; small spread: nearly constant patches
    ids = random_ids(gen, N, K, L)
    pred = torch.randn(N, K, P, generator=gen)
    loss, per_patch = patch_mse_loss(pred, imgs, p, ids, norm_pix=True)
    want_loss, want_per_patch = naive.patch_mse_loss(pred, imgs, p, ids, norm_pix=True)
    assert loss.dtype == torch.float32 and per_patch.shape == (N, K)
    raw = torch.from_numpy(naive.patchify(imgs, p, ids))  # (N, K, P) float64
    amplification = 1.0 / (raw.var(dim=-1) + 1e-6).sqrt() if K else torch.zeros(N, 0)
    scale = raw.abs().amax(dim=-1) if K else torch.zeros(N, 0)
    # |d target| <= ~4 ulp(max |x|) * amplification; |d per_patch| <= 2 sqrt(per_patch) |d target| + rounding
    d_target = 4 * 2.0**-23 * scale * amplification
    tol = 1e-6 + 1e-5 * torch.from_numpy(want_per_patch) + 2 * torch.from_numpy(want_per_patch).sqrt() * d_target
    err = (per_patch.double() - torch.from_numpy(want_per_patch)).abs()
    assert bool((err <= tol).all()), (err - tol).max()
    np.testing.assert_allclose(loss.item(), want_loss, rtol=1e-5, atol=1e-6 + float(tol.mean()) if K else 1e-6)


@given(
    N=st.integers(1, 3),
    C=st.sampled_from([1, 3]),
    p=st.sampled_from([1, 2, 3, 4]),
    norm_pix=st.booleans(),
)
def test_patch_mse_loss_k0(N, C, p, norm_pix):
    if p * p * C < 2:
        norm_pix = False
    imgs = torch.randn(N, C, 2 * p, 3 * p)
    loss, per_patch = patch_mse_loss(torch.empty(N, 0, p * p * C), imgs, p, torch.empty(N, 0, dtype=torch.int64), norm_pix)
    assert loss.item() == 0.0 and not loss.isnan()
    assert per_patch.shape == (N, 0)


# --------------------------------------------------------------------------------------------
# select_patches


@given(
    N=st.integers(1, 3),
    L=st.integers(1, 24),
    mask_ratio=st.floats(0.01, 0.99),
    hard_ratio=st.floats(0.0, 1.0),
    score_range=st.integers(1, 4),
    tied_noise=st.booleans(),
    nan_scores=st.booleans(),
    seed=seeds,
)
def test_select_patches_matches_naive(N, L, mask_ratio, hard_ratio, score_range, tied_noise, nan_scores, seed):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, score_range, (N, L), generator=gen).float()
    if nan_scores:
        scores[torch.rand(N, L, generator=gen) < 0.2] = float("nan")
    if tied_noise:
        noise = torch.randint(0, 3, (N, L), generator=gen).float() / 3
    else:
        noise = torch.rand(N, L, generator=gen)
    sel = select_patches(scores, noise, mask_ratio, hard_ratio)
    keep, masked, restore, mask = naive.select_patches(scores, noise, mask_ratio, hard_ratio)
    assert sel.ids_keep.tolist() == keep
    assert sel.ids_mask.tolist() == masked
    assert sel.ids_restore.tolist() == restore
    assert sel.mask.tolist() == mask
    len_keep = int(L * (1 - mask_ratio))
    assert sel.ids_keep.shape == (N, len_keep) and sel.ids_mask.shape == (N, L - len_keep)


# --------------------------------------------------------------------------------------------
# pairwise_ranking_loss


def _ranking_inputs(gen, N, M, target_range, nan_target, dtype):
    pred = torch.randn(N, M, generator=gen, dtype=torch.float64).to(dtype)
    target = torch.randint(0, target_range, (N, M), generator=gen).to(dtype)  # ties
    if nan_target and N * M:
        target[torch.rand(N, M, generator=gen) < 0.2] = float("nan")
    return pred, target


@given(
    N=st.integers(0, 3),
    M=st.integers(0, 12),
    target_range=st.integers(1, 5),
    nan_target=st.booleans(),
    seed=seeds,
)
def test_pairwise_ranking_loss_matches_naive_float64(N, M, target_range, nan_target, seed):
    gen = torch.Generator().manual_seed(seed)
    pred, target = _ranking_inputs(gen, N, M, target_range, nan_target, torch.float64)
    loss = pairwise_ranking_loss(pred, target)
    assert loss.shape == () and loss.dtype == torch.float64
    np.testing.assert_allclose(loss.item(), naive.pairwise_ranking_loss(pred, target), rtol=1e-9, atol=1e-12)


@given(
    N=st.integers(0, 3),
    M=st.integers(0, 12),
    target_range=st.integers(1, 5),
    nan_target=st.booleans(),
    seed=seeds,
)
def test_pairwise_ranking_loss_matches_naive_float32(N, M, target_range, nan_target, seed):
    gen = torch.Generator().manual_seed(seed)
    pred, target = _ranking_inputs(gen, N, M, target_range, nan_target, torch.float32)
    loss = pairwise_ranking_loss(pred, target)
    assert loss.shape == () and loss.dtype == torch.float32
    np.testing.assert_allclose(loss.item(), naive.pairwise_ranking_loss(pred, target), rtol=1e-5, atol=1e-6)
