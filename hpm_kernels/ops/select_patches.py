"""``hpm::select_patches``: HPM mask generation (hard patches + random fill) for a whole batch."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _validation as v
from ._dispatch import choose, kernel_for


class Selection(NamedTuple):
    """Output of :func:`select_patches`."""

    ids_keep: torch.Tensor  #: (N, len_keep) int64, ascending: visible patches
    ids_mask: torch.Tensor  #: (N, L - len_keep) int64, ascending: masked patches
    ids_restore: torch.Tensor  #: (N, L) int64, inverse permutation of cat([ids_keep, ids_mask])
    mask: torch.Tensor  #: (N, L) bool, True = masked


@torch.library.custom_op("hpm::select_patches", mutates_args=())
def _select_patches(
    scores: torch.Tensor, noise: torch.Tensor, len_keep: int, num_hard: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    L = scores.shape[1]
    if not (0 <= len_keep <= L and 0 <= num_hard <= L - len_keep):
        raise ValueError(
            f"need 0 <= len_keep <= L and 0 <= num_hard <= L - len_keep, got L = {L}, len_keep = {len_keep}, num_hard = {num_hard}"
        )
    return kernel_for("select_patches", backend, scores, noise, row=L)(scores, noise, len_keep, num_hard)


@_select_patches.register_fake
def _(scores, noise, len_keep, num_hard, backend):
    N, L = scores.shape
    ids = scores.new_empty
    return (
        ids(N, len_keep, dtype=torch.int64),
        ids(N, L - len_keep, dtype=torch.int64),
        ids(N, L, dtype=torch.int64),
        ids(N, L, dtype=torch.bool),
    )


def mask_counts(L: int, mask_ratio: float, hard_ratio: float) -> tuple[int, int]:
    """``(len_keep, num_hard)`` exactly as the official code computes them (Python floats)."""
    len_keep = int(L * (1 - mask_ratio))
    return len_keep, int((L - len_keep) * hard_ratio)


def select_patches(
    scores: torch.Tensor,
    noise: torch.Tensor,
    mask_ratio: float,
    hard_ratio: float,
    *,
    backend: str | None = None,
) -> Selection:
    """Choose visible and masked patches for a batch in one call, with no host sync.

    ``len_keep = int(L * (1 - mask_ratio))``, ``num_hard = int((L - len_keep) * hard_ratio)``.
    The ``num_hard`` patches with the highest ``scores`` are masked (ties: lower index first;
    NaN ranks below every number, like -inf). Of the others, the ``len_keep`` with the
    smallest ``noise`` stay visible (ties: lower index first; NaN ranks like +inf); the rest
    are masked. ``hard_ratio = 0`` is MAE's random masking: ``argsort(noise)[:len_keep]`` kept.

    Args:
        scores: (N, L) float, the predicted per-patch losses (higher = harder).
        noise: (N, L) float, e.g. ``torch.rand`` with the caller's generator.
        mask_ratio: in (0, 1).
        hard_ratio: in [0, 1], the fraction of masked patches chosen by score.

    Returns:
        :class:`Selection` ``(ids_keep, ids_mask, ids_restore, mask)``, see its fields.
    """
    v.check_float_tensor("scores", scores, 2, "(N, L)")
    v.check_float_tensor("noise", noise, 2, "(N, L)")
    if noise.shape != scores.shape:
        raise ValueError(f"`noise` must have the shape of `scores` {tuple(scores.shape)}, got {tuple(noise.shape)}")
    mask_ratio = v.check_ratio("mask_ratio", mask_ratio, 0.0, 1.0, open_low=True, open_high=True)
    hard_ratio = v.check_ratio("hard_ratio", hard_ratio, 0.0, 1.0, open_low=False, open_high=False)
    v.check_same_device(scores=scores, noise=noise)
    L = scores.shape[1]
    len_keep, num_hard = mask_counts(L, mask_ratio, hard_ratio)
    name = choose("select_patches", backend, scores, noise, row=L)
    return Selection(*_select_patches(scores.detach(), noise.detach(), len_keep, num_hard, name))
