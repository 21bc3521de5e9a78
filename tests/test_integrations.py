"""``hpm_kernels.integrations.patch_mae`` on models written to the MAE and official-HPM contracts
(tests/mae_interface_models.py): same masks, losses and gradients as unpatched (MAE), the
documented mask distribution (HPM), bit-identical after ``unpatch_mae``, clear errors and reports."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import hpm_kernels as hk
from hpm_kernels.integrations import full_selection, patch_mae, patch_report, unpatch_mae, use_selection
from tests.mae_interface_models import TinyHPM, TinyMAE, hpm_step

RTOL, ATOL = 1e-5, 1e-6  # float32: the patched encoder sums attention in another token order


def _imgs(n=3, c=3, size=16, seed=0):
    return torch.randn(n, c, size, size, generator=torch.Generator().manual_seed(seed))


def _mae_run(model, imgs, seed=7):
    torch.manual_seed(seed)
    model.zero_grad()
    loss, pred, mask = model(imgs)
    loss.backward()
    return loss.detach(), pred.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm_pix", [False, True])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_patched_mae_gives_the_same_masks_loss_and_gradients(norm_pix, backend):
    torch.manual_seed(0)
    model = TinyMAE(norm_pix_loss=norm_pix)
    imgs = _imgs()
    want = _mae_run(model, imgs)
    patch_mae(model, backend=backend)
    got = _mae_run(model, imgs)
    assert torch.equal(got[2], want[2])  # the same mask from the same torch.rand draw
    torch.testing.assert_close(got[0], want[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    assert got[3].keys() == want[3].keys() and "patch_embed.proj.weight" in got[3]
    for name in want[3]:
        torch.testing.assert_close(got[3][name], want[3][name], rtol=1e-4, atol=1e-6, msg=name)


def test_patched_mae_methods_match_one_by_one():
    torch.manual_seed(0)
    model, patched = TinyMAE(in_chans=2), None
    patched = patch_mae(copy.deepcopy(model))
    imgs = _imgs(c=2)
    torch.testing.assert_close(patched.patchify(imgs), model.patchify(imgs), rtol=0, atol=0)
    x = torch.randn(3, 16, 32)
    assert torch.equal(patched.unpatchify(model.patchify(imgs)), imgs)
    torch.manual_seed(3)
    xm_want, mask_want, restore_want = model.random_masking(x, 0.75)
    torch.manual_seed(3)
    xm, mask, restore = patched.random_masking(x, 0.75)
    assert torch.equal(mask, mask_want)
    # the same visible set, now in raster order; ids_restore agrees with that order
    keep = mask_want == 0
    assert torch.equal(xm, x[keep].reshape(3, -1, 32))
    assert sorted(xm_want[0].sum(-1).tolist()) == sorted(xm[0].sum(-1).tolist())
    tokens = torch.cat([xm, torch.zeros(3, 12, 32)], 1)
    unshuffled = torch.gather(tokens, 1, restore.unsqueeze(-1).expand(-1, -1, 32))
    assert torch.equal(unshuffled[keep], x[keep]) and not restore_want.equal(restore)


def test_unpatch_restores_bit_identical_behaviour():
    torch.manual_seed(0)
    model = TinyMAE(norm_pix_loss=True)
    imgs = _imgs()
    want = _mae_run(model, imgs)
    patch_mae(model)
    assert patch_report(model).interface == "mae" and "forward_encoder" in model.__dict__
    unpatch_mae(model)
    assert patch_report(model) is None and not any(k in model.__dict__ for k in ("patchify", "forward_encoder", "forward_loss"))
    got = _mae_run(model, imgs)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert all(torch.equal(got[3][n], want[3][n]) for n in want[3])
    with pytest.raises(ValueError, match="not patched"):
        unpatch_mae(model)


def test_patching_twice_repatches_with_the_new_backend():
    model = patch_mae(TinyMAE())
    patch_mae(model, backend="reference")
    assert patch_report(model).backend == "reference"
    assert unpatch_mae(model) is model and "patchify" not in model.__dict__


# -- the official HPM interface ---------------------------------------------------------------------
def _hpm_pair(**kw):
    torch.manual_seed(0)
    model = TinyHPM(**kw)
    return model, copy.deepcopy(model)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_patched_hpm_forward_losses_and_gradients(norm_pix):
    model, _ = _hpm_pair(norm_pix_loss=norm_pix)
    imgs = _imgs()
    torch.manual_seed(1)
    loss_pred = torch.randn(3, 16)
    mask = model.generate_mask(loss_pred, 0.75, epoch=3, total_epoch=4).to(torch.bool)
    results = []
    for patched in (False, True):
        if patched:
            patch_mae(model)
        model.zero_grad()
        outs = model(imgs, mask)
        M = outs["mask_num"]
        losses = model.forward_loss(imgs, outs["pix_pred"][:, -M:], outs["mask"])
        for relative in (True, False):
            learn = model.forward_learning_loss(outs["loss_pred"][:, -M:], mask, losses["matrix"].detach(), relative)
            results.append(learn.detach())
        (losses["mean"] + results[-2]).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results += [outs["pix_pred"].detach(), outs["loss_pred"].detach(), losses["mean"].detach(), losses["matrix"].detach()]
        results.append(grads)
    half = len(results) // 2
    want, got = results[:half], results[half:]
    for a, b in zip(got[:-1], want[:-1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert got[-1].keys() == want[-1].keys()
    for name in want[-1]:
        torch.testing.assert_close(got[-1][name], want[-1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert set(patch_report(model).patched) >= {"forward_encoder", "forward_decoder", "generate_mask", "forward_learning_loss"}


def test_patched_hpm_training_step_matches_given_the_same_mask():
    model, teacher = _hpm_pair()
    imgs = _imgs(n=4)
    np_state = __import__("numpy").random.get_state()
    torch.manual_seed(5)
    want, mask = hpm_step(model, teacher, imgs)
    patch_mae(model)  # the student only: the teacher's generate_mask stays the official loop
    __import__("numpy").random.set_state(np_state)
    torch.manual_seed(5)
    got, mask2 = hpm_step(model, teacher, imgs)
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=ATOL)


def test_patched_generate_mask_distribution():
    """Hardest int(M r) patches always masked, M masked in all, the rest of the masked set uniform
    over the other patches (the official loop's distribution), no host sync needed."""
    model = patch_mae(TinyHPM())
    N, L, draws = 64, 16, 200
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(N, L, generator=g)
    num_mask = L - int(L * 0.25)
    for epoch, total in ((3, 4), (0, 4)):
        num_hard = int(num_mask * 0.5 * (epoch + 1) / total)
        top = scores.topk(num_hard, dim=1).indices if num_hard else torch.zeros(N, 0, dtype=torch.int64)
        counts = torch.zeros(N, L)
        for _ in range(draws):
            mask = model.generate_mask(scores, 0.75, epoch=epoch, total_epoch=total)
            assert mask.dtype == torch.float32 and (mask.sum(1) == num_mask).all()
            assert (mask.gather(1, top) == 1).all()
            counts += mask
        rest = torch.ones(N, L, dtype=torch.bool).scatter(1, top, False)
        freq = counts[rest] / draws
        p = (num_mask - num_hard) / (L - num_hard)
        assert abs(float(freq.mean()) - p) < 0.01
        z = (freq - p) / (p * (1 - p) / draws) ** 0.5  # each ~N(0, 1) if uniform
        assert float(z.abs().max()) < 5 and abs(float(z.square().mean()) - 1) < 0.25
    assert model.generate_mask(scores, 0.75, guide=False).sum(1).eq(num_mask).all()


def test_vis_mask_ratio_and_other_loss_targets_are_left_alone_and_reported():
    model = TinyHPM(vis_mask_ratio=0.1)
    with pytest.warns(UserWarning) as caught:
        patch_mae(model)
    assert any("forward_encoder left alone: vis_mask_ratio = 0.1" in str(w.message) for w in caught)
    report = patch_report(model)
    assert "forward_encoder" not in report.patched and "forward_encoder" in report.left_alone
    assert "forward_encoder" not in model.__dict__ and "generate_mask" in model.__dict__
    assert "left alone: forward_encoder" in str(report)

    class FeatureTarget(TinyMAE):
        def forward_loss(self, pred, target_features, mask):
            return ((pred - target_features) ** 2).mean()

    model = FeatureTarget()
    with pytest.warns(UserWarning, match="forward_loss left alone"):
        patch_mae(model)
    assert "forward_loss" not in model.__dict__ and "forward_encoder" in model.__dict__


def test_bad_models_get_clear_errors():
    class NoPatchEmbed(nn.Module):
        def random_masking(self, x, r):
            return x

    with pytest.raises(ValueError, match="no `patch_embed`"):
        patch_mae(NoPatchEmbed())
    model = TinyMAE()
    model.patch_embed.proj = nn.Conv2d(3, 32, kernel_size=(4, 2), stride=(4, 2))
    with pytest.raises(ValueError, match=r"square p x p patches.*kernel_size=\(4, 2\)"):
        patch_mae(model)
    model = TinyMAE()
    model.patch_embed.proj = nn.Conv2d(3, 32, kernel_size=4, stride=2)
    with pytest.raises(ValueError, match="kernel_size == stride"):
        patch_mae(model)
    plain = TinyHPM()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        patch_mae(plain)  # the full interface: nothing left alone, no warning


def test_unequal_mask_rows_fail_on_the_device_check():
    model = patch_mae(TinyHPM())
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :12] = True
    mask[1, :11] = True
    with pytest.raises(RuntimeError, match="as many patches"):
        model.forward_encoder(_imgs(n=2), mask)


