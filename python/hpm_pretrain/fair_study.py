"""The fair HPM study (docs/QUALITY.md): every method at its own best learning rate, 3 seeds.

    python -m hpm_pretrain.study --jobs 2             # every run below, resumable; docs/quality/fair/
    python -m hpm_pretrain.study --report             # only rewrite results.md and the plot

Protocol: ``protocols.FASHION_MNIST_TINY6`` (Fashion-MNIST, 20,000 images at 32 px, encoder 192 wide
/ 6 blocks, decoders 128 / 2, norm-pix, batch 256, 4 epochs) and ``protocols.ELPV_TINY6`` (the same
networks on ELPV at 64 px, 10 epochs). Runs are chosen from the finished ones, so the study goes in
this order and resumes anywhere:

1. **sweep**: seed 0 of MAE, HPM and loss-only at blr 1.5e-4, 5e-4 and 1.5e-3; where a method's
   best is at an edge of what it ran, the next rung of ``BLR_LADDER`` beyond that edge is added.
   "Best" is the validation kNN (a seeded sixth of the train features against the rest:
   ``evaluate.knn_validation_accuracy``), never the test accuracy that is reported.
2. **seeds**: seeds 1 and 2 at each method's best blr.
3. **random-init**: the encoder at initialisation (3 seeds), evaluated the same way.
4. **ablation**: HPM and loss-only with the predictor's input detached (``predictor_stop_grad``:
   the loss-prediction objective trains only the predictor, never the encoder), at the parent
   method's best blr, 3 seeds.
5. **equal-compute**: MAE at its best blr given the training time of HPM and of loss-only
   (``round(4 x t_method / t_MAE)`` epochs, from the seed-0 one-core times; the warm-up scaled with
   it: the same schedule shape), 3 seeds.
6. the same sweep, seeds and control on ELPV; then the lighter predictors (depth 0) on Fashion-MNIST.

Cost is measured as ``cpu_s``, the training process's CPU time: with one torch thread per run
(``--jobs 2`` on 2 cores) it is the run's one-core training time, and unlike wall time it does not
grow when something else shares the machine. Evaluation is never training time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing
import os
import statistics
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .machine import cpu_model
from .plot import Point, scatter
from .protocols import ELPV_TINY6, FASHION_MNIST_TINY6
from .study import RunSpec, _worker, hardness_table, load_results

log = logging.getLogger("hpm_pretrain.fair_study")

SEEDS = (0, 1, 2)
BLR_LADDER = (1.5e-5, 5e-5, 1.5e-4, 5e-4, 1.5e-3, 5e-3, 1.5e-2)
BLR_START = (1.5e-4, 5e-4, 1.5e-3)

# variant -> (PretrainConfig overrides, label)
VARIANTS: dict[str, tuple[dict, str]] = {
    "mae": (dict(method="mae"), "MAE"),
    "hpm": (dict(method="hpm"), "HPM (official recipe)"),
    "lossonly": (dict(method="lossonly"), "loss-only (predictor trained, masks random)"),
    "hpm-stopgrad": (dict(method="hpm", predictor_stop_grad=True), "HPM, predictor input detached"),
    "lossonly-stopgrad": (dict(method="lossonly", predictor_stop_grad=True), "loss-only, predictor input detached"),
    "hpm-d0": (dict(method="hpm", predictor_depth=0), "HPM, predictor depth 0"),
    "lossonly-d0": (dict(method="lossonly", predictor_depth=0), "loss-only, predictor depth 0"),
}
MAIN = ("mae", "hpm", "lossonly")
LIGHT = ("hpm-d0", "lossonly-d0")
ABLATIONS = {"hpm-stopgrad": "hpm", "lossonly-stopgrad": "lossonly"}  # ablation -> the method whose best blr it takes

# dataset -> (protocol, evaluate() keyword arguments)
DATASETS: dict[str, tuple] = {
    "fmnist": (FASHION_MNIST_TINY6, (("limit_train", 0),)),  # probes on all 60,000 train images
    "elpv": (ELPV_TINY6, ()),  # all 2,099 training cells (the run's own split)
}


def blr_tag(blr: float) -> str:
    """1.5e-4 -> '1.5e-4', 0.0005 -> '5e-4'."""
    mantissa, exponent = f"{blr:.1e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def make_spec(dataset: str, variant: str, blr: float, seed: int, group: str, epochs: int | None = None) -> RunSpec:
    base, eval_kwargs = DATASETS[dataset]
    overrides, _ = VARIANTS[variant]
    cfg = dataclasses.replace(base, **overrides, blr=blr, seed=seed)
    name = f"{dataset}-{variant}-blr{blr_tag(blr)}"
    if group == "random-init":  # no training: the blr is irrelevant
        return RunSpec(f"{dataset}-random-init-s{seed}", f"{dataset}-{group}", cfg, eval_kwargs)
    if epochs is not None and epochs != base.epochs:
        cfg = dataclasses.replace(cfg, epochs=epochs, warmup_epochs=base.warmup_epochs * epochs / base.epochs)
        name += f"-e{epochs}"
    return RunSpec(f"{name}-s{seed}", f"{dataset}-{group}", cfg, eval_kwargs)


def _variant(result: dict) -> str:
    cfg = result["config"]
    for name, (overrides, _) in VARIANTS.items():
        if all(cfg.get(k) == v for k, v in overrides.items()) and all(
            cfg.get(k) in (None, False) for k in ("predictor_stop_grad", "predictor_depth") if k not in overrides
        ):
            return name
    raise ValueError(f"run {result['name']} matches no variant")


def _finished(results: dict[str, dict], dataset: str, variant: str, *, seed: int | None = None, epochs: int | None = None):
    """Finished pretraining runs of (dataset, variant) at the protocol's epochs unless ``epochs``."""
    base = DATASETS[dataset][0]
    out = []
    for r in results.values():
        if not r["name"].startswith(f"{dataset}-") or r["group"].endswith("random-init"):
            continue
        if _variant(r) != variant or r["config"]["epochs"] != (epochs or base.epochs):
            continue
        if seed is None or r["config"]["seed"] == seed:
            out.append(r)
    return out


