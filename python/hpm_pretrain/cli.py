"""``hpm-pretrain`` / ``python -m hpm_pretrain``: one entry point, sub-commands pretrain,
visualize, eval and export, each with ``--help``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import types
import typing
from collections.abc import Callable

from . import train

HELP = {
    "out_dir": "run directory: checkpoint.pt, metrics.jsonl, config.json",
    "data": "folder | fashion-mnist | elpv",
    "data_path": "image folder, or the Fashion-MNIST directory (default /usr/share/datasets/fashion-mnist)",
    "img_size": "image height (and width unless --img-width)",
    "in_chans": "1 (grey) or 3 (RGB)",
    "limit": "use only the first N training images",
    "preset": "micro | tiny | small | base | large",
    "embed_dim": "encoder width (default: the preset's)",
    "depth": "encoder blocks (default: the preset's)",
    "num_heads": "encoder attention heads (default: the preset's)",
    "decoder_embed_dim": "decoder width, both decoders (default: the preset's)",
    "decoder_depth": "reconstruction decoder blocks (default: the preset's)",
    "decoder_num_heads": "decoder attention heads (default: the preset's)",
    "predictor_depth": "loss-predictor decoder depth (default: the reconstruction decoder's, as the official code); "
    "0: no second decoder, a head on the reconstruction decoder's last tokens (cheapest)",
    "predictor_head": "patch (P-wide head then a mean, official) | scalar (1-wide)",
    "predictor_stop_grad": "ablation: detach the loss predictor's input, so its objective trains the predictor only, "
    "never the encoder (hpm, lossonly)",
    "method": "hpm | mae | lossonly",
    "pred_loss": "relative (pairwise ranking, the paper's) | absolute (z-scored MSE ablation)",
    "hard_ratio_max": "final fraction of masked patches chosen as hard (easy-to-hard ramps to it)",
    "norm_pix": "normalise target patches by their mean and variance (off in the official HPM scripts)",
    "ops": "fused (hpm_kernels' ops) | reference (plain PyTorch reference of the same math)",
    "batch_size": "images per process per step",
    "accum_steps": "gradient accumulation steps",
    "blr": "base lr: lr = blr * effective batch / 256",
    "lr": "absolute lr (overrides --blr)",
    "warmup_epochs": "linear warm-up epochs (per iteration), then cosine",
    "clip_grad": "clip the gradient norm to this (default: no clipping, as the official recipe)",
    "resume": "continue the run in --out-dir from its checkpoint",
    "stop_after": "stop, with a checkpoint, after this many optimizer steps in total",
    "ckpt_every": "optimizer steps between checkpoints (0: at epoch ends only)",
    "log_every": "optimizer steps between metric lines",
    "device": "auto (CUDA when present) | cpu | cuda | cuda:N",
    "augmentation": "auto (one batched hpm_kernels call per batch for in-memory datasets: fashion-mnist, elpv; "
    "per-item torchvision for folders) | batched | per-item",
    "num_workers": "DataLoader workers of the per-item path (default: 0 on CPU, where the model needs the cores; "
    "up to 8 per GPU)",
    "compile": "torch.compile the student and the teacher's hardness pass. Off by default: on 2 CPU cores it made "
    "the step 4-8%% faster after a 60-120 s first compile (benchmarks/RESULTS.md), no gain over a run of minutes; "
    "not yet measured on a GPU",
}


def _field_type(tp) -> Callable[[str], object]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(hints[f.name])
        help_text = f"{HELP.get(f.name, '')} (default: {f.default})".strip()
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            parser.add_argument(flag, type=tp, default=f.default, help=help_text)


def config_from_args(cls, args: argparse.Namespace):
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def _pretrain(args: argparse.Namespace) -> int:
    cfg = config_from_args(train.PretrainConfig, args)
    summary = train.pretrain(cfg)
    print(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpm-pretrain", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="HPM / MAE / loss-only pretraining", description=train.__doc__)
    add_dataclass_arguments(p, train.PretrainConfig)
    p.set_defaults(run=_pretrain)
    for name, module in (("visualize", "visualize"), ("eval", "evaluate"), ("export", "export")):
        try:
            mod = __import__(f"hpm_pretrain.{module}", fromlist=["add_arguments", "run"])
        except ModuleNotFoundError:
            continue
        s = sub.add_parser(name, help=mod.__doc__.splitlines()[0], description=mod.__doc__)
        mod.add_arguments(s)
        s.set_defaults(run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"hpm-pretrain {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
