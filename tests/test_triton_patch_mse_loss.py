"""Triton patch_mse_loss (forward and backward) against the reference (CPU: through the interpreter)."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from tests.triton_utils import DEVICE, DTYPE_PARAMS, ON_GPU, assert_close, requires_triton, run_reference, run_triton

pytestmark = requires_triton
kernels = pytest.importorskip("hpm_kernels.triton_kernels.patch_mse_loss")

# (N, C, H, W, p): p = 4/8/14/16, C = 1/3, H != W, L not a power of two.
SHAPES = [(2, 3, 8, 12, 4), (1, 1, 16, 24, 8), (2, 3, 28, 14, 14), (1, 3, 32, 16, 16), (3, 1, 12, 20, 4)]
NORM_PARAMS = [pytest.param(True, id="norm"), pytest.param(False, id="plain")]
# P = 3*40*40 = 4800 > MAX_BLOCK: the chunked (multi-pass) path, with a partial last chunk.
BIG_P_SHAPE = (1, 3, 40, 80, 40)


def _images(gen, shape, dtype, layout="contiguous"):
    N, C, H, W, _ = shape
    if layout == "strided":  # every other column of a wider image
        return torch.randn(N, C, H, 2 * W, generator=gen).to(DEVICE, dtype)[..., ::2]
    imgs = torch.randn(N, C, H, W, generator=gen).to(DEVICE, dtype)
    return imgs.to(memory_format=torch.channels_last) if layout == "channels_last" else imgs


def _id_sets(gen, N, L):
    """K = 0; K = L (a permutation per row); repeated ids (K > L)."""
    perm = torch.rand(N, L, generator=gen).argsort(dim=1)
    return [
        torch.zeros(N, 0, dtype=torch.int64, device=DEVICE),
        perm.to(DEVICE),
        torch.randint(0, L, (N, L + 2), generator=gen).to(DEVICE),
    ]


def _loss_and_grad(runner, pred, imgs, p, ids, norm_pix, w):
    """(loss, per_patch, d pred) with d pred from loss + (w * per_patch).sum(): both gradient paths."""
    x = pred.detach().clone().requires_grad_()
    loss, per_patch = runner(hk.patch_mse_loss, x, imgs, p, ids, norm_pix)
    (loss + (w * per_patch).sum()).backward()
    return loss.detach(), per_patch.detach(), x.grad


def _compare(gen, pred, imgs, p, ids, norm_pix):
    w = torch.randn(ids.shape, generator=gen).to(DEVICE)
    got = _loss_and_grad(run_triton, pred, imgs, p, ids, norm_pix, w)
    want = _loss_and_grad(run_reference, pred, imgs, p, ids, norm_pix, w)
    for g, r in zip(got, want):
        assert_close(g, r)
    return got


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward(gen, shape, dtype, norm_pix):
    N, C, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = _images(gen, shape, dtype)
    for ids in _id_sets(gen, N, L):
        pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(DEVICE, dtype)
        loss, per_patch, grad = _compare(gen, pred, imgs, p, ids, norm_pix)
        assert loss.dtype == per_patch.dtype == torch.float32 and grad.dtype == dtype
        if ids.shape[1] == 0:
            assert loss.item() == 0.0 and per_patch.shape == (N, 0) and grad.shape == pred.shape


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]])
def test_image_layouts(gen, shape, layout, norm_pix):
    N, C, H, W, p = shape
    imgs = _images(gen, shape, torch.float32, layout)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(DEVICE)
    _compare(gen, pred, imgs, p, ids, norm_pix)


MIXED = [(torch.float16, torch.float32), (torch.float32, torch.float16)] + (
    [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)] if ON_GPU else []
)


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("dtypes", MIXED, ids=lambda d: str(d).removeprefix("torch."))
def test_mixed_dtypes(gen, dtypes, norm_pix):
    pred_dtype, img_dtype = dtypes
    N, C, H, W, p = SHAPES[3]
    imgs = _images(gen, SHAPES[3], img_dtype, "channels_last")
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(DEVICE, pred_dtype)
    _, _, grad = _compare(gen, pred, imgs, p, ids, norm_pix)
    assert grad.dtype == pred_dtype


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_chunked_path(gen, dtype, norm_pix):
    N, C, _, _, p = BIG_P_SHAPE
    assert not kernels._config(p * p * C)["SINGLE"]
    imgs = _images(gen, BIG_P_SHAPE, dtype, "strided")
    ids = torch.tensor([[1, 0, 1]], device=DEVICE)
    pred = torch.randn(N, 3, p * p * C, generator=gen).to(DEVICE, dtype)
    _compare(gen, pred, imgs, p, ids, norm_pix)


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("shape", SHAPES[:4])  # SHAPES[4] has P = 16, the smallest block
def test_chunked_path_small_blocks(gen, monkeypatch, shape, norm_pix):
    """The chunked path on the other shapes, by lowering the single-block cap: 3 or 4 chunks."""
    N, C, H, W, p = shape
    P = p * p * C
    monkeypatch.setattr(kernels, "MAX_BLOCK", max(16, (1 << (P - 1).bit_length()) // 4))
    assert not kernels._config(P)["SINGLE"]
    imgs = _images(gen, shape, torch.float32, "channels_last")
    ids = _id_sets(gen, N, (H // p) * (W // p))[2][:, :3]
    pred = torch.randn(N, 3, p * p * C, generator=gen).to(DEVICE)
    _compare(gen, pred, imgs, p, ids, norm_pix)


def test_strided_pred_and_ids(gen):
    N, C, H, W, p = SHAPES[0]
    L, K, P = (H // p) * (W // p), 5, p * p * C
    imgs = _images(gen, SHAPES[0], torch.float32, "strided")
    ids = torch.randint(0, L, (K, N), generator=gen).to(DEVICE).t()  # (N, K), strided
    pred = torch.randn(P, K, N, generator=gen).to(DEVICE).permute(2, 1, 0)  # (N, K, P), strided
    for norm_pix in [True, False]:
        _compare(gen, pred, imgs, p, ids, norm_pix)


@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("shape", [SHAPES[2], BIG_P_SHAPE])
def test_float32_matches_float64_reference(gen, shape, norm_pix):
    """float32 kernel against the float64 reference on the same values: rtol 1e-5."""
    N, C, H, W, p = shape
    imgs = _images(gen, shape, torch.float32)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(DEVICE)
    w = torch.randn(ids.shape, generator=gen).to(DEVICE)
    got = _loss_and_grad(run_triton, pred, imgs, p, ids, norm_pix, w)
    want = _loss_and_grad(run_reference, pred.double(), imgs.double(), p, ids, norm_pix, w.double())
    for g, r in zip(got, want):
        assert g.dtype == torch.float32 and r.dtype == torch.float64
        torch.testing.assert_close(g, r.float(), rtol=1e-5, atol=1e-7 * r.abs().max().item())


@pytest.mark.parametrize("which", ["loss", "per_patch"])
def test_single_gradient_path(gen, which):
    """Only one output reaches the loss: the other's gradient arrives as zeros."""
    N, C, H, W, p = SHAPES[4]
    imgs = _images(gen, SHAPES[4], torch.float32)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(DEVICE)
    grads = []
    for runner in [run_triton, run_reference]:
        x = pred.clone().requires_grad_()
        loss, per_patch = runner(hk.patch_mse_loss, x, imgs, p, ids, True)
        (loss if which == "loss" else per_patch.sum()).backward()
        grads.append(x.grad)
    assert_close(*grads)