def _score(r: dict) -> float:
    return r["eval"].get("knn_val_acc") if r["eval"].get("knn_val_acc") is not None else -math.inf


def sweep_state(results: dict[str, dict], dataset: str, variant: str) -> tuple[list[float], float | None]:
    """(blrs still to run at seed 0, the best blr once the sweep is complete else None)."""
    done = {r["config"]["blr"]: r for r in _finished(results, dataset, variant, seed=0)}
    missing = [b for b in BLR_START if b not in done]
    if missing:
        return missing, None
    best = max(done, key=lambda b: _score(done[b]))
    ran = sorted(done)
    i = BLR_LADDER.index(best) if best in BLR_LADDER else -1
    if best == ran[0] and i > 0 and BLR_LADDER[i - 1] not in done:
        return [BLR_LADDER[i - 1]], None
    if best == ran[-1] and 0 <= i < len(BLR_LADDER) - 1 and BLR_LADDER[i + 1] not in done:
        return [BLR_LADDER[i + 1]], None
    return [], best


def best_blr(results: dict[str, dict], dataset: str, variant: str) -> float | None:
    return sweep_state(results, dataset, variant)[1]


def equal_compute_epochs(results: dict[str, dict], dataset: str) -> dict[str, int]:
    """method -> MAE epochs matching its seed-0 one-core training time at the best blrs."""
    base = DATASETS[dataset][0]
    mae_blr = best_blr(results, dataset, "mae")
    if mae_blr is None:
        return {}
    mae = [r for r in _finished(results, dataset, "mae", seed=0) if r["config"]["blr"] == mae_blr]
    out = {}
    for method in ("hpm", "lossonly"):
        blr = best_blr(results, dataset, method)
        runs = [r for r in _finished(results, dataset, method, seed=0) if r["config"]["blr"] == blr]
        ratio = cost_vs_mae(runs, mae) if blr is not None else None
        if ratio is None:
            continue
        epochs = round(base.epochs * ratio)
        if epochs > base.epochs:
            out[method] = epochs
    return out


