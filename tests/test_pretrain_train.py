"""The reference trainer: fused vs reference ops, exact resume, NaN stop, DDP, schedules."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpm_pretrain import schedule, train
from hpm_pretrain.checkpoint import CHECKPOINT


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """48 grey images with structure (gradients and blobs), not noise, of mixed sizes."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(48):
        h, w = (40, 40) if i % 3 else (36, 44)
        yy, xx = np.mgrid[0:h, 0:w]
        img = 128 + 60 * np.sin(xx / (3 + i % 5)) + 40 * np.cos(yy / (2 + i % 7)) + rng.normal(0, 10, (h, w))
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / f"img{i:03d}.png")
    return root


def _cfg(folder: Path, out: Path, **kw) -> train.PretrainConfig:
    base = dict(
        out_dir=str(out),
        data="folder",
        data_path=str(folder),
        img_size=16,
        img_width=24,
        in_chans=1,
        preset="micro",
        patch_size=4,
        epochs=3,
        batch_size=8,
        warmup_epochs=1,
        lr=1e-3,
        num_workers=0,
        log_every=1,
        progress=False,
    )
    return train.PretrainConfig(**{**base, **kw})


def _losses(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_fused_and_reference_ops_give_the_same_loss_curve(image_folder, tmp_path):
    # 50 optimizer steps from one seed, fp32 on CPU. The two paths differ only in rounding
    # (custom-op backward formulas vs autograd through the reference), so the curves agree to
    # 1e-4 relative; a wrong gradient would move them apart by orders of magnitude more.
    runs = {}
    for ops in ("fused", "reference"):
        train.pretrain(_cfg(image_folder, tmp_path / ops, ops=ops, epochs=13, stop_after=50))
        runs[ops] = _losses(tmp_path / ops)
    assert len(runs["fused"]) == len(runs["reference"]) == 50
    for a, b in zip(runs["fused"], runs["reference"]):
        for key in ("loss", "loss_rec", "loss_pred"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4), (a["step"], key, a[key], b[key])
    assert runs["fused"][-1]["loss_rec"] < runs["fused"][0]["loss_rec"]  # it learns


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_the_same_run(image_folder, tmp_path, num_workers):
    whole = tmp_path / "whole"
    train.pretrain(_cfg(image_folder, whole, num_workers=num_workers))
    parts = tmp_path / "parts"
    train.pretrain(_cfg(image_folder, parts, num_workers=num_workers, stop_after=7))  # mid-epoch (4 steps/epoch)
    assert len(_losses(parts)) == 7
    train.pretrain(_cfg(image_folder, parts, num_workers=num_workers, resume=True))
    a, b = _losses(whole), _losses(parts)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        rb = {k: v for k, v in rb.items() if k != "images_per_s"}
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == rb
    sa = torch.load(whole / CHECKPOINT, weights_only=False)
    sb = torch.load(parts / CHECKPOINT, weights_only=False)
    for k in sa["teacher"]:
        assert torch.equal(sa["teacher"][k], sb["teacher"][k]), k


def test_resume_refuses_a_different_run(image_folder, tmp_path):
    train.pretrain(_cfg(image_folder, tmp_path, stop_after=2))
    with pytest.raises(ValueError, match="mask_ratio"):
        train.pretrain(_cfg(image_folder, tmp_path, resume=True, mask_ratio=0.5))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train.pretrain(_cfg(image_folder, tmp_path / "empty", resume=True))


def _poison_second_step(monkeypatch, value: float) -> None:
    """forward_step's loss times ``value`` (nan, inf) at its second call."""
    real = train.forward_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * value
        return out

    monkeypatch.setattr(train, "forward_step", poisoned)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
    train.pretrain(_cfg(image_folder, tmp_path, stop_after=3))
    before = (tmp_path / CHECKPOINT).read_bytes()
    _poison_second_step(monkeypatch, float("nan"))
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train.pretrain(_cfg(image_folder, tmp_path, resume=True, ckpt_every=1))
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["position"]["opt_step"] == 4  # the good step after resuming was saved, the NaN one not
    assert (tmp_path / CHECKPOINT).read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("method", ["mae", "lossonly"])
def test_other_methods_run(image_folder, tmp_path, method):
    summary = train.pretrain(_cfg(image_folder, tmp_path, method=method, stop_after=3))
    last = summary["last"]
    assert last["hard_ratio"] == 0.0
    assert (last["loss_pred"] is None) == (method == "mae")
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["teacher"] is None


def test_absolute_prediction_loss_and_accumulation(image_folder, tmp_path):
    summary = train.pretrain(_cfg(image_folder, tmp_path, pred_loss="absolute", accum_steps=2, stop_after=3, clip_grad=1.0))
    assert math.isfinite(summary["last"]["loss"])


def test_two_process_ddp_on_cpu(image_folder, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", "-m", "hpm_pretrain"]
    args = ["pretrain", "--out-dir", str(tmp_path), "--data", "folder", "--data-path", str(image_folder), "--img-size", "16"]
    args += ["--in-chans", "1", "--preset", "micro", "--patch-size", "4", "--epochs", "2", "--batch-size", "4"]
    args += ["--num-workers", "0", "--log-every", "1", "--no-progress", "--lr", "1e-3", "--warmup-epochs", "1"]
    run = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]
    rows = _losses(tmp_path)
    # 38 training images (the 80% split of 48) / (4 x 2) = 4 steps per epoch
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) for r in rows)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert len(state["rng"]) == 2 and state["position"] == {"epoch": 2, "batch": 0, "opt_step": 8}


