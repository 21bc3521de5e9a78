"""The quality study driver (python -m hpm_pretrain.study) on tiny runs: results, resume, report, checks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from hpm_pretrain import study
from tests.test_pretrain_data import HAS_ELPV, _fake_fmnist


def test_auroc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)  # many ties
        neg = rng.integers(0, 6, size=rng.integers(1, 30)).astype(float)
        want = mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))
        assert study.auroc(pos, neg) == pytest.approx(want, abs=1e-12)
    assert study.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert study.auroc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    assert np.isnan(study.auroc(np.array([]), np.array([1.0])))


def _tiny(cfg, **kw):
    return dataclasses.replace(cfg, preset="micro", epochs=2, batch_size=8, warmup_epochs=1, ema_ramp_epochs=2, **kw)


def test_fmnist_run_writes_results_and_does_not_retrain(tmp_path):
    root = tmp_path / "fmnist"
    _fake_fmnist(root, gz=True, n_train=40, n_test=20)
    cfg = _tiny(study.FMNIST, data_path=str(root), limit=None, method="hpm")
    spec = study.RunSpec("t-hpm", "fmnist", cfg)
    out, work = tmp_path / "out", tmp_path / "work"
    result = study.run_one(spec, out, work, threads=1)
    assert result["opt_steps"] == 2 * (40 // 8)
    steps = [s for s, _ in result["spearman_curve"]]
    assert len(steps) == study.SEGMENTS and steps == sorted(steps) and steps[-1] == result["opt_steps"]
    assert all(-1 <= v <= 1 for _, v in result["spearman_curve"])
    assert 0 <= result["eval"]["knn_acc"] <= 1 and 0 <= result["eval"]["linear_acc"] <= 1
    assert result["eval"]["n_test"] == 20
    saved = json.loads((out / "runs" / "t-hpm.json").read_text())
    assert saved["wall_s"] == pytest.approx(result["wall_s"])
    # every segment is recorded: a second call trains nothing and reports the same training time
    again = study.run_one(spec, out, work, threads=1)
    assert again["wall_s"] == result["wall_s"]
    report = study.write_report(out).read_text()
    assert "| fmnist | hpm | 1 | 2 |" in report


def test_equal_time_runs_scale_epochs_by_the_measured_times():
    results = {
        "fmnist-hpm-s0": dict(wall_s=200.0),
        "fmnist-mae-s0": dict(wall_s=100.0),
        "fmnist-hpm-s1": dict(wall_s=150.0),  # no MAE result for seed 1 yet: no run
    }
    runs = study.equal_time_runs(results)
    assert [r.name for r in runs] == ["fmnist-mae-equaltime-s0"]
    assert runs[0].cfg.method == "mae" and runs[0].cfg.epochs == 2 * study.FMNIST.epochs


@pytest.mark.skipif(not HAS_ELPV, reason="the ELPV data: pip install elpv-dataset")
def test_elpv_hardness_check_and_example_png(tmp_path):
    cfg = _tiny(study.ELPV, img_size=32, limit=64, method="hpm")
    work = tmp_path / "work"
    run_dir = work / "elpv"
    from hpm_pretrain.train import pretrain

    pretrain(dataclasses.replace(cfg, out_dir=str(run_dir)))
    ckpt = run_dir / "checkpoint.pt"
    h = study.elpv_hardness(ckpt)
    assert h["test_cells"] > 100 and 0 < h["defective"] < h["test_cells"]
    for key in ("image_auroc_mean_hardness", "image_auroc_dark_fraction", "patch_auroc_dark_defective", "patch_auroc_dark_clean"):
        assert 0 <= h[key] <= 1
    png = study.defect_examples(ckpt, tmp_path / "ex.png", num_images=2)
    assert png.stat().st_size > 0


def test_random_init_control_keeps_the_initial_weights(tmp_path):
    import torch

    from hpm_pretrain.checkpoint import load
    from hpm_pretrain.train import build_model

    root = tmp_path / "fmnist"
    _fake_fmnist(root, gz=True, n_train=40, n_test=20)
    cfg = _tiny(study.FMNIST, data_path=str(root), limit=None, method="mae", seed=3)
    result = study.run_one(study.RunSpec("t-init", "fmnist-random-init", cfg), tmp_path / "out", tmp_path / "work", threads=1)
    assert result["opt_steps"] == 0 and 0 <= result["eval"]["knn_acc"] <= 1
    torch.manual_seed(cfg.seed)
    init = build_model(cfg).state_dict()
    saved = load(tmp_path / "work" / "t-init" / "checkpoint.pt", map_location="cpu")["model"]
    assert init.keys() == saved.keys()
    assert all(torch.equal(init[k], saved[k]) for k in init)
