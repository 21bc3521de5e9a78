"""Median time of one training step of the reference trainer, variants interleaved (A B C A B C ...).

    python benchmarks/trainer_step.py [--preset tiny] [--img 32] [--patch 4] [--batch 64] [--repeats 20]

Variants: HPM with --ops fused, HPM with --ops reference, MAE with --ops fused. A step is teacher
scores (HPM) + selection + student forward + losses + backward + AdamW + EMA, on random images
(the data loader is not timed). CPU: torch.set_num_threads(2). Prints images/s per variant and the
HPM/MAE and fused/reference ratios, with the machine, versions, date and this command.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import statistics
import sys
import time

import torch

from hpm_pretrain.machine import cpu_model
from hpm_pretrain.model import HPMViT, model_config, param_groups
from hpm_pretrain.train import PretrainConfig, ema_update, forward_step


def make_variant(method: str, ops: str, args, device):
    torch.manual_seed(0)
    mcfg = model_config(args.preset, img_size=(args.img, args.img), patch_size=args.patch, in_chans=3, predictor=method != "mae")
    student = HPMViT(mcfg, ops).to(device)
    teacher = copy.deepcopy(student).requires_grad_(False) if method == "hpm" else None
    opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95))
    cfg = PretrainConfig(method=method, ops=ops)
    gen = torch.Generator(device=device).manual_seed(0)
    imgs = torch.randn(args.batch, 3, args.img, args.img, generator=gen, device=device)

    def step():
        noise = torch.rand(args.batch, mcfg.num_patches, generator=gen, device=device)
        out = forward_step(student, teacher, imgs, noise, cfg, 0.5 if method == "hpm" else 0.0)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if teacher is not None:
            ema_update(teacher, student, 0.999)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--img", type=int, default=32)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(2)
    variants = {name: make_variant(*name.split("/"), args, device) for name in ("hpm/fused", "hpm/reference", "mae/fused")}
    times = {name: [] for name in variants}
    for i in range(args.warmup + args.repeats):
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads"
    print(f"date={datetime.date.today()} machine={where} torch={torch.__version__} command={' '.join(sys.argv)}")
    print(
        f"{args.preset} {args.img}px p={args.patch} batch={args.batch}, median of {args.repeats} steps after {args.warmup} warm-up"
    )
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(
            f"  {name:14s} {t * 1e3:8.1f} ms/step  {args.batch / t:8.1f} images/s  (min {min(times[name]) * 1e3:.1f}, max {max(times[name]) * 1e3:.1f})"
        )
    print(f"  HPM/MAE step-time ratio (fused): {med['hpm/fused'] / med['mae/fused']:.2f}")
    print(f"  reference/fused step-time ratio (HPM): {med['hpm/reference'] / med['hpm/fused']:.2f}")


if __name__ == "__main__":
    main()
