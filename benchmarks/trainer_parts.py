"""One optimizer step of the reference trainer, whole and cut into parts, for the benchmarks.

Variants: ``hpm/fused``, ``hpm/reference``, ``mae/fused``, ``mae/reference`` (hpm_pretrain's
``forward_step`` with ``--ops fused`` or ``--ops reference``, then backward, AdamW and the EMA
update, as ``hpm_pretrain.train.pretrain`` runs them; the data loader is not timed: one batch of
random images stays on the device) and ``official/hpm`` (benchmarks/official_step.py).

The per-part breakdown (teacher, selection, student forward, losses, backward + optimizer, EMA)
comes from :meth:`TrainerBench.step_parts`, the same step with ``perf_counter`` marks between
the parts (and ``torch.cuda.synchronize()`` before each mark on a GPU). It is checked against
``forward_step`` when built (same loss on the same noise) so it cannot drift from the trainer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from official_step import OfficialOps, official_step

import hpm_kernels as hk
from hpm_pretrain.model import HPMViT, model_config, param_groups
from hpm_pretrain.train import PretrainConfig, ema_update, forward_step

PARTS = ("teacher", "selection", "student forward", "losses", "backward + optimizer", "EMA")
VARIANTS = ("hpm/fused", "hpm/reference", "mae/fused", "mae/reference", "official/hpm")
HARD_RATIO = 0.5  # the end of HPM's easy-to-hard ramp: the teacher runs and half the mask is hard
EMA_DECAY = 0.999


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    name: str
    preset: str
    img: int
    patch: int
    batch: int

    @property
    def label(self) -> str:
        return f"{self.preset} {self.img} px p = {self.patch}, batch {self.batch}"


def configs(cuda: bool, quick: bool) -> list[TrainerConfig]:
    if cuda:
        return [TrainerConfig("base_224_b128", "micro" if quick else "base", 224, 16, 4 if quick else 128)]
    return [
        TrainerConfig("tiny_224_b16", "micro" if quick else "tiny", 224, 16, 2 if quick else 16),
        TrainerConfig("tiny_32_b64", "micro" if quick else "tiny", 32, 4, 4 if quick else 64),
    ]


class Recorder:
    """Per-part seconds of each step: ``start()``, ``mark(part)`` after each part, ``finish()``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self._cur: dict[str, float] = {}
        self._t = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def start(self) -> None:
        self._cur = {}
        self._t = self._now()

    def mark(self, part: str) -> None:
        now = self._now()
        self._cur[part] = self._cur.get(part, 0.0) + now - self._t
        self._t = now

    def finish(self) -> None:
        self.steps.append(self._cur)

    def medians_ms(self, last: int | None = None) -> dict[str, float]:
        steps = self.steps[-last:] if last else self.steps
        parts = [p for p in PARTS if any(p in s for s in steps)]
        return {p: 1e3 * statistics.median(s.get(p, 0.0) for s in steps) for p in parts}


class TrainerBench:
    """Models, optimizer and a batch for one (config, variant); ``step()`` is one optimizer step."""

    def __init__(self, cfg: TrainerConfig, variant: str, device: torch.device):
        method, ops = variant.split("/")
        self.cfg, self.variant, self.device, self.method = cfg, variant, device, method
        self.official = method == "official"
        torch.manual_seed(0)
        mcfg = model_config(cfg.preset, img_size=(cfg.img, cfg.img), patch_size=cfg.patch, in_chans=3, predictor=method != "mae")
        self.student = HPMViT(mcfg, OfficialOps(np.random.default_rng(0)) if self.official else ops).to(device)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False) if method in ("hpm", "official") else None
        self.opt = torch.optim.AdamW(param_groups(self.student, 0.05), lr=1e-4, betas=(0.9, 0.95))
        self.pcfg = PretrainConfig(method="hpm" if self.official else method, ops="reference" if self.official else ops)
        self.hard = HARD_RATIO if method in ("hpm", "official") else 0.0
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.imgs = torch.randn(cfg.batch, 3, cfg.img, cfg.img, generator=self.gen, device=device)
        self.L = mcfg.num_patches
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        self.autocast_dtype = "bfloat16" if cuda_bf16 else None
        self._autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda_bf16 else contextlib.nullcontext

    # -- the trainer's step, as hpm_pretrain.train.pretrain runs it ---------------------------
    def step(self) -> float:
        if self.official:
            return official_step(
                self.student, self.teacher, self.opt, self.imgs, self.pcfg.mask_ratio, self.hard, self.pcfg.norm_pix,
                EMA_DECAY, self._autocast(),
            )  # fmt: skip
        noise = torch.rand(self.cfg.batch, self.L, generator=self.gen, device=self.device)
        with self._autocast():
            out = forward_step(self.student, self.teacher, self.imgs, noise, self.pcfg, self.hard)
        value = float(out.loss.detach())  # the trainer reads the loss every step
        out.loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.teacher is not None:
            ema_update(self.teacher, self.student, EMA_DECAY)
        return value

    # -- the same step with marks between the parts ---------------------------------------------
    def _forward_parts(self, noise: torch.Tensor, mark: Callable[[str], None]) -> torch.Tensor:
        """forward_step's body, part by part (hpm_pretrain/train.py)."""
        student, cfg, ops = self.student, self.pcfg, self.student.ops
        with self._autocast():
            _, num_hard = hk.mask_counts(self.L, cfg.mask_ratio, self.hard)
            if self.teacher is not None and num_hard > 0:
                scores = self.teacher.hardness(self.imgs).float()
                mark("teacher")
            else:  # MAE (or no hard patch): forward_step skips the teacher; selection takes the noise
                scores = noise
            sel = ops.select_patches(scores, noise, cfg.mask_ratio, self.hard)
            mark("selection")
            pixels, pred_scores = student(self.imgs, sel)
            mark("student forward")
            loss, per_patch = ops.patch_mse_loss(pixels, self.imgs, student.cfg.patch_size, sel.ids_mask, cfg.norm_pix)
            if pred_scores is not None:
                loss = loss + ops.ranking_loss(pred_scores, per_patch.detach())
        return loss

    def step_parts(self, rec: Recorder) -> float:
        rec.start()
        if self.official:
            value = official_step(
                self.student, self.teacher, self.opt, self.imgs, self.pcfg.mask_ratio, self.hard, self.pcfg.norm_pix,
                EMA_DECAY, self._autocast(), rec.mark,
            )  # fmt: skip
            rec.finish()
            return value
        noise = torch.rand(self.cfg.batch, self.L, generator=self.gen, device=self.device)
        loss = self._forward_parts(noise, rec.mark)
        value = float(loss.detach())
        rec.mark("losses")
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        rec.mark("backward + optimizer")
        if self.teacher is not None:
            ema_update(self.teacher, self.student, EMA_DECAY)
            rec.mark("EMA")
        rec.finish()
        return value

    def check_parts_match_trainer(self) -> None:
        """step_parts must compute what forward_step computes: same loss on the same noise."""
        if self.official:
            return
        noise = torch.rand(
            self.cfg.batch, self.L, generator=torch.Generator(device=self.device).manual_seed(1), device=self.device
        )
        with torch.no_grad():
            with self._autocast():
                a = forward_step(self.student, self.teacher, self.imgs, noise, self.pcfg, self.hard).loss
            b = self._forward_parts(noise, lambda part: None)
        if not torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6):
            raise AssertionError(f"{self.variant}: the step cut into parts gives loss {float(b)}, forward_step {float(a)}")
