"""No host sync in the ops by default, and kernels on the inputs' device.

CPU: the index / box checks raise clear errors on CPU tensors and, on other devices, assert on the
device instead of reading the data; every Triton launcher runs in its inputs' device context.
GPU (benchmarks/gpu_check.sh runs this file): a whole HPM training step under
``torch.cuda.set_sync_debug_mode("error")``, and the ops on the highest-numbered visible GPU.
"""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import _validation as v
from hpm_kernels.triton_kernels import _common
from tests.triton_utils import ON_GPU, requires_triton


def test_out_of_range_ids_on_cpu_name_the_argument_and_the_value():
    x = torch.randn(2, 4, 3)
    with pytest.raises(IndexError, match=r"`ids` must hold indices in \[0, 4\), found 7"):
        hk.gather_tokens(x, torch.tensor([[0, 7], [1, 2]]))
    with pytest.raises(IndexError, match=r"`ids` must hold indices in \[0, 4\), found -1"):
        hk.patchify(torch.randn(2, 1, 4, 4), 2, torch.tensor([[0, -1], [1, 2]]))


def test_off_cpu_the_checks_assert_on_the_device_without_reading(monkeypatch):
    """On a non-CPU tensor (here the meta device, whose data cannot be read at all) the checks
    hand a 0-d device tensor to assert_on_device and never call bool() on the data."""
    seen = []
    monkeypatch.setattr(v, "assert_on_device", lambda ok, msg: seen.append((ok.device.type, ok.shape, msg)))
    v.check_index_range("ids", torch.empty(3, 5, dtype=torch.int64, device="meta"), 10)
    v.check_box_range("boxes", torch.empty(3, 4, dtype=torch.int64, device="meta"), 8, 8)
    assert seen == [
        ("meta", torch.Size([]), "`ids` must hold indices in [0, 10)"),
        ("meta", torch.Size([]), "`boxes` rows (top, left, height, width) must be boxes inside the 8 x 8 image"),
    ]


def test_assert_on_device_fails_with_the_message():
    v.assert_on_device(torch.tensor(True), "fine")
    with pytest.raises(RuntimeError, match="`ids` must hold"):
        v.assert_on_device(torch.tensor(False), "`ids` must hold indices in [0, 3)")


@requires_triton
def test_every_triton_launcher_runs_in_its_inputs_device_context(monkeypatch):
    entered = []
    real = _common.device_context

    def recording(device):
        entered.append(device)
        return real(device)

    monkeypatch.setattr(_common, "device_context", recording)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    with hk.backend("triton"):
        sel = hk.select_patches(torch.randn(2, 4, generator=g), torch.rand(2, 4, generator=g), 0.5, 0.5)
        patches = hk.patchify(imgs, 4, sel.ids_keep)
        tokens = hk.gather_tokens(torch.randn(1, 4, 5, generator=g, requires_grad=True), sel.ids_mask)
        loss, per_patch = hk.patch_mse_loss(torch.randn(2, 2, 48, generator=g, requires_grad=True), imgs, 4, sel.ids_mask)
        rank = hk.pairwise_ranking_loss(per_patch.detach().requires_grad_(), torch.rand(2, 2, generator=g))
        (patches.sum() + tokens.sum() + loss + rank).backward()
        hk.unpatchify(hk.patchify(imgs.detach(), 4), 4, 8, 8)
    assert len(entered) >= 10 and all(d == torch.device("cpu") for d in entered)


# -- on a GPU ---------------------------------------------------------------------------------------
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")


@needs_gpu
def test_a_full_hpm_training_step_makes_no_host_sync():
    """The trainer's step (teacher hardness, select_patches, student, both losses, backward, AdamW,
    EMA) with every op on its CUDA default: zero device-to-host syncs."""
    from hpm_pretrain.model import param_groups
    from hpm_pretrain.train import PretrainConfig, build_model, ema_update, forward_step

    cfg = PretrainConfig(data="fashion-mnist", img_size=32, in_chans=1, patch_size=4, preset="micro", norm_pix=True)
    torch.manual_seed(0)
    model = build_model(cfg).cuda()
    teacher = build_model(cfg).cuda().requires_grad_(False)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    imgs = torch.randn(16, 1, 32, 32, device="cuda")
    for i in range(2):  # the first step warms up (allocations, Triton compiles)
        noise = torch.rand(16, 64, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if i else "default")
        try:
            out = forward_step(model, teacher, imgs, noise, cfg, hard_ratio=0.5)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()
            ema_update(teacher, model, 0.999)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(out.loss).item()


@needs_gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs: the ops on the last one, device 0 current")
def test_ops_run_on_the_highest_numbered_gpu_without_set_device():
    dev = torch.device("cuda", torch.cuda.device_count() - 1)
    assert torch.cuda.current_device() == 0
    g = torch.Generator(device=dev).manual_seed(0)
    imgs = torch.randn(4, 3, 16, 16, device=dev, generator=g)
    sel = hk.select_patches(torch.randn(4, 16, device=dev, generator=g), torch.rand(4, 16, device=dev, generator=g), 0.75, 0.5)
    for backend in ("triton", "cuda", "reference"):
        patches = hk.patchify(imgs, 4, sel.ids_keep, backend=backend)
        assert patches.device == dev
        torch.testing.assert_close(patches.cpu(), hk.patchify(imgs.cpu(), 4, sel.ids_keep.cpu(), backend="reference"))
    torch.cuda.synchronize(dev)


@needs_gpu
def test_deterministic_mode_on_cuda_picks_a_deterministic_backward():
    """Under torch.use_deterministic_algorithms(True), "auto" skips the atomic backward of triton and
    cuda; the gradients of repeated runs are then bitwise equal."""
    from hpm_kernels import backends

    g = torch.Generator(device="cuda").manual_seed(0)
    imgs = torch.randn(64, 3, 64, 64, device="cuda", generator=g, requires_grad=True)
    ids = torch.randint(0, 16, (64, 200), device="cuda", generator=g)  # many repeats: many colliding adds
    x = torch.randn(1, 16, 256, device="cuda", generator=g, requires_grad=True)
    torch.use_deterministic_algorithms(True)
    try:
        assert backends.resolve("patchify", None, imgs.device, [imgs.dtype], 16) not in ("triton", "cuda")
        grads = []
        for _ in range(3):
            imgs.grad = x.grad = None
            (hk.patchify(imgs, 16, ids) * 1.37).sum().backward()
            hk.gather_tokens(x, ids).square().sum().backward()
            grads.append((imgs.grad.clone(), x.grad.clone()))
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a[0], grads[0][0]) and torch.equal(a[1], grads[0][1]) for a in grads)
