"""``patch_mae`` speed: one training step of an MAE-interface and an official-HPM-interface model,
unpatched vs patched, interleaved (A B C D A B C D ...) in one process; same-run ratios.

    python benchmarks/integrations_step.py                 # both shapes
    python benchmarks/integrations_step.py --report        # the table into RESULTS.md

Models: tests/mae_interface_models.py (written to the reference MAE and the official HPM method
contracts, timm blocks). A step: forward, backward, AdamW; for HPM the official engine's step
(the EMA teacher's full forward, ``generate_mask`` at hard ratio 0.5 (the end of the ramp: its
per-image loop runs), the student, ``forward_loss`` and the relative ``forward_learning_loss``)
plus the EMA update. Patched: ``patch_mae`` on the student and the teacher. norm-pix on, fp32,
random images. CPU: ``torch.set_num_threads`` = the usable cores. JSON under benchmarks/results/
(integrations-<device>-<shape>.json); ``--report`` renders them between the integrations markers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch
from interleave import interleave, record
from report import write_section

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/mae_interface_models.py

from hpm_kernels.integrations import patch_mae  # noqa: E402
from tests.mae_interface_models import TinyHPM, TinyMAE, hpm_step  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Shape:
    img: int
    patch: int
    in_chans: int
    batch: int
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    decoder_embed_dim: int = 128
    decoder_depth: int = 4
    decoder_num_heads: int = 4


SHAPES = {
    "tiny_224_b16": Shape(224, 16, 3, 16),
    "tta_32_b256": Shape(32, 4, 1, 256, depth=6, decoder_depth=2),
}
VARIANTS = ("mae", "mae+patch_mae", "hpm", "hpm+patch_mae")


def make_step(variant: str, shape: Shape, device: torch.device):
    name, _, patched = variant.partition("+")
    torch.manual_seed(0)
    kw = {k: v for k, v in dataclasses.asdict(shape).items() if k not in ("img", "patch", "batch")}
    kw.update(img_size=shape.img, patch_size=shape.patch, norm_pix_loss=True)
    model = (TinyMAE if name == "mae" else TinyHPM)(**kw).to(device)
    teacher = copy.deepcopy(model).requires_grad_(False) if name == "hpm" else None
    if patched:
        patch_mae(model)
        if teacher is not None:
            patch_mae(teacher)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4, betas=(0.9, 0.95))
    imgs = torch.randn(shape.batch, shape.in_chans, shape.img, shape.img, device=device)

    def step() -> None:
        if name == "mae":
            loss = model(imgs)[0]
        else:
            loss, _ = hpm_step(model, teacher, imgs, epoch=3, total_epoch=4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if teacher is not None:
            with torch.no_grad():
                for t, s in zip(teacher.parameters(), model.parameters()):
                    t.lerp_(s, 1 - 0.999)

    return step


def measure(shape_name: str, variants: list[str], repeats: int, warmup: int, device: torch.device) -> dict:
    shape = SHAPES[shape_name]
    timings = interleave({v: make_step(v, shape, device) for v in variants}, repeats, warmup, device)
    return record(shape_name, shape, timings, repeats, warmup, device, "benchmarks/integrations_step.py")


def report_lines(runs: list[dict]) -> list[str]:
    lines = [
        "## `patch_mae`: MAE- and HPM-interface models, unpatched vs patched",
        "",
        "Median seconds per training step, the four variants interleaved in one process; `speed-up` = the "
        "unpatched step's time / the patched one's (same interface, same run).",
        "",
    ]
    for r in runs:
        lines += [
            f"**{r['shape']}** ({r['shape_info']}) — {r['machine']}, torch {r['torch']}, {r['date']}, "
            f"median of {r['repeats']} after {r['warmup']} warm-up; `{r['command']}`",
            "",
            "| variant | s/step | min-max | speed-up |",
            "|---|---:|---:|---:|",
        ]
        for v, t in r["median_s"].items():
            base = r["median_s"].get(v.partition("+")[0])
            ratio = f"{base / t:.2f}x" if base and "+" in v else "-"
            lines.append(f"| {v} | {t:.3f} | {r['min_s'][v]:.3f}-{r['max_s'][v]:.3f} | {ratio} |")
        lines.append("")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=HERE / "results", help="where the JSON goes")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.report:
        runs = [json.loads(p.read_text()) for p in sorted(args.out_dir.glob("integrations-*.json"))]
        print(write_section(args.results_md, "integrations", report_lines(runs)))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    for shape in args.shapes.split(","):
        r = measure(shape, args.variants.split(","), args.repeats, args.warmup, device)
        print("\n".join(report_lines([r])), flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / f"integrations-{device.type}-{shape}.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