def test_schedules_follow_the_official_recipe():
    assert schedule.base_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert schedule.learning_rate(1.0, 0.0, 0.5, 1.0, 10) == pytest.approx(0.5)  # warm-up
    assert schedule.learning_rate(1.0, 0.0, 10.0, 1.0, 10) == pytest.approx(0.0)  # end of cosine
    assert schedule.hard_ratio("hpm", 0, 200, 0.5) == pytest.approx(0.0025)
    assert schedule.hard_ratio("hpm", 199, 200, 0.5) == pytest.approx(0.5)
    assert schedule.hard_ratio("mae", 199, 200, 0.5) == 0.0
    assert schedule.ema_decay(0) == pytest.approx(0.999)
    assert schedule.ema_decay(50) == pytest.approx(0.99945)
    assert schedule.ema_decay(100) == schedule.ema_decay(400) == pytest.approx(0.9999)


def test_weight_decay_groups():
    from hpm_pretrain.model import HPMViT, model_config, param_groups

    model = HPMViT(model_config("micro", img_size=(16, 16), patch_size=4, in_chans=1))
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.ndim == 2 for p in decay["params"])
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "mask_token", "norm.weight", "patch_embed.bias"} <= skipped


def test_config_fields_are_all_in_the_cli():
    from hpm_pretrain.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["pretrain", "--method", "mae", "--no-norm-pix"])
    cfg = train.PretrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(train.PretrainConfig)})
    assert cfg.method == "mae" and cfg.norm_pix is False and cfg.hard_ratio_max == 0.5


@pytest.mark.parametrize("command", ["pretrain", "visualize", "eval", "export"])
def test_every_subcommand_has_help(command, capsys):
    from hpm_pretrain.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0 and "usage: hpm-pretrain " + command in capsys.readouterr().out


