"""Tests of hpm_pretrain.export: the encoder as safetensors that timm's VisionTransformer loads strictly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("safetensors")

from hpm_pretrain import checkpoint as ckpt
from hpm_pretrain import cli
from hpm_pretrain.export import encoder_state_dict, export, load_run, timm_encoder, timm_kwargs
from hpm_pretrain.model import HPMViT, model_config
from hpm_pretrain.train import PretrainConfig, pretrain

ROOT = Path(__file__).resolve().parents[1]


def _image_folder(root: Path, n: int, size_wh: tuple[int, int], mode: str) -> Path:
    root.mkdir(parents=True)
    shape = (size_wh[1], size_wh[0]) if mode == "L" else (size_wh[1], size_wh[0], 3)
    for k in range(n):
        arr = np.random.default_rng(k).integers(0, 256, size=shape, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{k}.png")
    return root


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory) -> Path:
    """A real 2-step HPM run (grey, 32 x 48, patch 4) on a synthetic image folder."""
    tmp = tmp_path_factory.mktemp("export_grey")
    folder = _image_folder(tmp / "img", 8, (56, 40), "L")
    cfg = PretrainConfig(
        out_dir=str(tmp / "run"),
        data="folder",
        data_path=str(folder),
        img_size=32,
        img_width=48,
        in_chans=1,
        preset="micro",
        patch_size=4,
        epochs=2,
        batch_size=4,
        warmup_epochs=1,
        lr=1e-3,
        stop_after=2,
        num_workers=0,
        progress=False,
    )
    pretrain(cfg)
    return tmp / "run"


@pytest.fixture(scope="module")
def rgb_checkpoint(tmp_path_factory) -> Path:
    """A hand-made checkpoint (random init, RGB 32 x 32, patch 8) with the layout train.py writes."""
    tmp = tmp_path_factory.mktemp("export_rgb")
    cfg = PretrainConfig(out_dir=str(tmp), data="folder", img_size=32, in_chans=3, preset="micro", patch_size=8, ops="reference")
    torch.manual_seed(1)
    student = HPMViT(model_config("micro", img_size=(32, 32), patch_size=8, in_chans=3), "reference")
    teacher = HPMViT(student.cfg, "reference")
    with torch.no_grad():  # non-trivial biases and norms, as after training
        for m in (student, teacher):
            for name, p in m.named_parameters():
                if name.endswith("bias") or "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
    state = dict(
        config=cfg.__dict__,
        model=student.state_dict(),
        teacher=teacher.state_dict(),
        optimizer={},
        position=dict(epoch=0, batch=0, opt_step=0),
        rng=[],
    )
    path = tmp / ckpt.CHECKPOINT
    ckpt.save_atomic(state, path)
    return path


def _compare(run_path: Path, out: Path, teacher: bool) -> None:
    run = load_run(run_path, ops="reference")
    model = run.teacher if teacher else run.model
    st, side = export(run_path, out, teacher=teacher)
    assert st.is_file() and side.is_file()
    meta = json.loads(side.read_text())
    assert meta["weights"] == ("teacher" if teacher else "student")
    assert meta["timm_kwargs"] == timm_kwargs(model.cfg)
    vit = timm_encoder(st)  # strict load inside
    from safetensors.torch import load_file

    missing, unexpected = vit.load_state_dict(load_file(str(st)), strict=False)
    assert missing == [] and unexpected == []
    H, W = model.cfg.img_size
    imgs = torch.randn(3, model.cfg.in_chans, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.encode(imgs)
        theirs = vit.forward_features(imgs)
    assert theirs.shape == ours.shape == (3, 1 + model.cfg.num_patches, model.cfg.embed_dim)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    # the class-token output of timm's head path (num_classes=0) is the same cls feature
    with torch.no_grad():
        torch.testing.assert_close(vit(imgs), ours[:, 0], atol=1e-5, rtol=1e-5)


def test_grey_non_square_student_matches_timm(grey_run, tmp_path):
    _compare(grey_run / ckpt.CHECKPOINT, tmp_path / "enc.safetensors", teacher=False)


def test_grey_non_square_teacher_matches_timm(grey_run, tmp_path):
    _compare(grey_run / ckpt.CHECKPOINT, tmp_path / "enc_t.safetensors", teacher=True)


def test_rgb_square_student_and_teacher_match_timm(rgb_checkpoint, tmp_path):
    _compare(rgb_checkpoint, tmp_path / "s.safetensors", teacher=False)
    _compare(rgb_checkpoint, tmp_path / "t.safetensors", teacher=True)
    s = timm_encoder(tmp_path / "s.safetensors").state_dict()
    t = timm_encoder(tmp_path / "t.safetensors").state_dict()
    assert not torch.equal(s["blocks.0.attn.qkv.weight"], t["blocks.0.attn.qkv.weight"])


def test_patch_weight_layout_is_timm_conv():
    """One-hot patch weights: the trainer's column (i*p + j)*C + c is timm's proj.weight[:, c, i, j]."""
    model = HPMViT(model_config("micro", img_size=(8, 12), patch_size=4, in_chans=3), "reference")
    sd = encoder_state_dict(model)
    w = model.patch_embed.weight.detach()
    p, C = 4, 3
    for i, j, c in [(0, 0, 0), (1, 2, 1), (3, 3, 2), (2, 0, 2)]:
        torch.testing.assert_close(sd["patch_embed.proj.weight"][:, c, i, j], w[:, (i * p + j) * C + c], rtol=0, atol=0)
    assert "pos_embed" in sd and sd["pos_embed"].shape == (1, 1 + 6, 96)
    assert not any(k.startswith(("decoder", "predictor", "mask_token")) for k in sd)


def test_default_output_paths_and_cli(grey_run, capsys):
    assert cli.main(["export", "--run-dir", str(grey_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["safetensors"] == str(grey_run / "encoder.safetensors")
    assert Path(printed["sidecar"]) == grey_run / "encoder.json"
    assert cli.main(["export", "--checkpoint", str(grey_run / ckpt.CHECKPOINT), "--teacher"]) == 0
    assert (grey_run / "encoder_teacher.safetensors").is_file()
    # without the sidecar, the safetensors header alone is enough
    (grey_run / "encoder.json").unlink()
    timm_encoder(grey_run / "encoder.safetensors")


def test_teacher_missing_is_a_clear_error(tmp_path, capsys):
    cfg = PretrainConfig(data="folder", img_size=16, in_chans=1, preset="micro", patch_size=4, method="mae", ops="reference")
    model = HPMViT(model_config("micro", img_size=(16, 16), patch_size=4, in_chans=1, predictor=False), "reference")
    path = tmp_path / ckpt.CHECKPOINT
    ckpt.save_atomic(dict(config=cfg.__dict__, model=model.state_dict(), teacher=None, position={}), path)
    assert cli.main(["export", "--checkpoint", str(path), "--teacher"]) == 2
    assert "no EMA teacher" in capsys.readouterr().err


def test_cli_help(capsys):
    from hpm_pretrain.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["export", "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "--teacher" in out and "--checkpoint" in out and "timm" in out
