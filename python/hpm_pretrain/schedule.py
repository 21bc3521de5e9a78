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
