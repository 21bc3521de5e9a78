"""The HPM quality study (docs/QUALITY.md): HPM vs MAE vs loss-only on Fashion-MNIST and ELPV.

    python -m hpm_pretrain.study --jobs 2        # the fair study (fair_study.py), resumable; docs/quality/fair/
    python -m hpm_pretrain.study --report        # only rewrite its results.md and plots from the finished runs
    python -m hpm_pretrain.study --protocol small --jobs 2   # the first study (micro encoder, one blr); docs/quality/

This module holds the machinery both share (one run, its evaluation, the ELPV hardness check) and
the first study's protocol; ``fair_study.py`` the fair one's.

Each run trains with the reference trainer and the fused ops (``--ops fused``), in segments (a
quarter of its optimizer steps each, through ``stop_after`` + ``resume``: the same run, checkpointed
after each), measures the student loss predictor's Spearman correlation on held-out images after
every segment, then evaluates the frozen student encoder (kNN and linear probe on the test split).
A finished run writes ``<out>/runs/<name>.json`` and is never run again; an interrupted one resumes
from its last segment checkpoint (under ``runs/quality/<name>``, not committed). Run order: the
plain same-epoch groups first, then the groups that depend on them (MAE at HPM's wall time).

Timing: ``wall_s`` is the training time only (segments summed; evaluation excluded), with
``torch.set_num_threads(threads)``; with ``--jobs 2`` two runs share the machine, one core each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from .data import build_dataset
from .demo import heldout_hardness_spearman
from .evaluate import evaluate
from .export import load_run
from .machine import cpu_model
from .train import PretrainConfig, optimizer_steps_per_epoch, pretrain
from .visualize import compose, render, tile_scale

log = logging.getLogger("hpm_pretrain.study")

SEEDS = (0, 1, 2)
SEGMENTS = 4

# Fashion-MNIST on the 28 px images, patch 4 (L = 49), the first 8,000 images of the training
# split (evaluation: the same 8,000 for the probe's training features, the full 10,000-image test
# split). The encoder is the "micro" preset (96 wide, 4 blocks), not ViT-Tiny (192 wide, 12
# blocks): on 2 CPU cores ViT-Tiny trains HPM at ~23 images/s, so 3 seeds x 5 variants would need
# hours; micro runs ~120 (HPM) to ~210 (MAE) images/s on one core.
FMNIST = PretrainConfig(
    data="fashion-mnist",
    img_size=28,
    in_chans=1,
    preset="micro",
    patch_size=4,
    limit=8000,
    epochs=4,
    batch_size=128,
    warmup_epochs=1,
    blr=1.5e-3,
    ema_ramp_epochs=4,
    num_workers=0,
    log_every=20,
    progress=False,
)
# ELPV: the same encoder on the grey cells at 64 px, patch 8 (L = 64); all 2,099 training cells.
ELPV = dataclasses.replace(FMNIST, data="elpv", img_size=64, patch_size=8, limit=None, epochs=10, batch_size=64, warmup_epochs=2)
ELPV = dataclasses.replace(ELPV, ema_ramp_epochs=ELPV.epochs)


@dataclasses.dataclass(frozen=True)
class RunSpec:
    name: str
    group: str
    cfg: PretrainConfig
    evaluate_kwargs: tuple[tuple[str, object], ...] = ()  # e.g. (("limit_train", 0),): every train image


def base_runs() -> list[RunSpec]:
    runs = []
    for method in ("mae", "hpm", "lossonly"):
        for seed in SEEDS:
            runs.append(RunSpec(f"fmnist-{method}-s{seed}", "fmnist", dataclasses.replace(FMNIST, method=method, seed=seed)))
    for method in ("mae", "hpm"):
        for seed in SEEDS:
            runs.append(RunSpec(f"elpv-{method}-s{seed}", "elpv", dataclasses.replace(ELPV, method=method, seed=seed)))
    for seed in SEEDS:
        runs.append(
            RunSpec(
                f"fmnist-hpm-depth1-s{seed}",
                "fmnist-depth1",
                dataclasses.replace(FMNIST, method="hpm", seed=seed, predictor_depth=1),
            )
        )
    return runs


def equal_time_runs(results: dict[str, dict]) -> list[RunSpec]:
    """MAE given HPM's training time: epochs = round(E * t_hpm / t_mae) from the same-seed runs
    (whole epochs, so that its schedule completes). Needs those runs' results."""
    runs = []
    for seed in SEEDS:
        hpm, mae = results.get(f"fmnist-hpm-s{seed}"), results.get(f"fmnist-mae-s{seed}")
        if hpm is None or mae is None:
            continue
        epochs = max(FMNIST.epochs, round(FMNIST.epochs * hpm["wall_s"] / mae["wall_s"]))
        warmup = FMNIST.warmup_epochs * epochs / FMNIST.epochs
        cfg = dataclasses.replace(FMNIST, method="mae", seed=seed, epochs=epochs, warmup_epochs=warmup, ema_ramp_epochs=epochs)
        runs.append(RunSpec(f"fmnist-mae-equaltime-s{seed}", "fmnist-equal-time", cfg))
    return runs