def planned_runs(results: dict[str, dict]) -> list[RunSpec]:
    """The runs that can start now, in the study's priority order (see the module docstring)."""
    plan: list[RunSpec] = []

    def sweep(dataset: str, variants: tuple[str, ...]) -> None:
        for v in variants:
            plan.extend(make_spec(dataset, v, b, 0, "sweep") for b in sweep_state(results, dataset, v)[0])

    def seeds(dataset: str, variants: tuple[str, ...]) -> None:
        for v in variants:
            if (blr := best_blr(results, dataset, v)) is not None:
                plan.extend(make_spec(dataset, v, blr, s, "seeds") for s in SEEDS if s != 0)

    def control(dataset: str) -> None:
        plan.extend(make_spec(dataset, "mae", BLR_START[0], s, "random-init") for s in SEEDS)

    sweep("fmnist", MAIN)
    seeds("fmnist", MAIN)
    control("fmnist")
    for ablation, parent in ABLATIONS.items():
        if (blr := best_blr(results, "fmnist", parent)) is not None:
            plan.extend(make_spec("fmnist", ablation, blr, s, "ablation") for s in SEEDS)
    mae_blr = best_blr(results, "fmnist", "mae")
    for epochs in sorted(set(equal_compute_epochs(results, "fmnist").values())):
        plan.extend(make_spec("fmnist", "mae", mae_blr, s, "equal-compute", epochs) for s in SEEDS)
    sweep("elpv", MAIN)
    seeds("elpv", MAIN)
    control("elpv")
    sweep("fmnist", LIGHT)
    seeds("fmnist", LIGHT)
    seen: set[str] = set()
    return [s for s in plan if s.name not in results and not (s.name in seen or seen.add(s.name))]


def run_all(out: Path, work: Path, jobs: int, threads: int, only: set[str] | None, max_runs: int | None = None) -> None:
    """Start the planned runs ``jobs`` at a time (each in a fresh process), re-planning after each
    finishes, until nothing is left (or ``max_runs`` have started). A run that fails is logged and
    not retried in this invocation."""
    failed: set[str] = set()
    started = 0
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        running: dict = {}
        while True:
            results = load_results(out)
            todo = [
                s
                for s in planned_runs(results)
                if s.name not in results and s.name not in running and s.name not in failed and (only is None or s.group in only)
            ]
            while todo and len(running) < jobs and (max_runs is None or started < max_runs):
                spec = todo.pop(0)
                log.info("starting %s", spec.name)
                running[spec.name] = pool.submit(_worker, (spec, out, work, threads))
                started += 1
            if not running:
                break
            finished, _ = wait(running.values(), return_when=FIRST_COMPLETED)
            for name, future in list(running.items()):
                if future in finished:
                    del running[name]
                    try:
                        future.result()
                        log.info("finished %s", name)
                    except Exception:
                        log.exception("run %s failed", name)
                        failed.add(name)
            write_report(out)
    write_report(out)


# -- report -------------------------------------------------------------------------------------
def _pct(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}"


def _secs(rs: list[dict]) -> float | None:
    values = [r["cpu_s"] for r in rs if r.get("cpu_s")]
    return statistics.fmean(values) if values else None


def _paired(a: list[dict], b: list[dict], key: str) -> str:
    """Mean ± std over seeds of a - b (percentage points), pairing runs by seed."""
    by_seed = {r["config"]["seed"]: r["eval"][key] for r in b}
    diffs = [100 * (r["eval"][key] - by_seed[r["config"]["seed"]]) for r in a if r["config"]["seed"] in by_seed]
    if not diffs:
        return "-"
    sd = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
    return f"{statistics.fmean(diffs):+.2f}{sd} (n={len(diffs)})"


def best_runs(results: dict[str, dict], dataset: str, variant: str) -> list[dict]:
    parent = ABLATIONS.get(variant, variant)
    blr = best_blr(results, dataset, parent)
    if blr is None:
        return []
    return [r for r in _finished(results, dataset, variant) if r["config"]["blr"] == blr]


