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


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path, monkeypatch):
    train.pretrain(_cfg(image_folder, tmp_path, stop_after=3))
    before = (tmp_path / CHECKPOINT).read_bytes()
    real = train.forward_step
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train, "forward_step", poisoned)
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
