"""Tests of hpm_pretrain.visualize: the PNG grid of input, mask, reconstruction, hardness and loss."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hpm_kernels as hk
from hpm_pretrain import checkpoint as ckpt
from hpm_pretrain import cli
from hpm_pretrain.export import load_run
from hpm_pretrain.train import PretrainConfig, build_model
from hpm_pretrain.visualize import (
    BACKGROUND,
    BLANK,
    COLUMNS,
    HEADER,
    PAD,
    _normalise_rows,
    _patch_map,
    colormap,
    denormalise_patches,
    grid_size,
    hardness_spearman,
    position_prior,
    render,
    tile_scale,
)


def _folder(root: Path, n: int, mode: str) -> Path:
    root.mkdir(parents=True)
    for k in range(n):
        rng = np.random.default_rng(k)
        shape = (40, 60) if mode == "L" else (40, 60, 3)
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(root / f"{k}.png")
    return root


def _checkpoint(tmp: Path, **cfg_kwargs) -> Path:
    """A random-init checkpoint with the layout train.py writes (teacher iff method hpm)."""
    cfg = PretrainConfig(out_dir=str(tmp / "run"), preset="micro", ops="reference", epochs=4, **cfg_kwargs)
    torch.manual_seed(0)
    student = build_model(cfg)
    teacher = build_model(cfg) if cfg.method == "hpm" else None
    state = dict(
        config=dataclasses.asdict(cfg),
        model=student.state_dict(),
        teacher=None if teacher is None else teacher.state_dict(),
        position=dict(epoch=4, batch=0, opt_step=8),
    )
    path = tmp / "run" / ckpt.CHECKPOINT
    ckpt.save_atomic(state, path)
    return path


@pytest.fixture(scope="module")
def rgb_hpm(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("vis_rgb")
    folder = _folder(tmp / "img", 10, "RGB")
    return _checkpoint(tmp, data="folder", data_path=str(folder), img_size=32, img_width=48, in_chans=3, patch_size=8)


def test_cli_writes_png_grid(rgb_hpm, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["visualize", "--checkpoint", str(rgb_hpm), "--num-images", "3", "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    img = Image.open(out)
    img.load()
    assert img.format == "PNG" and img.mode == "RGB"
    s = tile_scale((32, 48))
    assert s == 4
    assert img.size == grid_size(3, (32, 48)) == (6 * 48 * s + 7 * PAD, HEADER + 3 * 32 * s + 4 * PAD)
    a = np.asarray(img)
    # every tile is drawn: its centre is not the background; the padding between tiles is
    h, w = 32 * s, 48 * s
    for r in range(3):
        for c in range(len(COLUMNS)):
            y0, x0 = HEADER + PAD + r * (h + PAD), PAD + c * (w + PAD)
            assert tuple(a[y0 + h // 2, x0 + w // 2]) != BACKGROUND
            assert tuple(a[y0 + h // 2, x0 - 1]) == BACKGROUND
    # defaults: <run dir>/visualize.png, 8 images (the folder's train split has 8)
    assert cli.main(["visualize", "--run-dir", str(rgb_hpm.parent), "--device", "cpu"]) == 0
    assert Image.open(rgb_hpm.parent / "visualize.png").size == grid_size(8, (32, 48))


def test_panels_semantics(rgb_hpm):
    run = load_run(rgb_hpm)
    mc = run.model.cfg
    N, L, p = 2, mc.num_patches, mc.patch_size
    g = torch.Generator().manual_seed(3)
    imgs = torch.randn(N, 3, *mc.img_size, generator=g)
    noise = torch.rand(N, L, generator=g)
    panels, summary = render(run, imgs, noise, hard_ratio=0.5)
    assert len(panels) == len(COLUMNS)
    for panel in panels:
        assert panel.shape == (N, *mc.img_size, 3) and panel.dtype == np.uint8
    M = L - int(L * (1 - run.cfg.mask_ratio))
    assert summary["num_masked"] == M and summary["num_hard"] == int(M * 0.5)
    assert summary["scores_from"] == "teacher" and -1 <= summary["spearman"] <= 1
    assert summary["spearman"] == summary["spearman_teacher"] and -1 <= summary["spearman_student"] <= 1
    # the same selection as the trainer's: hard = the teacher's top scores
    scores = run.teacher.hardness(imgs)
    sel = hk.select_patches(scores, noise, run.cfg.mask_ratio, 0.5)
    masked = sel.mask.numpy().reshape(N, *mc.grid)
    inp, over, rec, _, _, loss = panels
    hard_ids = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, : summary["num_hard"]]
    for n in range(N):
        for idx in range(L):
            i, j = divmod(idx, mc.grid[1])
            win = (n, slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p))
            if not masked[n, i, j]:  # visible: input everywhere, blank loss
                assert np.array_equal(over[win], inp[win])
                assert np.array_equal(rec[win], inp[win])
                assert (loss[win] == np.array(BLANK, dtype=np.uint8)).all()
            elif idx in hard_ids[n].tolist():  # hard: red tint
                assert over[win][..., 0].astype(int).mean() > over[win][..., 1:].astype(int).mean() + 50
            else:  # random mask: grey
                assert np.abs(over[win].astype(int) - 128).max() <= 70


def test_student_column_and_hardness_spearman(rgb_hpm):
    """The student column pictures the student's own full-image hardness; hardness_spearman is the
    mean per-image rank correlation of each map with the actual loss under random masks (scipy)."""
    from scipy.stats import spearmanr

    run = load_run(rgb_hpm)
    mc = run.model.cfg
    g = torch.Generator().manual_seed(5)
    imgs = torch.randn(3, 3, *mc.img_size, generator=g)
    noise = torch.rand(3, mc.num_patches, generator=g)
    panels, _ = render(run, imgs, noise, hard_ratio=0.0)
    with torch.no_grad():
        student = run.model.hardness(imgs).double().numpy()
    want = colormap(_patch_map(_normalise_rows(student), mc.grid, mc.patch_size))
    assert np.array_equal(panels[4], want) and not np.array_equal(panels[3], panels[4])
    rho = hardness_spearman(run, imgs, noise)
    sel = hk.select_patches(noise, noise, run.cfg.mask_ratio, 0.0)
    with torch.no_grad():
        pixels, _ = run.model(imgs, sel)
        _, loss = hk.patch_mse_loss(pixels, imgs, mc.patch_size, sel.ids_mask, run.cfg.norm_pix)
        masked_scores = run.model(imgs, sel)[1]
        want = np.mean([spearmanr(masked_scores[n].numpy(), loss[n].numpy()).statistic for n in range(3)])
        assert rho["masked"] == pytest.approx(want, abs=1e-5)
        for who, net in (("teacher", run.teacher), ("student", run.model)):
            pred = net.hardness(imgs).gather(1, sel.ids_mask)
            want = np.mean([spearmanr(pred[n].numpy(), loss[n].numpy()).statistic for n in range(3)])
            assert rho[who] == pytest.approx(want, abs=1e-5)
    assert -1 <= rho["position"] <= 1


def test_position_prior_is_the_leave_one_out_mean_at_each_position():
    g = torch.Generator().manual_seed(0)
    N, L, M = 5, 9, 4
    ids_mask = torch.stack([torch.randperm(L, generator=g)[:M] for _ in range(N)])
    loss = torch.rand(N, M, generator=g, dtype=torch.float64)
    got = position_prior(loss, ids_mask, L)
    for n in range(N):
        for m in range(M):
            pos = int(ids_mask[n, m])
            others = [float(loss[k, j]) for k in range(N) if k != n for j in range(M) if int(ids_mask[k, j]) == pos]
            assert float(got[n, m]) == pytest.approx(sum(others) / len(others) if others else 0.0)


def test_mae_run_without_predictor(tmp_path):
    folder = _folder(tmp_path / "img", 4, "L")
    path = _checkpoint(
        tmp_path, data="folder", data_path=str(folder), img_size=16, in_chans=1, patch_size=4, method="mae", norm_pix=True
    )
    out = tmp_path / "mae.png"
    assert cli.main(["visualize", "--checkpoint", str(path), "--out", str(out), "--device", "cpu", "--split", "test"]) == 0
    # the test split of 4 images holds 1 (20 %): one row
    assert Image.open(out).size == grid_size(1, (16, 16))
    run = load_run(path)
    panels, summary = render(run, torch.randn(2, 1, 16, 16), torch.rand(2, 16), hard_ratio=0.5)
    assert summary["num_hard"] == 0 and summary["scores_from"] is None and summary["spearman"] is None
    assert (panels[3] == np.array(BLANK, dtype=np.uint8)).all() and (panels[4] == np.array(BLANK, dtype=np.uint8)).all()


def test_norm_pix_reconstruction_is_unnormalised():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 5, 48, generator=g) * 3 + 1
    normed = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(denormalise_patches(normed, target), target)


def test_colormap():
    c = colormap(np.array([0.0, 0.5, 1.0, -1.0, 2.0, np.nan]))
    assert c.shape == (6, 3) and c.dtype == np.uint8
    assert tuple(c[0]) == (68, 1, 84) and tuple(c[2]) == (253, 231, 37)
    assert tuple(c[3]) == tuple(c[0]) and tuple(c[4]) == tuple(c[2])
    ramp = colormap(np.linspace(0, 1, 50)).astype(int)
    lum = ramp @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(lum) > -1e-9).all()  # brighter with the value: easy = dark, hard = bright


def test_help():
    with pytest.raises(SystemExit) as e:
        cli.main(["visualize", "--help"])
    assert e.value.code == 0
