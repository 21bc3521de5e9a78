"""Schedules of the official recipe, as pure functions of the training position."""

from __future__ import annotations

import math


def base_lr(blr: float, effective_batch: int) -> float:
    """MAE's linear scaling rule: lr = blr * effective_batch / 256."""
    return blr * effective_batch / 256


def learning_rate(lr: float, min_lr: float, epoch_float: float, warmup_epochs: float, epochs: int) -> float:
    """Per-iteration linear warm-up, then a half-cycle cosine to ``min_lr`` (MAE's lr_sched)."""
    if epoch_float < warmup_epochs:
        return lr * epoch_float / warmup_epochs
    span = max(epochs - warmup_epochs, 1e-12)
    progress = min((epoch_float - warmup_epochs) / span, 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def hard_ratio(method: str, epoch: int, epochs: int, hard_ratio_max: float) -> float:
    """Easy-to-hard: ``hard_ratio_max * (epoch + 1) / epochs`` for HPM (0.5 in the paper), 0 otherwise."""
    if method != "hpm":
        return 0.0
    return hard_ratio_max * (epoch + 1) / epochs


def ema_decay(epoch: int, start: float = 0.999, end: float = 0.9999, ramp_epochs: int = 100) -> float:
    """Teacher EMA decay: linear from ``start`` to ``end`` over the first ``ramp_epochs`` epochs
    (set once per epoch), then ``end``."""
    return start + (end - start) * min(epoch, ramp_epochs) / ramp_epochs


# The official ImageNet schedule in units of its own run: 200 epochs of 312 steps (batch 4096), the
# decay ramped 0.999 -> 0.9999 over the first 100 epochs, i.e. an averaging window (1 / (1 - decay))
# of 1,000 steps (1.6 % of the run) growing to 10,000 (16 %) by mid-run.
OFFICIAL_STEPS, OFFICIAL_EPOCHS = 200 * 312, 200


def ema_for_run_length(total_steps: int, epochs: int) -> tuple[float, float, int]:
    """(start, end, ramp_epochs) of a teacher EMA whose averaging windows are the same fractions of
    this run as the official schedule's are of its 200-epoch run. For short runs (a demo, a pilot),
    where 0.999 per step would leave the teacher mostly at its random initialisation."""
    if total_steps < 1 or epochs < 1:
        raise ValueError(f"`total_steps` and `epochs` must be >= 1, got {total_steps} and {epochs}")
    scale = total_steps / OFFICIAL_STEPS

    def decay(window_steps: float) -> float:
        return 1.0 - 1.0 / max(1.0, window_steps * scale)

    return decay(1_000), decay(10_000), max(1, round(epochs * 100 / OFFICIAL_EPOCHS))
