"""Gradients: gradcheck in float64, plus the backward against autograd through plain PyTorch."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import hpm_kernels as hk


def _f64(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("with_ids", [False, True])
def test_patchify_gradcheck(gen, with_ids):
    imgs = _f64(gen, 2, 3, 6, 9).requires_grad_()
    ids = torch.randint(0, 6, (2, 8), generator=gen) if with_ids else None  # repeats: gradients add
    assert gradcheck(lambda x: hk.patchify(x, 3, ids), (imgs,))


def test_unpatchify_gradcheck(gen):
    patches = _f64(gen, 2, 6, 27).requires_grad_()
    assert gradcheck(lambda x: hk.unpatchify(x, 3, 6, 9), (patches,))


@pytest.mark.parametrize("x_batch", [2, 1])
def test_gather_tokens_gradcheck(gen, x_batch):
    x = _f64(gen, x_batch, 7, 4).requires_grad_()
    ids = torch.randint(0, 7, (2, 9), generator=gen)
    assert gradcheck(lambda t: hk.gather_tokens(t, ids), (x,))


@pytest.mark.parametrize("norm_pix", [True, False])
def test_patch_mse_loss_gradcheck(gen, norm_pix):
    imgs = _f64(gen, 2, 2, 4, 6)
    ids = torch.randint(0, 6, (2, 4), generator=gen)
    pred = _f64(gen, 2, 4, 8).requires_grad_()
    # Both outputs feed the check, so the per_patch gradient path is exercised too.
    assert gradcheck(lambda y: hk.patch_mse_loss(y, imgs, 2, ids, norm_pix), (pred,))


def test_ranking_loss_gradcheck(gen):
    pred = _f64(gen, 3, 9).requires_grad_()
    target = torch.rand(3, 9, generator=gen, dtype=torch.float64)
    target[:, 4] = target[:, 2]
    assert gradcheck(lambda s: hk.pairwise_ranking_loss(s, target), (pred,))


def test_patch_mse_loss_backward_matches_plain_autograd(gen):
    N, C, H, W, p = 2, 3, 8, 12, 4
    imgs = _f64(gen, N, C, H, W)
    ids = torch.randint(0, 6, (N, 5), generator=gen)
    pred = _f64(gen, N, 5, p * p * C).requires_grad_()
    w = torch.rand(N, 5, generator=gen, dtype=torch.float64)
    loss, per_patch = hk.patch_mse_loss(pred, imgs, p, ids)
    (got,) = torch.autograd.grad(loss + (w * per_patch).sum(), pred)

    target = hk.patchify(imgs, p, ids)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    plain = (pred - target).square().mean(-1)
    (want,) = torch.autograd.grad(plain.mean() + (w * plain).sum(), pred)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_ranking_loss_backward_matches_plain_autograd(gen):
    pred = _f64(gen, 2, 11).requires_grad_()
    target = torch.rand(2, 11, generator=gen, dtype=torch.float64)
    target[:, 3] = target[:, 7]
    (got,) = torch.autograd.grad(hk.pairwise_ranking_loss(pred, target), pred)

    d = pred.unsqueeze(1) - pred.unsqueeze(2)  # d[n, i, j] = s_j - s_i
    up = target.unsqueeze(1) > target.unsqueeze(2)
    down = target.unsqueeze(1) < target.unsqueeze(2)
    sig = torch.sigmoid(d)
    terms = -torch.log(sig + 1e-6) * up - torch.log(1 - sig + 1e-6) * down
    (want,) = torch.autograd.grad(terms.sum() / (up.sum() + down.sum()), pred)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)


def test_losses_give_no_gradient_to_their_targets(gen):
    imgs = _f64(gen, 1, 1, 4, 4).requires_grad_()
    pred = _f64(gen, 1, 2, 4).requires_grad_()
    loss, _ = hk.patch_mse_loss(pred, imgs, 2, torch.tensor([[0, 3]]))
    loss.backward()
    assert imgs.grad is None and pred.grad is not None
    target = torch.rand(1, 5, dtype=torch.float64, requires_grad=True)
    hk.pairwise_ranking_loss(_f64(gen, 1, 5).requires_grad_(), target).backward()
    assert target.grad is None