def _sweep_table(results: dict[str, dict], dataset: str, variants: tuple[str, ...]) -> list[str]:
    lines = [
        "| method | blr | kNN val (selects) | kNN test | linear test | one-core train s | chosen |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for v in variants:
        best = best_blr(results, dataset, v)
        for r in sorted(_finished(results, dataset, v, seed=0), key=lambda r: r["config"]["blr"]):
            e = r["eval"]
            lines.append(
                f"| {v} | {blr_tag(r['config']['blr'])} | {_pct([e.get('knn_val_acc')])} | {_pct([e['knn_acc']])} | "
                f"{_pct([e['linear_acc']])} | {r.get('cpu_s') or r['wall_s']:.0f} | {'yes' if r['config']['blr'] == best else ''} |"
            )
    return lines


def cost_vs_mae(runs: list[dict], mae_runs: list[dict]) -> float | None:
    """One-core training time / MAE's, from runs of the same seeds on the same machine (sessions
    may land on different CPUs, so times from different machines are never divided)."""
    mae = {(r["config"]["seed"], r.get("machine")): r["cpu_s"] for r in mae_runs if r.get("cpu_s")}
    ratios = [r["cpu_s"] / mae[key] for r in runs if r.get("cpu_s") and (key := (r["config"]["seed"], r.get("machine"))) in mae]
    return statistics.fmean(ratios) if ratios else None


def _best_table(results: dict[str, dict], dataset: str, variants: tuple[str, ...]) -> list[str]:
    mae_runs = best_runs(results, dataset, "mae")
    lines = [
        "| method | blr | seeds | kNN test | linear test | one-core train s | cost vs MAE (same seed and machine) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    control = [r for r in results.values() if r["name"].startswith(f"{dataset}-random-init-")]
    if control:
        lines.append(
            f"| none (random init) | - | {len(control)} | {_pct([r['eval']['knn_acc'] for r in control])} | "
            f"{_pct([r['eval']['linear_acc'] for r in control])} | 0 | - |"
        )
    for v in variants:
        rs = best_runs(results, dataset, v)
        if not rs:
            continue
        s = _secs(rs)
        ratio = cost_vs_mae(rs, mae_runs)
        cost = "-" if ratio is None else f"{ratio:.2f}x"
        lines.append(
            f"| {VARIANTS[v][1]} | {blr_tag(rs[0]['config']['blr'])} | {len(rs)} | {_pct([r['eval']['knn_acc'] for r in rs])} | "
            f"{_pct([r['eval']['linear_acc'] for r in rs])} | {s or 0:.0f} | {cost} |"
        )
    return lines


def _decomposition(results: dict[str, dict], dataset: str) -> list[str]:
    pairs = [
        ("loss-prediction objective (its gradient into the encoder)", "lossonly", "lossonly-stopgrad"),
        ("loss-only vs MAE (objective + a predictor that is trained)", "lossonly", "mae"),
        ("predictor trained without its gradient vs MAE (should be ~0)", "lossonly-stopgrad", "mae"),
        ("hard-patch masking (HPM vs loss-only)", "hpm", "lossonly"),
        ("hard-patch masking alone (HPM detached vs MAE)", "hpm-stopgrad", "mae"),
        ("HPM vs MAE (everything)", "hpm", "mae"),
    ]
    lines = ["| effect | compared | Δ kNN (points, paired by seed) | Δ linear |", "|---|---|---:|---:|"]
    for what, a, b in pairs:
        ra, rb = best_runs(results, dataset, a), best_runs(results, dataset, b)
        if ra and rb:
            lines.append(f"| {what} | {a} − {b} | {_paired(ra, rb, 'knn_acc')} | {_paired(ra, rb, 'linear_acc')} |")
    return lines


def _equal_compute_table(results: dict[str, dict], dataset: str) -> list[str]:
    lines = [
        "| run | epochs | seeds | kNN test | linear test | one-core train s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    mae_blr = best_blr(results, dataset, "mae")
    rows = [(VARIANTS[m][1], best_runs(results, dataset, m)) for m in ("hpm", "lossonly")]
    for method, epochs in sorted(equal_compute_epochs(results, dataset).items()):
        mae = [r for r in _finished(results, dataset, "mae", epochs=epochs) if r["config"]["blr"] == mae_blr]
        rows.append((f"MAE with {method}'s time", mae))
    for label, rs in rows:
        if rs:
            lines.append(
                f"| {label} | {rs[0]['config']['epochs']} | {len(rs)} | {_pct([r['eval']['knn_acc'] for r in rs])} | "
                f"{_pct([r['eval']['linear_acc'] for r in rs])} | {_secs(rs) or 0:.0f} |"
            )
    return lines


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _hardness_table(results: dict[str, dict], dataset: str) -> list[str]:
    """Held-out Spearman of each hardness map with the actual loss (random masks, 256 test images,
    end of training), mean over the finished seeds of each (method, blr, epochs), beside the
    position-only prior (the mean loss at each patch position over the other images)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        if r["name"].startswith(f"{dataset}-") and r.get("hardness_spearman"):
            groups.setdefault((list(VARIANTS).index(_variant(r)), r["config"]["blr"], r["config"]["epochs"]), []).append(r)
    if not groups:
        return []
    lines = [
        "| method | blr | seeds | student, masked query (as trained) | student, full image | teacher, full image (HPM selects by) | position only |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (vi, blr, _), rs in sorted(groups.items()):

        def mean(key: str, rs=rs) -> str:
            values = [r["hardness_spearman"].get(key) for r in rs if r["hardness_spearman"].get(key) is not None]
            return f"{statistics.fmean(values):.3f}" if values else "-"

        masked = statistics.fmean(r["spearman_curve"][-1][1] for r in rs)
        label = VARIANTS[list(VARIANTS)[vi]][1]
        lines.append(
            f"| {label} | {blr_tag(blr)} | {len(rs)} | {masked:.3f} | {mean('student')} | {mean('teacher')} | {mean('position')} |"
        )
    return lines


def plot(results: dict[str, dict], dataset: str, png: Path) -> Path | None:
    """kNN test accuracy against one-core training time, one point per (method, blr, epochs): the
    seeds' mean, their std as error bars on both axes."""
    groups: dict[tuple, list[dict]] = {}
    for r in results.values():
        if r["name"].startswith(f"{dataset}-") and not r["group"].endswith("random-init") and r.get("cpu_s"):
            groups.setdefault((_variant(r), r["config"]["blr"], r["config"]["epochs"]), []).append(r)
    if not groups:
        return None
    protocol_epochs = DATASETS[dataset][0].epochs
    points = []
    for (v, blr, epochs), rs in sorted(groups.items(), key=lambda kv: (list(VARIANTS).index(kv[0][0]), kv[0][1:])):
        x = [r["cpu_s"] / 60 for r in rs]
        y = [100 * r["eval"]["knn_acc"] for r in rs]
        label = (
            blr_tag(blr) + (f", {epochs} ep" if epochs != protocol_epochs else "") + (f" (n={len(rs)})" if len(rs) > 1 else "")
        )
        points.append(Point(statistics.fmean(x), statistics.fmean(y), _sd(x), _sd(y), VARIANTS[v][1], label))
    control = [100 * r["eval"]["knn_acc"] for r in results.values() if r["name"].startswith(f"{dataset}-random-init-")]
    return scatter(
        points,
        png,
        "training time, one core (min, process CPU time)",
        "kNN accuracy, test (%)",
        f"{dataset}: kNN vs training cost; label = blr (epochs if not {protocol_epochs}), n = seeds; bars = std over seeds",
        (statistics.fmean(control), "random init") if control else None,
    )


def write_report(out: Path) -> Path:
    """``<out>/results.md`` (and ``<dataset>_knn_vs_time.png``) from the finished runs."""
    results = load_results(out)
    lines = [
        "# Fair HPM study results (generated by `python -m hpm_pretrain.study`; do not edit)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}. Accuracies in %, "
        "mean ± std over the finished seeds; one-core train s = the training process's CPU time (one torch "
        "thread per run); the blr is chosen per method by validation kNN at seed 0.",
    ]
    for dataset, name in (("fmnist", "Fashion-MNIST"), ("elpv", "ELPV")):
        if not any(r["name"].startswith(f"{dataset}-") for r in results.values()):
            continue
        variants = MAIN + tuple(v for v in LIGHT if _finished(results, dataset, v))
        lines += ["", f"## {name}", "", "### Learning-rate sweep (seed 0)", "", *_sweep_table(results, dataset, variants)]
        lines += ["", "### Best vs best", "", *_best_table(results, dataset, variants + tuple(ABLATIONS))]
        lines += ["", "### Where the gain comes from", "", *_decomposition(results, dataset)]
        lines += ["", "### Equal compute", "", *_equal_compute_table(results, dataset)]
        if hardness := _hardness_table(results, dataset):
            lines += ["", "### Does the loss predictor beat a position-only prior? (held-out Spearman)", "", *hardness]
        png = plot(results, dataset, out / f"{dataset}_knn_vs_time.png")
        if png is not None:
            lines += ["", f"![kNN vs training time]({png.name})"]
        hard = [r for r in results.values() if "hardness" in r and r["name"].startswith(f"{dataset}-")]
        if hard:
            lines += ["", "### Does the teacher's hardness concentrate on defects? (held-out cells)", "", *hardness_table(hard)]
    pending = [s.name for s in planned_runs(results)]
    lines += ["", f"Runs finished: {len(results)}. Next planned: {', '.join(pending[:8]) or 'none'}."]
    path = out / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path
