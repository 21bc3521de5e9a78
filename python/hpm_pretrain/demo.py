"""``make demo``: a short HPM pretraining on ELPV solar-cell images with the fused ops, then the
hardness-map PNG, throughput and where everything is.

ELPV (PyPI ``elpv-dataset``; 2,624 grey electroluminescence images of solar cells, some with
cracks) stands in for a factory-inspection dataset. Its images are licensed CC BY-NC-SA 4.0
(non-commercial): the package is installed from PyPI, never copied into this repository.
The settings fit about a minute and a half of training on 2 CPU cores; on a GPU the same command runs
on CUDA with bf16 autocast and the Triton kernels.
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

from .data import build_dataset
from .export import load_run
from .train import PretrainConfig, pretrain, spearman
from .visualize import visualize

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
def heldout_spearman(checkpoint: Path, num_images: int = 256, seed: int = 0) -> float:
    """Spearman correlation between the student's predicted and actual per-patch loss on held-out
    (test split) images under random masks, the way the predictor is trained."""
    run = load_run(checkpoint)
    dataset = build_dataset(run.data_config(split="test", limit=num_images))
    imgs = torch.stack([item[0] for item in (dataset[i] for i in range(len(dataset))) if item is not None])
    model, cfg = run.model, run.cfg
    noise = torch.rand(imgs.shape[0], model.cfg.num_patches, generator=torch.Generator().manual_seed(seed))
    sel = model.ops.select_patches(noise, noise, cfg.mask_ratio, 0.0)
    pixels, scores = model(imgs, sel)
    _, per_patch = model.ops.patch_mse_loss(pixels, imgs, model.cfg.patch_size, sel.ids_mask, cfg.norm_pix)
    return spearman(scores, per_patch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpm_pretrain.demo", description=__doc__)
    parser.add_argument("--out-dir", default=DEMO.out_dir)
    parser.add_argument("--epochs", type=int, default=DEMO.epochs)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only (a quick check)")
    args = parser.parse_args(argv)
    cfg = dataclasses.replace(DEMO, out_dir=args.out_dir, epochs=args.epochs, limit=args.limit)
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
    held_out = heldout_spearman(Path(cfg.out_dir) / "checkpoint.pt")
    print(f"  Spearman on 256 held-out test images (student predictor, random masks): {held_out:.3f}")
    if vis.get("spearman") is not None:
        print(
            f"  Spearman of the EMA teacher on the {vis.get('num_images', 8)} pictured test images: {vis['spearman']:.3f}"
            " (decay 0.999 per step: after a short run the teacher is still mostly its initial weights)"
        )
    print(f"  hardness maps: {png}")
    print(f"  run directory: {cfg.out_dir} (checkpoint.pt, metrics.jsonl, config.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
