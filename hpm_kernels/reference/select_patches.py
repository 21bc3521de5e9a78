"""select_patches: HPM's easy-to-hard mask generation for a whole batch, no host sync."""

from __future__ import annotations

import torch


def select_patches(
    scores: torch.Tensor, noise: torch.Tensor, len_keep: int, num_hard: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scores, noise (N, L) -> ids_keep (N, len_keep), ids_mask (N, L - len_keep),
    ids_restore (N, L), mask (N, L) bool (True = masked).

    The ``num_hard`` highest scores are masked (ties: lower index first; NaN ranks as -inf).
    Of the rest, the ``len_keep`` with the smallest noise stay visible (ties: lower index first;
    NaN ranks as +inf); all others are masked. Requires ``num_hard <= L - len_keep``.
    """
    N, L = scores.shape
    hard_key = torch.where(scores.isnan(), float("-inf"), scores)
    by_score = torch.sort(hard_key, dim=1, descending=True, stable=True).indices
    hard = torch.zeros(N, L, dtype=torch.bool, device=scores.device)
    hard.scatter_(1, by_score[:, :num_hard], True)

    noise_key = torch.where(noise.isnan(), float("inf"), noise)
    by_noise = torch.sort(noise_key, dim=1, stable=True).indices
    # Stable sort on the hard flag keeps the noise order among the non-hard patches and moves
    # the hard ones behind them, whatever their noise (even +inf).
    hard_last = torch.sort(hard.gather(1, by_noise).to(torch.uint8), dim=1, stable=True).indices
    order = by_noise.gather(1, hard_last)

    ids_keep = torch.sort(order[:, :len_keep], dim=1).values
    ids_mask = torch.sort(order[:, len_keep:], dim=1).values
    ids_shuffle = torch.cat([ids_keep, ids_mask], dim=1)
    ids_restore = torch.empty_like(ids_shuffle)
    ids_restore.scatter_(1, ids_shuffle, torch.arange(L, device=scores.device).expand(N, L))
    mask = torch.ones(N, L, dtype=torch.bool, device=scores.device)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, ids_mask, ids_restore, mask
