"""Export a run's encoder as safetensors that loads into timm's VisionTransformer (strict).

Writes ``<out>.safetensors`` (the student's encoder, or the EMA teacher's with ``--teacher``) and
``<out>.json``, a sidecar with the ``timm.models.vision_transformer.VisionTransformer`` constructor
arguments that rebuild the trainer's encoder exactly, plus the data normalisation the encoder was
trained with. ``timm_encoder(path)`` builds and loads it::

    from hpm_pretrain.export import timm_encoder
    vit = timm_encoder("runs/hpm/encoder.safetensors")  # strict load, eval mode
    feats = vit.forward_features(imgs)  # (N, 1 + L, D) == HPMViT.encode(imgs)

Key mapping (trainer -> timm): ``patch_embed.weight`` (D, p*p*C), columns ordered (row, col,
channel) -> ``patch_embed.proj.weight`` (D, C, p, p); ``patch_embed.bias`` ->
``patch_embed.proj.bias``; the fixed sin-cos ``pos_embed`` buffer (1, 1 + L, D) -> timm's
``pos_embed`` parameter; ``cls_token``, ``blocks.*`` and ``norm.*`` unchanged. Decoders, mask
token and loss predictor are not exported.

This module also holds what the other sub-commands share: ``add_checkpoint_arguments`` and
``load_run`` (a checkpoint -> its config and the student / teacher models).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import torch

from . import checkpoint as ckpt
from .data import DataConfig, normalisation
from .model import HPMViT, ModelConfig
from .train import PretrainConfig, build_model

log = logging.getLogger("hpm_pretrain.export")

TIMM_CLASS = "timm.models.vision_transformer.VisionTransformer"


# -- loading a run (shared by export, visualize and eval) ----------------------------------------
@dataclasses.dataclass
class Run:
    path: Path  # the checkpoint file
    cfg: PretrainConfig
    model: HPMViT  # the student
    teacher: HPMViT | None  # the EMA teacher (method hpm only)
    position: dict

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    def data_config(self, split: str = "train", augment: bool = False, **overrides) -> DataConfig:
        """The run's data source at the model's image size; ``overrides`` (source, path, limit) win when not None."""
        c = self.cfg
        kw = dict(source=c.data, path=c.data_path, limit=c.limit)
        if overrides.get("source") not in (None, c.data):  # another source: the run's path and limit are not its
            kw.update(path=None, limit=None)
        kw.update({k: v for k, v in overrides.items() if v is not None})
        if kw.get("limit") == 0:  # 0: no limit
            kw["limit"] = None
        return DataConfig(kw["source"], kw["path"], c.image_shape, c.in_chans, split, augment, kw["limit"])


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_mutually_exclusive_group(required=True)
    g.add_argument("--checkpoint", type=Path, help="checkpoint file (checkpoint.pt of a run)")
    g.add_argument("--run-dir", type=Path, help="run directory (its checkpoint.pt)")


def checkpoint_path(args: argparse.Namespace) -> Path:
    return Path(args.checkpoint) if getattr(args, "checkpoint", None) else Path(args.run_dir) / ckpt.CHECKPOINT


def pretrain_config(saved: dict) -> PretrainConfig:
    """A PretrainConfig from a saved dict, ignoring keys this version does not know."""
    names = {f.name for f in dataclasses.fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in saved.items() if k in names})


def load_run(path: str | Path, device: str | torch.device = "cpu", ops: str | None = None) -> Run:
    """Load a checkpoint written by ``train.pretrain``: config, student, teacher (eval mode, no grad)."""
    path = Path(path)
    if path.is_dir():
        path = path / ckpt.CHECKPOINT
    state = ckpt.load(path, map_location="cpu")
    saved = state.get("config")
    if saved is None:  # older layout: fall back to the run's config.json
        cfg_json = path.parent / "config.json"
        if not cfg_json.is_file():
            raise ValueError(f"{path} holds no config and there is no {cfg_json}")
        saved = json.loads(cfg_json.read_text())
    cfg = pretrain_config(saved)
    model = build_model(cfg, ops)
    model.load_state_dict(state["model"])
    teacher = None
    if state.get("teacher") is not None:
        teacher = build_model(cfg, ops)
        teacher.load_state_dict(state["teacher"])
        teacher = teacher.to(device).eval().requires_grad_(False)
    model = model.to(device).eval().requires_grad_(False)
    return Run(path, cfg, model, teacher, dict(state.get("position") or {}))


# -- the export ---------------------------------------------------------------------------------
def timm_kwargs(mcfg: ModelConfig) -> dict:
    """JSON-able ``VisionTransformer`` arguments that reproduce the trainer's encoder exactly
    (timm's default norm is LayerNorm(eps=1e-6) and its blocks' defaults match model._blocks)."""
    return dict(
        img_size=list(mcfg.img_size),
        patch_size=mcfg.patch_size,
        in_chans=mcfg.in_chans,
        num_classes=0,
        global_pool="token",
        embed_dim=mcfg.embed_dim,
        depth=mcfg.depth,
        num_heads=mcfg.num_heads,
        mlp_ratio=mcfg.mlp_ratio,
        qkv_bias=True,
        class_token=True,
        no_embed_class=False,
        pos_embed="learn",
        pre_norm=False,
        final_norm=True,
        fc_norm=False,
        dynamic_img_size=False,
        norm_layer="layernorm",
    )


def encoder_state_dict(model: HPMViT) -> dict[str, torch.Tensor]:
    """The encoder's tensors under timm's names and layouts (contiguous, on the CPU)."""
    c = model.cfg
    p, C, D = c.patch_size, c.in_chans, c.embed_dim
    sd = model.state_dict()
    out = {
        "cls_token": sd["cls_token"],
        "pos_embed": model.pos_embed.detach(),  # a non-persistent buffer: not in state_dict
        # (D, P) with P = (i*p + j)*C + c  ->  (D, p, p, C)  ->  (D, C, p, p)
        "patch_embed.proj.weight": sd["patch_embed.weight"].reshape(D, p, p, C).permute(0, 3, 1, 2),
        "patch_embed.proj.bias": sd["patch_embed.bias"],
    }
    for k, v in sd.items():
        if k.startswith(("blocks.", "norm.")):
            out[k] = v
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in out.items()}


def sidecar_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def export(
    checkpoint: str | Path, out: str | Path | None = None, teacher: bool = False, run: Run | None = None
) -> tuple[Path, Path]:
    """Write the encoder of ``checkpoint`` (student, or the EMA teacher) as safetensors + JSON
    sidecar; returns both paths. Default ``out``: ``<run dir>/encoder[_teacher].safetensors``."""
    from safetensors.torch import save_file

    run = run or load_run(checkpoint)
    if teacher and run.teacher is None:
        raise ValueError(f"{run.path} has no EMA teacher (method {run.cfg.method!r}; only hpm keeps one)")
    model = run.teacher if teacher else run.model
    which = "teacher" if teacher else "student"
    out = Path(out) if out is not None else run.run_dir / f"encoder{'_teacher' if teacher else ''}.safetensors"
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    kwargs = timm_kwargs(model.cfg)
    mean, std = normalisation(run.data_config())
    meta = dict(
        architecture=TIMM_CLASS,
        timm_kwargs=kwargs,
        weights=which,
        source_checkpoint=str(run.path),
        position=run.position,
        method=run.cfg.method,
        preset=run.cfg.preset,
        data=run.cfg.data,
        normalisation=dict(mean=list(mean), std=list(std)),
        features="forward_features(imgs): (N, 1 + L, D) after the final norm; token 0 is cls",
    )
    save_file(
        encoder_state_dict(model),
        str(out),
        metadata={"format": "pt", "timm_kwargs": json.dumps(kwargs), "weights": which, "architecture": TIMM_CLASS},
    )
    side = sidecar_path(out)
    side.write_text(json.dumps(meta, indent=1) + "\n")
    log.info("wrote the %s encoder of %s to %s (+ %s)", which, run.path, out, side.name)
    return out, side


def timm_encoder(path: str | Path, device: str | torch.device = "cpu"):
    """Build timm's VisionTransformer from an exported encoder's sidecar and load it strictly (eval mode)."""
    from safetensors.torch import load_file
    from timm.models.vision_transformer import VisionTransformer

    path = Path(path)
    side = sidecar_path(path)
    if side.is_file():
        kwargs = dict(json.loads(side.read_text())["timm_kwargs"])
    else:  # the safetensors header carries the same arguments
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            kwargs = json.loads(f.metadata()["timm_kwargs"])
    kwargs["img_size"] = tuple(kwargs["img_size"])
    vit = VisionTransformer(**kwargs)
    vit.load_state_dict(load_file(str(path)), strict=True)
    return vit.to(device).eval()


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--teacher", action="store_true", help="export the EMA teacher's encoder instead of the student's")
    parser.add_argument(
        "--out", type=Path, default=None, help="output .safetensors path (default: <run dir>/encoder[_teacher].safetensors)"
    )


def run(args: argparse.Namespace) -> int:
    out, side = export(checkpoint_path(args), args.out, args.teacher)
    print(json.dumps(dict(safetensors=str(out), sidecar=str(side)), indent=1))
    return 0
