"""``make demo``: a short HPM pretraining on ELPV solar-cell images with the fused ops, then the
hardness-map PNG, throughput and where everything is.

ELPV (PyPI ``elpv-dataset``; 2,624 grey electroluminescence images of solar cells, some with
cracks) stands in for a factory-inspection dataset. Its images are licensed CC BY-NC-SA 4.0
(non-commercial): the package is installed from PyPI, never copied into this repository.
The settings fit about a minute and a half of training on 2 CPU cores; on a GPU the same command runs
on CUDA with bf16 autocast and the Triton kernels.

The picture (``visualize``) shows, per held-out cell, the EMA teacher's predicted hardness (what HPM
selects the hard patches by) beside the student's own loss predictor and the actual per-patch loss;
the demo prints each map's Spearman correlation with the actual loss on 256 held-out cells. The
teacher's EMA is scaled to the run's length by default (``--teacher-ema run-length``): with the
official 0.999 -> 0.9999 per step, 128 steps leave the teacher 88 % its random initialisation and
its map says nothing yet (``--teacher-ema official`` to see it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from . import schedule
from .data import build_dataset
from .export import load_run
from .train import PretrainConfig, optimizer_steps_per_epoch, pretrain
from .visualize import hardness_spearman, visualize

DEMO = PretrainConfig(
    out_dir="runs/demo",
    data="elpv",
    img_size=64,
    in_chans=1,
    preset="micro",
    patch_size=8,
    method="hpm",
    ops="fused",
    epochs=4,
    batch_size=64,
    warmup_epochs=1,
    blr=1.5e-3,
    log_every=8,
    num_workers=2,
)


@torch.no_grad()
def heldout_hardness_spearman(checkpoint: Path, num_images: int = 256, seed: int = 0) -> dict[str, float]:
    """``visualize.hardness_spearman`` on held-out (test split) images under random masks: the
    student's predictor queried as trained (``masked``), the full-image hardness maps as pictured
    (``teacher``, ``student``) and the position-only prior (``position``)."""
    run = load_run(checkpoint)
    dataset = build_dataset(run.data_config(split="test", limit=num_images))
    imgs = torch.stack([item[0] for item in (dataset[i] for i in range(len(dataset))) if item is not None])
    noise = torch.rand(imgs.shape[0], run.model.cfg.num_patches, generator=torch.Generator().manual_seed(seed))
    return hardness_spearman(run, imgs, noise)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpm_pretrain.demo", description=__doc__)
    parser.add_argument("--out-dir", default=DEMO.out_dir)
    parser.add_argument("--epochs", type=int, default=DEMO.epochs)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (a quick check)")
    parser.add_argument(
        "--teacher-ema",
        choices=("run-length", "official"),
        default="run-length",
        help="run-length (default): the official EMA schedule scaled to this run's length "
        "(schedule.ema_for_run_length); official: 0.999 -> 0.9999 per step over 100 epochs, for long runs",
    )
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(DEMO, out_dir=args.out_dir, epochs=args.epochs, limit=args.limit)
    if args.teacher_ema == "run-length":
        start, end, ramp = schedule.ema_for_run_length(optimizer_steps_per_epoch(cfg) * cfg.epochs, cfg.epochs)
        cfg = dataclasses.replace(cfg, ema_start=start, ema_end=end, ema_ramp_epochs=ramp)
    start = time.perf_counter()
    summary = pretrain(cfg)
    train_s = time.perf_counter() - start
    png, vis = visualize(Path(cfg.out_dir) / "checkpoint.pt", split="test", num_images=8)
    rows = [json.loads(line) for line in Path(summary["metrics"]).read_text().splitlines()]
    # The first window holds start-up; leave it out when there are others.
    speeds = [r["images_per_s"] for r in (rows[1:] or rows) if r.get("images_per_s")]
    last = rows[-1]
    print("\nHPM demo on ELPV solar cells (CC BY-NC-SA 4.0 data, installed from PyPI)")
    print(f"  training: {last['step']} optimizer steps, {cfg.epochs} epochs, {train_s:.0f} s wall")
    if speeds:
        print(f"  throughput: {statistics.median(speeds):.1f} images/s (median over log windows)")
    print(f"  last loss: reconstruction {last['loss_rec']:.4f}, loss prediction {last['loss_pred']:.4f}")
    print(f"  Spearman(predicted, actual per-patch loss): {last['spearman']:.3f} on the last training batch")
    ckpt = Path(cfg.out_dir) / "checkpoint.pt"
    pictured = heldout_hardness_spearman(ckpt)
    print(f"  Spearman on 256 held-out test images (student predictor, masked query as trained): {pictured['masked']:.3f}")
    print("  Spearman of the pictured hardness maps with the actual per-patch loss, 256 held-out cells, random masks:")
    for who, what in (("teacher", "EMA teacher (what HPM selects by)"), ("student", "student's predictor")):
        if who in pictured:
            print(f"    {what:34s} {pictured[who]:.3f}   (pictured cells: {vis.get('spearman_' + who, float('nan')):.3f})")
    print(f"    {'position only (baseline)':34s} {pictured['position']:.3f}   (mean loss at each position over the other cells)")
    print(
        f"  teacher EMA decay {cfg.ema_start:.4f} -> {cfg.ema_end:.4f} over {cfg.ema_ramp_epochs} epochs "
        f"(--teacher-ema {args.teacher_ema}; with the official\n   0.999 -> 0.9999 a run this short leaves the "
        "teacher mostly at its random initialisation)"
    )
    print(f"  hardness maps: {png}")
    print(f"  run directory: {cfg.out_dir} (checkpoint.pt, metrics.jsonl, config.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
