"""Median time of one training step per variant, variants interleaved (A B C A B C ...), and the
same-run ratio of each to the official-structure HPM step.

    python benchmarks/trainer_step.py                        # both shapes, every variant
    python benchmarks/trainer_step.py --shapes tta_32_b256 --variants official/hpm,hpm --repeats 10
    python benchmarks/trainer_step.py --report               # the table into RESULTS.md

Shapes: ``tiny_224_b16`` (ViT-Tiny, 224 px, patch 16, RGB, batch 16) and ``tta_32_b256`` (the
time-to-accuracy protocol's model: 192 wide / 6 blocks encoder, 128 wide / 2 blocks decoders,
32 px grey, patch 4, batch 256). Variants: ``official/hpm`` (benchmarks/official_step.py: the
teacher runs both decoders, per-sample selection loop, eager losses) and the trainer's
``forward_step`` + backward + AdamW + EMA as ``hpm_pretrain.train.pretrain`` runs it: ``hpm``
(the official recipe), ``lossonly-d0`` (loss-only, predictor depth 0), ``mae``, each also
``+compile`` (``--compile``: the student and the teacher's hardness pass under torch.compile; the
first step, which compiles, is reported apart and not in the median; inductor's cache starts
empty, as on a user's first run). Hard ratio 0.5 (the end of
HPM's ramp: the teacher runs), norm-pix on, fp32, random images (the data path is not timed).
CPU: ``torch.set_num_threads`` = the usable cores. Results: JSON under benchmarks/results/
(``--json``), ``--report`` renders every such JSON into RESULTS.md between the step-ratio markers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

# A cold compile, as a user's first run has: inductor's on-disk cache starts empty in this process.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="hpm-trainer-step-inductor-"))

import numpy as np
import torch
from interleave import interleave, record
from official_step import OfficialOps, official_step
from report import write_section

from hpm_pretrain.model import HPMViT, model_config, param_groups
from hpm_pretrain.train import PretrainConfig, compile_models, ema_update, forward_step

HERE = Path(__file__).resolve().parent
HARD_RATIO = 0.5


@dataclasses.dataclass(frozen=True)
class Shape:
    img: int
    patch: int
    in_chans: int
    batch: int
    arch: dict


SHAPES = {
    "tiny_224_b16": Shape(224, 16, 3, 16, {}),
    "tta_32_b256": Shape(32, 4, 1, 256, dict(depth=6, decoder_depth=2)),
}
VARIANTS = ("official/hpm", "hpm", "hpm+compile", "lossonly-d0", "lossonly-d0+compile", "mae", "mae+compile")


def make_step(variant: str, shape: Shape, device: torch.device):
    """A closure running one optimizer step of ``variant``; returns the loss read on the host."""
    name, _, compiled = variant.partition("+")
    official = name == "official/hpm"
    method = "hpm" if official else name.split("-")[0]
    depth = 0 if name.endswith("-d0") else None
    torch.manual_seed(0)
    mcfg = model_config(
        "tiny",
        img_size=(shape.img, shape.img),
        patch_size=shape.patch,
        in_chans=shape.in_chans,
        predictor=method != "mae",
        predictor_depth=depth,
        **shape.arch,
    )
    student = HPMViT(mcfg, OfficialOps(np.random.default_rng(0)) if official else "fused").to(device)
    teacher = copy.deepcopy(student).requires_grad_(False) if method == "hpm" else None
    if compiled:
        compile_models(student, teacher)
    opt = torch.optim.AdamW(param_groups(student, 0.05), lr=1e-4, betas=(0.9, 0.95))
    pcfg = PretrainConfig(method=method, norm_pix=True)
    hard = HARD_RATIO if method == "hpm" else 0.0
    gen = torch.Generator(device=device).manual_seed(0)
    imgs = torch.randn(shape.batch, shape.in_chans, shape.img, shape.img, generator=gen, device=device)

    def step() -> float:
        if official:
            return official_step(student, teacher, opt, imgs, pcfg.mask_ratio, hard, pcfg.norm_pix, 0.999)
        noise = torch.rand(shape.batch, mcfg.num_patches, generator=gen, device=device)
        out = forward_step(student, teacher, imgs, noise, pcfg, hard)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if teacher is not None:
            ema_update(teacher, student, 0.999)
        return float(out.loss.detach())

    return step


def measure(shape_name: str, variants: list[str], repeats: int, warmup: int, device: torch.device) -> dict:
    shape = SHAPES[shape_name]
    steps, first = {}, {}
    for v in variants:
        steps[v] = make_step(v, shape, device)
        t0 = time.perf_counter()
        steps[v]()
        first[v] = time.perf_counter() - t0
    timings = interleave(steps, repeats, warmup, device)
    return record(shape_name, shape, dict(**timings, first_step_s=first), repeats, warmup, device, "benchmarks/trainer_step.py")


def report_lines(runs: list[dict]) -> list[str]:
    lines = [
        "Median seconds per optimizer step, variants interleaved in one process; `vs official` = official-structure "
        "step time / this variant's (> 1: faster); `first step` includes torch.compile's compilation.",
        "",
    ]
    for r in runs:
        base = r["median_s"].get("official/hpm")
        lines += [
            f"**{r['shape']}** ({r['shape_info']}) — {r['machine']}, torch {r['torch']}, {r['date']}, "
            f"median of {r['repeats']} after {r['warmup']} warm-up; `{r['command']}`",
            "",
            "| variant | s/step | min-max | vs official | first step (s) |",
            "|---|---:|---:|---:|---:|",
        ]
        for v, t in r["median_s"].items():
            ratio = f"{base / t:.2f}x" if base else "-"
            lines.append(f"| {v} | {t:.3f} | {r['min_s'][v]:.3f}-{r['max_s'][v]:.3f} | {ratio} | {r['first_step_s'][v]:.1f} |")
        lines.append("")
    return lines


def write_report(paths: list[Path], results_md: Path) -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    lines = ["## Training step vs the official structure, --compile on and off", "", *report_lines(runs)]
    print(write_section(results_md, "step-ratio", lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="default: benchmarks/results/step-<device>-<shape>.json")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.report:
        write_report(sorted((HERE / "results").glob("step-*.json")), args.results_md)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    for shape in args.shapes.split(","):
        r = measure(shape, args.variants.split(","), args.repeats, args.warmup, device)
        print("\n".join(report_lines([r])), flush=True)
        path = args.json or HERE / "results" / f"step-{device.type}-{shape}.json"
        path.write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
