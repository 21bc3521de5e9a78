"""Time to accuracy: kNN accuracy of the frozen encoder against training wall time, per setting.

    python benchmarks/time_to_accuracy.py                      # every setting, seed 0 (resumes)
    python benchmarks/time_to_accuracy.py --settings mae,lossonly-d0 --seeds 0,1
    python benchmarks/time_to_accuracy.py --report             # table + plot into RESULTS.md
    make bench-tta                                             # both

Protocol (issue 12): Fashion-MNIST, the first 20,000 training images, 32 px, patch 4; encoder 192
wide / 6 blocks / 3 heads, decoders 128 wide / 2 blocks / 4 heads; norm-pix on; batch 256; blr
1.5e-4; 1 warm-up epoch then cosine; 4 epochs; fp32; ``torch.set_num_threads`` = the cores this
process may use. Each setting changes only what its name says. After the last epoch (every epoch
with ``--every-epoch``) the trainer's ``on_epoch_end`` hook evaluates the student's encoder (kNN,
k = 20, on all 60k training / 10k test images; after the last epoch also the linear probe);
evaluation time is not training time.
``train_s`` is the wall time of ``pretrain()`` (data, model build, torch.compile, steps,
checkpoints) up to the end of that epoch.

One JSON per (setting, seed) under ``--out`` (default benchmarks/results/tta/); an existing one is
skipped, so an interrupted sweep resumes where it stopped. Run it alone on the machine: another
busy process changes every time. The report (``--report``) writes the table, the time at which each
setting first reached ``--target`` kNN, and ``tta.png`` (kNN vs training time, one line per setting,
the seeds' spread as a band), into the section of benchmarks/RESULTS.md between the tta markers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from report import write_section

from hpm_pretrain.evaluate import evaluate
from hpm_pretrain.machine import cpu_model
from hpm_pretrain.protocols import FASHION_MNIST_TINY6
from hpm_pretrain.train import pretrain

HERE = Path(__file__).resolve().parent

PROTOCOL = FASHION_MNIST_TINY6  # hpm_pretrain/protocols.py: the study shares it

# name -> (overrides of PROTOCOL, what it is). "per-item" is the trainer's data path before the
# batched augmentation op; "d0" a loss predictor of depth 0 (a head on the reconstruction decoder);
# "5ep" 5 epochs instead of 4 (warm-up 1, cosine over 5).
SETTINGS: dict[str, tuple[dict, str]] = {
    "mae": (dict(method="mae"), "MAE, batched augmentation"),
    "lossonly-d0": (dict(method="lossonly", predictor_depth=0), "loss-only, predictor depth 0"),
    "hpm-d0": (dict(method="hpm", predictor_depth=0), "HPM, predictor depth 0"),
    "lossonly": (dict(method="lossonly"), "loss-only, predictor depth 2 (official shape)"),
    "hpm": (dict(method="hpm"), "HPM official recipe, batched augmentation"),
    "mae-per-item": (dict(method="mae", augmentation="per-item"), "MAE, per-item torchvision (before)"),
    "hpm-per-item": (dict(method="hpm", augmentation="per-item"), "HPM official recipe, per-item (before)"),
    "lossonly-d0-5ep": (dict(method="lossonly", predictor_depth=0, epochs=5), "loss-only, predictor depth 0, 5 epochs"),
    "lossonly-d0-compile": (dict(method="lossonly", predictor_depth=0, compile=True), "loss-only d0, --compile"),
    "mae-compile": (dict(method="mae", compile=True), "MAE, --compile"),
}


def run_one(name: str, seed: int, out: Path, work: Path, epochs: int, limit: int | None, every_epoch: bool) -> dict:
    overrides, what = SETTINGS[name]
    run_dir = work / f"{name}-s{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = dataclasses.replace(PROTOCOL, **{"epochs": epochs, **overrides}, seed=seed, out_dir=str(run_dir))
    if limit is not None:
        cfg = dataclasses.replace(cfg, limit=limit)
    points: list[dict] = []

    def on_epoch_end(info: dict) -> None:
        last = info["epoch"] == cfg.epochs - 1
        if not (last or every_epoch):
            return
        t0 = time.perf_counter()
        ev = evaluate(info["checkpoint"], limit_train=0 if limit is None else limit, device="cpu", num_workers=0, linear=last)
        points.append(
            dict(
                epoch=info["epoch"] + 1,
                train_s=info["train_seconds"],
                knn=ev["knn_acc"],
                linear=ev["linear_acc"],
                eval_s=time.perf_counter() - t0,
            )
        )
        print(f"  {name} s{seed} epoch {info['epoch'] + 1}: {info['train_seconds']:.0f} s, kNN {ev['knn_acc']:.4f}", flush=True)

    summary = pretrain(cfg, on_epoch_end=on_epoch_end)
    log = Path(summary["metrics"])
    metrics = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    result = dict(
        setting=name,
        what=what,
        seed=seed,
        config=dataclasses.asdict(cfg),
        points=points,
        train_s=summary["train_seconds"],
        steps=summary["position"]["opt_step"],
        images_per_s=statistics.median([m["images_per_s"] for m in metrics if m.get("images_per_s")] or [float("nan")]),
        machine=f"{cpu_model()}, {torch.get_num_threads()} threads",
        torch=torch.__version__,
        date=str(datetime.date.today()),
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )
    (out / f"{name}-s{seed}.json").write_text(json.dumps(result, indent=1))
    shutil.rmtree(run_dir, ignore_errors=True)
    return result


# -- report -------------------------------------------------------------------------------------
def load(out: Path) -> dict[str, list[dict]]:
    by_setting: dict[str, list[dict]] = {}
    for f in sorted(out.glob("*.json")):
        r = json.loads(f.read_text())
        by_setting.setdefault(r["setting"], []).append(r)
    return {k: by_setting[k] for k in SETTINGS if k in by_setting}


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def report_lines(results: dict[str, list[dict]], target: float, budget: float) -> list[str]:
    any_run = next(iter(results.values()))[0]
    dates = ", ".join(sorted({r["date"] for rs in results.values() for r in rs}))
    lines = [
        f"Machine: {any_run['machine']}; torch {any_run['torch']}; data-loader workers 0; one run at a time ({dates}). "
        "Commands (each run's JSON under results/tta/ records its own): "
        + "; ".join(
            sorted(
                {f"`python benchmarks/{r['command'].removeprefix('python benchmarks/')}`" for rs in results.values() for r in rs}
            )
        )
        + "; then `python benchmarks/time_to_accuracy.py --report`.",
        "",
        f"Goal (issue 12): kNN >= {target:g} % within {budget:g} s of training. One row per evaluated epoch end "
        "(mean ± sd over seeds): training wall time so far (data, model, compile, steps, checkpoints; evaluation "
        "excluded), kNN (k = 20, all 60k training features, 10k test images), linear probe (last epoch).",
        "",
        "| setting | seeds | epoch | training s | s/step | kNN % | linear % | goal |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, runs in results.items():
        epochs = sorted({p["epoch"] for r in runs for p in r["points"]})
        for e in epochs:
            pts = [p for r in runs for p in r["points"] if p["epoch"] == e]
            knn = [p["knn"] * 100 for p in pts]
            ts = [p["train_s"] for p in pts]
            linear = [p["linear"] * 100 for p in pts if p.get("linear") is not None]
            step = [r["train_s"] / r["steps"] for r in runs]
            met = all(k >= target for k in knn) and all(t <= budget for t in ts)
            lines.append(
                f"| {name}: {runs[0]['what']} | {len(pts)} | {e} | {_mean_sd(ts)} | {statistics.mean(step):.2f} | "
                f"{_mean_sd(knn)} | {_mean_sd(linear)} | {'MET' if met else 'missed'} |"
            )
    lines += ["", "![kNN vs training time](results/tta.png)", ""]
    return lines


def plot(results: dict[str, list[dict]], path: Path, target: float, budget: float) -> None:
    """kNN vs training time, one line per setting (seed mean), min-max band over seeds. PIL only."""
    from PIL import Image, ImageDraw

    W, H, left, right, top, bottom = 900, 560, 70, 260, 20, 50
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [(p["train_s"], p["knn"] * 100) for rs in results.values() for r in rs for p in r["points"]]
    x1 = max(max(x for x, _ in pts), budget) * 1.05
    y0, y1 = min(min(y for _, y in pts), target) - 2, max(max(y for _, y in pts), target) + 1

    def xy(x: float, y: float) -> tuple[float, float]:
        return left + x / x1 * (W - left - right), top + (y1 - y) / (y1 - y0) * (H - top - bottom)

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    for k in range(6):
        x = x1 * k / 5
        px, _ = xy(x, y0)
        d.line([px, H - bottom, px, H - bottom + 4], fill="black")
        d.text((px - 12, H - bottom + 8), f"{x:.0f}", fill="black")
        y = y0 + (y1 - y0) * k / 5
        _, py = xy(0, y)
        d.line([left - 4, py, left, py], fill="black")
        d.text((left - 40, py - 6), f"{y:.1f}", fill="black")
    d.text(((W - right) / 2 - 60, H - 20), "training wall time (s)", fill="black")
    d.text((5, 5), "kNN %", fill="black")
    gx, gy = xy(budget, target)
    d.line([xy(0, target), xy(x1, target)], fill=(160, 160, 160))
    d.line([xy(budget, y0), xy(budget, y1)], fill=(160, 160, 160))
    d.text((gx + 4, gy - 14), f"goal: {target:g} by {budget:g} s", fill=(110, 110, 110))
    colours = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
    ]
    for i, (name, runs) in enumerate(results.items()):
        c = colours[i % len(colours)]
        n = min(len(r["points"]) for r in runs)
        mean = [
            (statistics.mean(r["points"][e]["train_s"] for r in runs), statistics.mean(r["points"][e]["knn"] * 100 for r in runs))
            for e in range(n)
        ]
        for e in range(n):
            ks = [r["points"][e]["knn"] * 100 for r in runs]
            x, _ = xy(mean[e][0], 0)
            d.line([x, xy(0, min(ks))[1], x, xy(0, max(ks))[1]], fill=c, width=2)
        d.line([xy(*p) for p in mean], fill=c, width=2)
        for p in mean:
            px, py = xy(*p)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], fill=c)
        d.line([W - right + 15, top + 10 + 18 * i, W - right + 35, top + 10 + 18 * i], fill=c, width=3)
        d.text((W - right + 40, top + 4 + 18 * i), f"{name} ({len(runs)} seed{'s' if len(runs) > 1 else ''})", fill="black")
    img.save(path)


def write_report(out: Path, results_md: Path, target: float, budget: float) -> None:
    results = load(out)
    if not results:
        raise SystemExit(f"no results under {out}: run the benchmark first")
    (results_md.parent / "results").mkdir(parents=True, exist_ok=True)
    plot(results, results_md.parent / "results" / "tta.png", target, budget)
    lines = ["## Time to accuracy (Fashion-MNIST, CPU)", "", *report_lines(results, target, budget)]
    print(write_section(results_md, "tta", lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from: {', '.join(SETTINGS)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--epochs", type=int, default=PROTOCOL.epochs)
    ap.add_argument("--limit", type=int, default=None, help="training images (and kNN train features); default: the protocol's")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tta")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "hpm-tta")
    ap.add_argument("--every-epoch", action="store_true", help="evaluate kNN after every epoch (default: the last only)")
    ap.add_argument("--report", action="store_true", help="only write the report from the JSON files")
    ap.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--target", type=float, default=79.0, help="kNN goal (%%)")
    ap.add_argument("--budget", type=float, default=370.0, help="training-time goal (s)")
    args = ap.parse_args(argv)
    if args.report:
        write_report(args.out, args.results_md, args.target, args.budget)
        return 0
    names = [s for s in args.settings.split(",") if s]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {', '.join(SETTINGS)}")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            if (args.out / f"{name}-s{seed}.json").exists():
                print(f"{name} s{seed}: done already ({args.out / f'{name}-s{seed}.json'})")
                continue
            print(f"{name} s{seed}: training", flush=True)
            r = run_one(name, seed, args.out, args.work, args.epochs, args.limit, args.every_epoch)
            print(f"{name} s{seed}: {r['train_s']:.0f} s, kNN {r['points'][-1]['knn']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
