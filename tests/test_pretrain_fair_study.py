"""The fair study (hpm_pretrain/fair_study.py): its run planning from finished results, the report
and plot, one tiny end-to-end run; and what it added to the trainer: the stop-gradient ablation,
the validation kNN, the run-length teacher EMA."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

from hpm_pretrain import fair_study as fs
from hpm_pretrain import schedule
from hpm_pretrain.evaluate import knn_accuracy, knn_validation_accuracy
from hpm_pretrain.plot import Point, scatter
from hpm_pretrain.protocols import FASHION_MNIST_TINY6
from hpm_pretrain.train import PretrainConfig, build_model, forward_step
from tests.test_pretrain_data import _fake_fmnist


# -- planning -------------------------------------------------------------------------------------
def _result(dataset: str, variant: str, blr: float, seed: int, knn_val: float, cpu_s: float = 100.0, epochs=None) -> dict:
    spec = fs.make_spec(dataset, variant, blr, seed, "sweep" if seed == 0 else "seeds", epochs)
    cfg = dataclasses.asdict(spec.cfg)
    return dict(
        name=spec.name,
        group=spec.group,
        config=cfg,
        cpu_s=cpu_s,
        wall_s=cpu_s,
        eval=dict(knn_acc=knn_val - 0.01, knn_val_acc=knn_val, linear_acc=knn_val + 0.01),
        spearman_curve=[(1, None)] if variant == "mae" else [(1, 0.3), (2, 0.5)],
        hardness_spearman=None if variant == "mae" else dict(student=0.45, teacher=0.4 + 0.01 * seed, position=0.6),
    )


def _add(results: dict, *rs: dict) -> dict:
    results.update({r["name"]: r for r in rs})
    return results


def _names(results: dict) -> list[str]:
    return [s.name for s in fs.planned_runs(results)]


def test_blr_tag_and_run_names():
    assert [fs.blr_tag(b) for b in (1.5e-4, 5e-4, 1.5e-3, 5e-5, 1.5e-2)] == ["1.5e-4", "5e-4", "1.5e-3", "5e-5", "1.5e-2"]
    spec = fs.make_spec("fmnist", "hpm-stopgrad", 5e-4, 2, "ablation")
    assert spec.name == "fmnist-hpm-stopgrad-blr5e-4-s2" and spec.group == "fmnist-ablation"
    assert spec.cfg.method == "hpm" and spec.cfg.predictor_stop_grad and spec.cfg.blr == 5e-4 and spec.cfg.seed == 2
    assert dict(spec.evaluate_kwargs) == {"limit_train": 0}
    longer = fs.make_spec("fmnist", "mae", 5e-4, 0, "equal-compute", epochs=8)
    assert longer.name == "fmnist-mae-blr5e-4-e8-s0"
    assert longer.cfg.epochs == 8 and longer.cfg.warmup_epochs == 2  # the schedule's shape: warm-up 1/4
    assert fs.make_spec("elpv", "mae", 5e-4, 1, "random-init").name == "elpv-random-init-s1"


def test_sweep_starts_with_three_blrs_per_method_at_seed_0():
    names = _names({})
    want = [f"fmnist-{m}-blr{b}-s0" for m in ("mae", "hpm", "lossonly") for b in ("1.5e-4", "5e-4", "1.5e-3")]
    assert names[:9] == want
    assert "fmnist-random-init-s0" in names and not any("-s1" in n and "random" not in n for n in names[:12])


def test_sweep_extends_past_an_edge_then_seeds_the_best():
    results = _add({}, *(_result("fmnist", "mae", b, 0, v) for b, v in ((1.5e-4, 0.70), (5e-4, 0.72), (1.5e-3, 0.75))))
    assert fs.sweep_state(results, "fmnist", "mae") == ([5e-3], None)  # best at the top edge: one rung more
    assert "fmnist-mae-blr5e-3-s0" in _names(results) and "fmnist-mae-blr1.5e-3-s1" not in _names(results)
    _add(results, _result("fmnist", "mae", 5e-3, 0, 0.74))
    assert fs.sweep_state(results, "fmnist", "mae") == ([], 1.5e-3)
    names = _names(results)
    assert "fmnist-mae-blr1.5e-3-s1" in names and "fmnist-mae-blr1.5e-3-s2" in names
    # the selection reads the validation kNN, not the test accuracy
    results["fmnist-mae-blr5e-3-s0"]["eval"]["knn_acc"] = 0.99
    assert fs.best_blr(results, "fmnist", "mae") == 1.5e-3
    # bottom edge: one rung below
    low = _add({}, *(_result("fmnist", "hpm", b, 0, v) for b, v in ((1.5e-4, 0.8), (5e-4, 0.7), (1.5e-3, 0.6))))
    assert fs.sweep_state(low, "fmnist", "hpm") == ([5e-5], None)


def test_ablation_and_equal_compute_follow_the_best_blrs():
    results = {}
    for m, cpu in (("mae", 100.0), ("hpm", 210.0), ("lossonly", 130.0)):
        _add(results, *(_result("fmnist", m, b, 0, v, cpu) for b, v in ((1.5e-4, 0.70), (5e-4, 0.75), (1.5e-3, 0.72))))
    names = _names(results)
    for s in (0, 1, 2):
        assert f"fmnist-hpm-stopgrad-blr5e-4-s{s}" in names and f"fmnist-lossonly-stopgrad-blr5e-4-s{s}" in names
    assert fs.equal_compute_epochs(results, "fmnist") == {"hpm": 8, "lossonly": 5}  # round(4 * 2.1), round(4 * 1.3)
    assert "fmnist-mae-blr5e-4-e8-s2" in names and "fmnist-mae-blr5e-4-e5-s0" in names
    assert names.index("fmnist-mae-blr5e-4-s1") < names.index("fmnist-hpm-stopgrad-blr5e-4-s0")  # seeds first
    assert len(names) == len(set(names))


def test_report_tables_and_plot(tmp_path):
    results = {}
    for m, cpu in (("mae", 100.0), ("hpm", 210.0), ("lossonly", 130.0), ("lossonly-stopgrad", 125.0)):
        blrs = ((1.5e-4, 0.70), (5e-4, 0.75), (1.5e-3, 0.72)) if m in fs.MAIN else ((5e-4, 0.75),)
        for s in (0, 1, 2):
            for b, v in blrs if s == 0 else ((5e-4, 0.75),):
                _add(results, _result("fmnist", m, b, s, v + 0.01 * s + (0.02 if m == "lossonly" else 0), cpu))
    (tmp_path / "runs").mkdir()
    for name, r in results.items():
        (tmp_path / "runs" / f"{name}.json").write_text(json.dumps(r))
    text = fs.write_report(tmp_path).read_text()
    assert "| mae | 5e-4 | 75.00 | 74.00 | 76.00 | 100 | yes |" in text
    assert "| MAE | 5e-4 | 3 | 75.00 ± 1.00 | 77.00 ± 1.00 | 100 | 1.00x |" in text
    assert "| HPM (official recipe) | 5e-4 | 3 |" in text and "| 2.10x |" in text
    # loss-only minus its detached twin: +2 points at every seed
    assert "| lossonly − lossonly-stopgrad | +2.00 ± 0.00 (n=3) |" in text
    # the predictor against the position-only prior, at the best blr, mean over seeds
    assert "| HPM (official recipe) | 5e-4 | 3 | 0.500 | 0.450 | 0.410 | 0.600 |" in text
    png = tmp_path / "fmnist_knn_vs_time.png"
    assert Image.open(png).size == (980, 600)


def test_scatter_draws_points_in_their_series_colour(tmp_path):
    pts = [Point(1.0, 70.0, 0.1, 0.5, "a", "x"), Point(2.0, 72.0, 0.0, 0.0, "b", "y")]
    img = Image.open(scatter(pts, tmp_path / "p.png", "x", "y", "t", (69.0, "floor"))).convert("RGB")
    colours = {c for _, c in img.getcolors(1 << 20)}
    assert {(31, 119, 180), (255, 127, 14)} <= colours


# -- trainer pieces ---------------------------------------------------------------------------------
def _tiny_cfg(**kw) -> PretrainConfig:
    return PretrainConfig(
        data="fashion-mnist", img_size=16, in_chans=1, patch_size=4, preset="micro", embed_dim=32, depth=1, num_heads=2,
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, norm_pix=True, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("predictor_depth", [None, 0])
def test_predictor_stop_grad_keeps_the_ranking_loss_out_of_the_encoder(predictor_depth):
    """With the predictor's input detached, the encoder's gradient is the reconstruction loss's
    alone (float64, exact), and the predictor still learns; without it the ranking loss reaches
    the encoder."""
    torch.manual_seed(0)
    imgs = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    noise = torch.rand(4, 16, dtype=torch.float64)
    grads = {}
    for stop in (False, True):
        cfg = _tiny_cfg(method="lossonly", predictor_stop_grad=stop, predictor_depth=predictor_depth)
        torch.manual_seed(1)
        model = build_model(cfg, "reference").double()
        out = forward_step(model, None, imgs, noise, cfg, 0.0)
        model.zero_grad()
        out.loss.backward()
        full = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        forward_step(model, None, imgs, noise, cfg, 0.0).loss_rec.backward()
        rec = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[stop] = (full, rec)
    full, rec = grads[True]
    assert all(torch.equal(full[n], rec[n]) for n in rec)  # every non-predictor parameter: reconstruction only
    assert any(n.startswith("predictor_") and full[n].abs().sum() > 0 for n in full)
    full, rec = grads[False]
    assert not torch.allclose(full["blocks.0.attn.qkv.weight"], rec["blocks.0.attn.qkv.weight"])


def test_predictor_stop_grad_needs_a_predictor():
    with pytest.raises(ValueError, match="predictor_stop_grad"):
        _tiny_cfg(method="mae", predictor_stop_grad=True).validate()


def test_knn_validation_accuracy_is_a_seeded_split_of_the_train_features():
    g = torch.Generator().manual_seed(0)
    feats, labels = torch.randn(60, 5, generator=g), torch.randint(0, 3, (60,), generator=g)
    acc = knn_validation_accuracy(feats, labels, fraction=1 / 6, seed=0, k=5)
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    want = knn_accuracy(feats[perm[10:]], labels[perm[10:]], feats[perm[:10]], labels[perm[:10]], k=5)
    assert acc == want
    assert knn_validation_accuracy(feats[:1], labels[:1]) is None


def test_ema_for_run_length():
    assert schedule.ema_for_run_length(schedule.OFFICIAL_STEPS, 200) == pytest.approx((0.999, 0.9999, 100))
    start, end, ramp = schedule.ema_for_run_length(128, 4)
    assert 0 < start < end < 0.999 and ramp == 2
    assert 1 / (1 - end) == pytest.approx(10_000 / schedule.OFFICIAL_STEPS * 128)  # 16 % of the run, as officially
    with pytest.raises(ValueError, match="total_steps"):
        schedule.ema_for_run_length(0, 1)


# -- one tiny run end to end ------------------------------------------------------------------------
def test_tiny_study_runs_resumes_and_reports(tmp_path, monkeypatch):
    root = tmp_path / "fmnist"
    _fake_fmnist(root, gz=True, n_train=48, n_test=12)
    tiny = dataclasses.replace(
        FASHION_MNIST_TINY6, data_path=str(root), limit=None, epochs=1, warmup_epochs=0.5, batch_size=8, embed_dim=16,
        depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, img_size=16,
    )  # fmt: skip
    monkeypatch.setitem(fs.DATASETS, "fmnist", (tiny, (("limit_train", 0),)))
    out, work = tmp_path / "out", tmp_path / "work"
    fs.run_all(out, work, jobs=1, threads=1, only={"fmnist-sweep"}, max_runs=2)
    runs = sorted(p.stem for p in (out / "runs").glob("*.json"))
    assert runs == ["fmnist-mae-blr1.5e-4-s0", "fmnist-mae-blr5e-4-s0"]
    r = json.loads((out / "runs" / f"{runs[0]}.json").read_text())
    assert r["cpu_s"] > 0 and r["opt_steps"] == 6 and r["eval"]["n_train"] == 48 and r["eval"]["knn_val_acc"] is not None
    assert r["machine"]
    fs.run_all(out, work, jobs=1, threads=1, only={"fmnist-sweep"}, max_runs=1)  # resumes: the next run only
    assert len(list((out / "runs").glob("*.json"))) == 3
    assert "| mae | 1.5e-4 |" in (out / "results.md").read_text()


def test_cost_is_only_divided_within_one_seed_and_machine():
    mae = [dict(config=dict(seed=0), machine="A", cpu_s=100.0), dict(config=dict(seed=1), machine="B", cpu_s=50.0)]
    hpm = [dict(config=dict(seed=0), machine="A", cpu_s=200.0), dict(config=dict(seed=1), machine="A", cpu_s=210.0)]
    assert fs.cost_vs_mae(hpm, mae) == 2.0  # seed 1 ran on another machine than MAE's seed 1: left out
    assert fs.cost_vs_mae(hpm[1:], mae) is None