# -- nn modules -------------------------------------------------------------------------------------
def test_nn_modules_are_the_ops():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, 3, 8, 8, generator=g)
    sel = hk.nn.HardPatchSelector(0.75)(torch.randn(2, 4, generator=g), hard_ratio=0.5, generator=g)
    assert sel.ids_mask.shape == (2, 3) and sel.mask.sum() == 6
    pred = torch.randn(2, 3, 48, generator=g)
    loss, per_patch = hk.nn.PatchMSELoss(4, norm_pix=True)(pred, imgs, sel.ids_mask)
    want, want_pp = hk.patch_mse_loss(pred, imgs, 4, sel.ids_mask, True)
    assert torch.equal(loss, want) and torch.equal(per_patch, want_pp)
    rank = hk.nn.PairwiseRankingLoss()(per_patch, torch.rand(2, 3, generator=g))
    assert rank.ndim == 0 and rank > 0
    selector = hk.nn.HardPatchSelector(hard_ratio_max=0.5)
    assert [selector.hard_ratio(e, 4) for e in range(4)] == [0.125, 0.25, 0.375, 0.5]
    assert selector.counts(196, 0.5) == (49, 73)
    with pytest.raises(ValueError, match="epoch"):
        selector.hard_ratio(4, 4)
    with pytest.raises(ValueError, match="mask_ratio"):
        hk.nn.HardPatchSelector(1.0)


