"""Half-precision inputs: output dtypes follow SPEC §2 and accumulation happens in float32."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_patchify_and_gather_copy_exactly(gen, dtype):
    imgs = torch.randn(2, 3, 8, 12, generator=gen).to(dtype)
    ids = torch.randint(0, 6, (2, 4), generator=gen)
    out = hk.patchify(imgs, 4, ids)
    assert out.dtype == dtype
    assert torch.equal(out.float(), hk.patchify(imgs.float(), 4, ids))
    x = torch.randn(2, 6, 5, generator=gen).to(dtype)
    assert torch.equal(hk.gather_tokens(x, ids).float(), hk.gather_tokens(x.float(), ids))


@pytest.mark.parametrize("dtype", HALF)
def test_losses_are_float32_and_computed_in_float32(gen, dtype):
    imgs = torch.randn(2, 3, 8, 12, generator=gen).to(dtype)
    ids = torch.randint(0, 6, (2, 4), generator=gen)
    pred = torch.randn(2, 4, 48, generator=gen).to(dtype).requires_grad_()
    loss, per_patch = hk.patch_mse_loss(pred, imgs, 4, ids)
    assert loss.dtype == per_patch.dtype == torch.float32
    want_loss, want_pp = hk.patch_mse_loss(pred.detach().float(), imgs.float(), 4, ids)
    assert torch.equal(per_patch, want_pp) and torch.equal(loss, want_loss)
    loss.backward()
    assert pred.grad.dtype == dtype

    s = torch.randn(2, 9, generator=gen).to(dtype).requires_grad_()
    target = torch.rand(2, 9, generator=gen)  # float32 per-patch losses beside half predictions
    r = hk.pairwise_ranking_loss(s, target)
    assert r.dtype == torch.float32
    assert torch.equal(r, hk.pairwise_ranking_loss(s.detach().float(), target))
    r.backward()
    assert s.grad.dtype == dtype


@pytest.mark.parametrize("dtype", HALF)
def test_scatter_backward_accumulates_in_float32(gen, dtype):
    # 64 copies of one token: adding them one by one in half precision would round off.
    x = torch.randn(1, 3, 4, generator=gen).to(dtype).requires_grad_()
    ids = torch.zeros(8, 8, dtype=torch.int64)
    grad = torch.rand(8, 8, 4, generator=gen).to(dtype)
    hk.gather_tokens(x, ids).backward(grad)
    want = grad.double().sum((0, 1)).to(dtype)
    assert torch.equal(x.grad[0, 0], want)
    imgs = torch.randn(8, 1, 4, 4, generator=gen).to(dtype).requires_grad_()
    g = torch.rand(8, 8, 16, generator=gen).to(dtype)
    hk.patchify(imgs, 4, ids[:, :8]).backward(g)
    assert torch.equal(imgs.grad.reshape(8, 16), g.double().sum(1).to(dtype))


def test_select_patches_accepts_half_scores(gen):
    scores = torch.randn(3, 20, generator=gen)
    noise = torch.rand(3, 20, generator=gen)
    # bf16 rounding can create ties, so compare against the float64 run of the rounded values.
    got = hk.select_patches(scores.to(torch.bfloat16), noise.to(torch.float16), 0.75, 0.5)
    want = hk.select_patches(scores.to(torch.bfloat16).double(), noise.to(torch.float16).double(), 0.75, 0.5)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_outputs_never_alias_inputs(gen):
    # p = H = W with C = 1 is the case where a reshape could return a view of the input.
    imgs = torch.randn(2, 1, 4, 4, generator=gen)
    assert not _shares_memory(hk.patchify(imgs, 4), imgs)
    patches = torch.randn(2, 1, 16, generator=gen)
    assert not _shares_memory(hk.unpatchify(patches, 4, 4, 4), patches)
    x = torch.randn(2, 5, 3, generator=gen)
    ids = torch.arange(5).expand(2, 5).contiguous()
    assert not _shares_memory(hk.gather_tokens(x, ids), x)