def test_module_entry_point_runs():
    run = subprocess.run([sys.executable, "-m", "hpm_pretrain", "--help"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "{pretrain,visualize,eval,export}" in run.stdout, run.stderr


# -- batched augmentation, predictor depth 0, compile, no per-step host read -------------------
@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST-format IDX files: 48 training images 20x20 with structure, 10 test images."""
    from tests.test_pretrain_data import _fake_fmnist

    root = tmp_path_factory.mktemp("fmnist")
    _fake_fmnist(root, gz=False, n_train=48, n_test=10, size=20)
    return root


def _fm_cfg(root: Path, out: Path, **kw) -> train.PretrainConfig:
    return _cfg(root, out, **{"data": "fashion-mnist", "img_size": 24, "img_width": None, **kw})


def test_in_memory_datasets_take_the_batched_augmentation(fmnist_dir, image_folder, tmp_path):
    cfg = _fm_cfg(fmnist_dir, tmp_path)
    ds = train.build_dataset(train.train_data_config(cfg))
    pipe = train.data_pipeline(cfg, ds, torch.device("cpu"))
    assert isinstance(pipe, train.BatchedAugmentation) and pipe.images.shape == (48, 1, 20, 20)
    assert train.data_pipeline(dataclasses.replace(cfg, augmentation="per-item"), ds, torch.device("cpu")) is None
    small = dataclasses.replace(cfg, img_size=16)  # 20 px images downscaled: auto keeps PIL's antialiased path
    assert train.data_pipeline(small, ds, torch.device("cpu")) is None
    assert isinstance(
        train.data_pipeline(dataclasses.replace(small, augmentation="batched"), ds, torch.device("cpu")),
        train.BatchedAugmentation,
    )
    folder = _cfg(image_folder, tmp_path)  # mixed sizes: per-item, and "batched" says why it cannot
    fds = train.build_dataset(train.train_data_config(folder))
    assert train.data_pipeline(folder, fds, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="--augmentation batched needs"):
        train.data_pipeline(dataclasses.replace(folder, augmentation="batched"), fds, torch.device("cpu"))
    # One batch: normalised crops of the right shape, the same for an image whatever the batch.
    sampler = train.EpochOrder(len(ds), 8, cfg.seed, 0, 0, 0, 1)
    imgs, skipped = next(pipe.epoch(sampler))
    assert imgs.shape == (8, 1, 24, 24) and imgs.dtype == torch.float32 and skipped == 0
    first = sampler.batch_indices()[0]
    again = hk_random_resized_crop(pipe, first[2:3], cfg.seed)
    assert torch.equal(again[0], imgs[2])


def hk_random_resized_crop(pipe, index, seed):
    import hpm_kernels as hk

    return hk.random_resized_crop(pipe.images, index, seed, 0, pipe.size, pipe.mean, pipe.std)


@pytest.mark.parametrize("method", ["hpm", "lossonly"])
def test_batched_augmentation_and_depth0_resume_exactly(fmnist_dir, tmp_path, method):
    # 48 training images / batch 16 = 3 steps per epoch; stop mid-epoch, resume, same curve.
    kw = dict(method=method, predictor_depth=0, epochs=2, batch_size=16)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train.pretrain(_fm_cfg(fmnist_dir, whole, **kw))
    train.pretrain(_fm_cfg(fmnist_dir, parts, stop_after=2, **kw))
    train.pretrain(_fm_cfg(fmnist_dir, parts, resume=True, **kw))
    a = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _losses(whole)]
    b = [{k: v for k, v in r.items() if k != "images_per_s"} for r in _losses(parts)]
    assert len(a) == 6 and a == b
    assert all(r["loss_pred"] is not None and math.isfinite(r["loss"]) for r in a)


def test_predictor_depth_zero_is_a_head_on_the_reconstruction_decoder():
    from hpm_pretrain.model import HPMViT, model_config
    from hpm_pretrain.ops import make_ops

    torch.manual_seed(0)
    model = HPMViT(model_config("micro", img_size=(16, 16), patch_size=4, in_chans=1, predictor_depth=0))
    assert model.predictor_depth == 0 and len(model.predictor_blocks) == 0
    imgs = torch.randn(3, 1, 16, 16)
    sel = make_ops("fused").select_patches(torch.rand(3, 16), torch.rand(3, 16), 0.75, 0.0)
    pixels, scores = model(imgs, sel)
    assert pixels.shape == (3, 12, 16) and scores.shape == (3, 12)
    scores.sum().backward()  # the ranking loss trains the shared reconstruction decoder
    assert model.decoder_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    hidden = model.decode(model.decoder_input(model.encode(imgs), None, None))
    expected = model.predictor_head(model.predictor_norm(hidden[:, 1:])).mean(-1)
    torch.testing.assert_close(model.hardness(imgs), expected)
    with pytest.raises(ValueError, match="`predictor_depth` must be >= 0"):
        model_config("micro", predictor_depth=-1)


def test_nan_is_caught_at_the_next_checkpoint_without_a_per_step_read(image_folder, tmp_path, monkeypatch):
    # log_every is large: the loss is never read on the host per step, yet the NaN of step 2
    # stops the run at the step-2 checkpoint, which is therefore never written.
    _poison_second_step(monkeypatch, float("inf"))
    with pytest.raises(FloatingPointError, match=r"loss is (inf|nan) at epoch 0, batch 1 \(found by optimizer step 2\)"):
        train.pretrain(_cfg(image_folder, tmp_path, ckpt_every=1, log_every=1000))
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["position"]["opt_step"] == 1


def test_compile_traces_one_graph_and_gives_the_eager_losses(image_folder, tmp_path, monkeypatch):
    # fullgraph=True: a graph break fails. aot_eager traces exactly what inductor would compile
    # (Dynamo, fake kernels, AOT autograd) without its C++ code generation, which takes minutes
    # on 2 cores; inductor's own speed and first-step time are measured in benchmarks/.
    import functools

    monkeypatch.setattr(train, "compile_models", functools.partial(train.compile_models, backend="aot_eager", fullgraph=True))
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train.pretrain(_cfg(image_folder, eager, stop_after=3))
    train.pretrain(_cfg(image_folder, compiled, stop_after=3, compile=True))
    for a, b in zip(_losses(eager), _losses(compiled), strict=True):
        assert math.isclose(a["loss"], b["loss"], rel_tol=1e-4), (a, b)