def test_use_selection_makes_an_mae_model_mask_with_hpm_masks():
    torch.manual_seed(0)
    model = patch_mae(TinyMAE())
    imgs = _imgs(n=2)
    sel = hk.select_patches(torch.randn(2, 16), torch.rand(2, 16), 0.75, 0.5)
    state = torch.random.get_rng_state()
    with use_selection(model, sel):
        loss, pred, mask = model(imgs, mask_ratio=0.5)  # the ratio is the selection's
    assert torch.equal(torch.random.get_rng_state(), state)  # no noise drawn
    assert torch.equal(mask.bool(), sel.mask) and pred.shape == (2, 16, 48)
    _, per_patch = hk.patch_mse_loss(hk.gather_tokens(pred, sel.ids_mask), imgs, 4, sel.ids_mask, False)
    torch.testing.assert_close(loss, per_patch.mean())
    with use_selection(model, full_selection(2, 16)):
        latent, mask, ids_restore = model.forward_encoder(imgs, 0.75)
    assert latent.shape == (2, 17, 32) and not mask.any() and torch.equal(ids_restore, torch.arange(16).expand(2, 16))
    with pytest.raises(ValueError, match="the batch has"), use_selection(model, sel):
        model(_imgs(n=3))
    with pytest.raises(ValueError, match="MAE-interface model patched"), use_selection(TinyMAE(), sel):
        pass