def fast_ema_runs() -> list[RunSpec]:
    """HPM with the teacher's EMA decay at a constant 0.99 instead of the official 0.999 -> 0.9999.
    At this budget (248 / 320 optimizer steps) the official decay leaves the teacher mostly at its
    random initialisation (0.999^248 = 78 % of the initial weights), so its hardness predictions
    come from a nearly untrained network; at 0.99 the teacher trails the student by ~100 steps."""
    return [
        RunSpec(
            f"{name}-hpm-fastema-s{seed}",
            f"{name}-fastema",
            dataclasses.replace(base, method="hpm", seed=seed, ema_start=0.99, ema_end=0.99),
        )
        for name, base in (("elpv", ELPV), ("fmnist", FMNIST))
        for seed in SEEDS
    ]


def control_runs() -> list[RunSpec]:
    """No pretraining: the encoder at its random initialisation, evaluated the same way (the
    floor any pretraining must beat)."""
    return [
        RunSpec(f"{name}-random-init-s{seed}", f"{name}-random-init", dataclasses.replace(base, method="mae", seed=seed))
        for name, base in (("fmnist", FMNIST), ("elpv", ELPV))
        for seed in SEEDS
    ]


# -- one run ------------------------------------------------------------------------------------
def run_one(spec: RunSpec, out: Path, work: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    if spec.group.endswith("random-init"):
        return run_random_init(spec, out, work)
    run_dir = work / spec.name
    progress_file = run_dir / "study_progress.json"
    cfg = dataclasses.replace(spec.cfg, out_dir=str(run_dir))
    total = optimizer_steps_per_epoch(cfg) * cfg.epochs
    done = json.loads(progress_file.read_text()) if progress_file.exists() else dict(segments=[], wall_s=0.0)
    for k in range(len(done["segments"]), SEGMENTS):
        stop = math.ceil(total * (k + 1) / SEGMENTS)
        t0, c0 = time.perf_counter(), time.process_time()
        summary = pretrain(dataclasses.replace(cfg, stop_after=stop, resume=k > 0))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        ckpt = Path(summary["checkpoint"])
        seg = dict(opt_step=summary["position"]["opt_step"], wall_s=wall, cpu_s=cpu, last=summary["last"])
        if cfg.method != "mae":
            rho = heldout_hardness_spearman(ckpt)
            seg["heldout_spearman"] = rho.pop("masked")  # the predictor queried as it is trained
            # full-image hardness (what HPM selects by) of teacher and student, and the position-only prior
            seg["hardness_spearman"] = rho
        done["segments"].append(seg)
        done["wall_s"] += wall
        done["cpu_s"] = done.get("cpu_s", 0.0) + cpu
        progress_file.write_text(json.dumps(done, indent=1))  # after the checkpoint: resume starts at k + 1
        log.info("%s: segment %d/%d, step %d, %.0f s", spec.name, k + 1, SEGMENTS, seg["opt_step"], wall)
    ckpt = run_dir / "checkpoint.pt"
    images = total * cfg.batch_size * cfg.accum_steps
    result = dict(
        name=spec.name,
        group=spec.group,
        config={k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out_dir", "resume", "stop_after")},
        opt_steps=total,
        images_seen=images,
        wall_s=done["wall_s"],
        cpu_s=done.get("cpu_s"),  # process CPU time: with one thread, the run's one-core time even on a busy machine
        images_per_s=images / done["wall_s"],
        threads=threads,
        machine=f"{cpu_model()}, {os.cpu_count()} cores",
        spearman_curve=[(s["opt_step"], s.get("heldout_spearman")) for s in done["segments"]],
        final_train_metrics=done["segments"][-1]["last"],
        hardness_spearman=done["segments"][-1].get("hardness_spearman"),
    )
    result["eval"] = evaluate(ckpt, num_workers=0, device="cpu", **dict(spec.evaluate_kwargs))
    if cfg.data == "elpv" and cfg.method == "hpm":
        result["hardness"] = elpv_hardness(ckpt)
        result["png"] = str(defect_examples(ckpt, out / f"{spec.name}-defective.png"))
    return _save_result(out, spec.name, result)


def run_random_init(spec: RunSpec, out: Path, work: Path) -> dict:
    """The control: one optimizer step at learning rate 0 (AdamW then changes nothing, weight
    decay included) writes a checkpoint of the initial weights, which evaluate() reads."""
    run_dir = work / spec.name
    pretrain(dataclasses.replace(spec.cfg, out_dir=str(run_dir), lr=0.0, stop_after=1))
    result = dict(
        name=spec.name,
        group=spec.group,
        config={k: v for k, v in dataclasses.asdict(spec.cfg).items() if k not in ("out_dir", "resume", "stop_after")},
        opt_steps=0,
        images_seen=0,
        wall_s=0.0,
        images_per_s=0.0,
        threads=torch.get_num_threads(),
        spearman_curve=[],
        eval=evaluate(run_dir / "checkpoint.pt", num_workers=0, device="cpu", **dict(spec.evaluate_kwargs)),
    )
    return _save_result(out, spec.name, result)


def _save_result(out: Path, name: str, result: dict) -> dict:
    result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (out / "runs").mkdir(parents=True, exist_ok=True)
    path = out / "runs" / f"{name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, path)
    return result


# -- ELPV hardness check ------------------------------------------------------------------------
def auroc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties count half (Mann-Whitney U / (n_pos n_neg))."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    values = np.concatenate([pos, neg])
    order = values.argsort(kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    # average ranks over ties
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(pos) * len(neg)))


DARK_SIGMA = 1.5  # a pixel is dark if below its cell's mean - 1.5 std
DARK_FRACTION = 0.10  # a patch is dark if >= 10 % of its pixels are


@torch.no_grad()
def elpv_hardness(checkpoint: Path) -> dict:
    """Does the EMA teacher's predicted hardness concentrate on defects? On the held-out cells:

    * image level: AUROC of a cell's mean predicted hardness (z-scored over all test cells),
      defective vs clean; for comparison the AUROC of the cell's dark-pixel fraction;
    * patch level: within each cell, AUROC of predicted hardness for dark patches (>= 10 % of the
      pixels below mean - 1.5 std of the cell: cracks, but also busbars and cell edges) vs the
      others, averaged over defective cells and over clean cells separately."""
    run = load_run(checkpoint)
    teacher = run.teacher
    p = run.model.cfg.patch_size
    dataset = build_dataset(run.data_config(split="test", limit=0))  # every held-out cell
    items = [dataset[i] for i in range(len(dataset))]
    imgs = torch.stack([it[0] for it in items if it is not None])
    labels = np.array([int(it[1]) for it in items if it is not None])
    scores = torch.cat([teacher.hardness(imgs[i : i + 128]).float() for i in range(0, len(imgs), 128)]).numpy()  # (N, L)
    x = imgs[:, 0].numpy()  # (N, H, W) normalised grey
    mu = x.mean(axis=(1, 2), keepdims=True)
    sd = x.std(axis=(1, 2), keepdims=True)
    dark_px = x < mu - DARK_SIGMA * sd
    N, H, W = x.shape
    dark_frac = dark_px.reshape(N, H // p, p, W // p, p).mean(axis=(2, 4)).reshape(N, -1)  # (N, L)
    dark_patch = dark_frac >= DARK_FRACTION
    z = (scores - scores.mean()) / (scores.std() + 1e-12)
    cell_hardness = z.mean(axis=1)
    within = {0: [], 1: []}
    for n in range(N):
        if dark_patch[n].any() and not dark_patch[n].all():
            within[labels[n]].append(auroc(scores[n][dark_patch[n]], scores[n][~dark_patch[n]]))
    return dict(
        test_cells=int(N),
        defective=int(labels.sum()),
        image_auroc_mean_hardness=auroc(cell_hardness[labels == 1], cell_hardness[labels == 0]),
        image_auroc_dark_fraction=auroc(dark_px.mean(axis=(1, 2))[labels == 1], dark_px.mean(axis=(1, 2))[labels == 0]),
        patch_auroc_dark_defective=float(np.nanmean(within[1])) if within[1] else None,
        patch_auroc_dark_clean=float(np.nanmean(within[0])) if within[0] else None,
        cells_with_dark_and_light_patches={"defective": len(within[1]), "clean": len(within[0])},
        dark_rule=f"pixel < cell mean - {DARK_SIGMA} std; patch dark if >= {DARK_FRACTION:.0%} of its pixels",
    )


@torch.no_grad()
def defect_examples(checkpoint: Path, png: Path, num_images: int = 6, seed: int = 1) -> Path:
    """The visualize panels (input, hard/random mask, reconstruction, predicted hardness, loss)
    for ``num_images`` defective held-out cells chosen at random with ``seed``."""
    run = load_run(checkpoint)
    dataset = build_dataset(run.data_config(split="test", limit=0))  # every held-out cell
    defective = [i for i in range(len(dataset)) if int(dataset.labels[i]) == 1]
    chosen = sorted(np.random.default_rng(seed).choice(defective, size=min(num_images, len(defective)), replace=False))
    imgs = torch.stack([dataset[int(i)][0] for i in chosen])
    noise = torch.rand(len(chosen), run.model.cfg.num_patches, generator=torch.Generator().manual_seed(seed))
    panels, _ = render(run, imgs, noise, run.cfg.hard_ratio_max)
    png.parent.mkdir(parents=True, exist_ok=True)
    compose(panels, tile_scale(run.model.cfg.img_size)).save(png, format="PNG")
    return png


def hardness_table(runs: list[dict]) -> list[str]:
    """Markdown rows of ``elpv_hardness`` for runs that have it, then the dark rule."""
    lines = [
        "| run | image AUROC, mean hardness | image AUROC, dark fraction | patch AUROC dark vs rest, defective cells | same, clean cells |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in sorted(runs, key=lambda r: r["name"]):
        h = r["hardness"]
        lines.append(
            f"| {r['name']} | {h['image_auroc_mean_hardness']:.3f} | {h['image_auroc_dark_fraction']:.3f} | "
            f"{h['patch_auroc_dark_defective'] or float('nan'):.3f} | {h['patch_auroc_dark_clean'] or float('nan'):.3f} |"
        )
    return [*lines, "", f"Dark rule: {runs[0]['hardness']['dark_rule']}."]


# -- orchestration --------------------------------------------------------------------------------
def load_results(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def _worker(args: tuple[RunSpec, Path, Path, int]) -> str:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec, out, work, threads = args
    run_one(spec, out, work, threads)
    return spec.name


def run_all(out: Path, work: Path, jobs: int, threads: int, only: set[str] | None) -> None:
    def pending(specs: list[RunSpec]) -> list[RunSpec]:
        done = load_results(out)
        return [s for s in specs if s.name not in done and (only is None or s.group in only)]

    phases = [base_runs, lambda: equal_time_runs(load_results(out)), control_runs, fast_ema_runs]
    for phase in phases:
        todo = pending(phase())
        if not todo:
            continue
        log.info("running %d runs: %s", len(todo), ", ".join(s.name for s in todo))
        if jobs == 1:
            for spec in todo:
                _worker((spec, out, work, threads))
                write_report(out)
        else:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(jobs, maxtasksperchild=1) as pool:
                for name in pool.imap_unordered(_worker, [(s, out, work, threads) for s in todo]):
                    log.info("finished %s", name)
                    write_report(out)
    write_report(out)


# -- report -------------------------------------------------------------------------------------
def _ms(values: list[float], pct: bool = True) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "-"
    k = 100.0 if pct else 1.0
    mean = statistics.fmean(values) * k
    sd = statistics.stdev(values) * k if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


def write_report(out: Path) -> Path:
    """docs/quality/results.md: one row per (group, method) with mean ± std over the finished seeds."""
    results = load_results(out)
    rows = {}
    for r in results.values():
        key = (r["group"], r["config"]["method"], r["config"].get("predictor_depth"))
        rows.setdefault(key, []).append(r)
    lines = [
        "# Quality study results (generated by `python -m hpm_pretrain.study`; do not edit)",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}. "
        "Means ± std over the finished seeds (n). Accuracies in %; wall time = training only.",
        "",
        "| group | method | n | epochs | kNN acc | linear acc | wall s | images/s | held-out Spearman (per quarter of training) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for (group, method, depth), rs in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        curves = [[v for _, v in r["spearman_curve"]] for r in rs]
        curve = "-"
        if curves and all(c and c[0] is not None for c in curves):
            curve = " → ".join(f"{statistics.fmean(vals):.3f}" for vals in zip(*curves))
        epochs = "/".join(str(e) for e in sorted({r["config"]["epochs"] for r in rs} if rs[0]["opt_steps"] else {0}))
        label = method + (f" (predictor depth {depth})" if depth else "")
        if group.endswith("random-init"):
            label = "none (random init)"
        elif group.endswith("fastema"):
            label = "hpm (teacher EMA 0.99)"
        elif group.endswith("equal-time"):
            label = "mae (HPM's wall time)"
        lines.append(
            f"| {group} | {label} | {len(rs)} | {epochs} | {_ms([r['eval']['knn_acc'] for r in rs])} | "
            f"{_ms([r['eval']['linear_acc'] for r in rs])} | {statistics.fmean(r['wall_s'] for r in rs):.0f} | "
            f"{statistics.fmean(r['images_per_s'] for r in rs):.1f} | {curve} |"
        )
    hard = [r for r in results.values() if "hardness" in r]
    if hard:
        lines += ["", "## ELPV: does the teacher's predicted hardness concentrate on defects? (HPM runs, held-out cells)", ""]
        lines += hardness_table(hard)
    path = out / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpm_pretrain.study", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--protocol",
        choices=("fair", "small"),
        default="fair",
        help="fair: each method at its best blr, 192-wide encoder (hpm_pretrain/fair_study.py; docs/quality/fair); "
        "small: the first study, micro encoder at one blr (docs/quality)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results (committed): runs/*.json, results.md, PNGs")
    parser.add_argument("--work", type=Path, default=None, help="checkpoints (not committed)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--max-runs", type=int, default=None, help="fair: start at most this many runs, then stop")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated groups. fair: fmnist-sweep, fmnist-seeds, fmnist-random-init, fmnist-ablation, "
        "fmnist-equal-compute, elpv-sweep, elpv-seeds, elpv-random-init. small: fmnist, elpv, fmnist-equal-time, "
        "fmnist-depth1, fmnist-random-init, elpv-random-init, elpv-fastema, fmnist-fastema",
    )
    parser.add_argument("--report", action="store_true", help="only rewrite results.md from the finished runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    fair = args.protocol == "fair"
    out = args.out or Path("docs/quality/fair" if fair else "docs/quality")
    work = args.work or Path("runs/quality-fair" if fair else "runs/quality")
    if fair:
        from . import fair_study

        report, run = fair_study.write_report, fair_study.run_all
    else:
        report, run = write_report, run_all
    if args.report:
        print(report(out))
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.max_runs is not None and (not fair or args.max_runs < 1):
        parser.error("--max-runs needs --protocol fair and a value >= 1")
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    only = set(args.only.split(",")) if args.only else None
    if fair:
        run(out, work, args.jobs, threads, only, args.max_runs)
    else:
        run(out, work, args.jobs, threads, only)
    print(out / "results.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
