"""Shared select_patches test rows for the backend tests (Triton, C++ CPU, CUDA C++)."""

from __future__ import annotations

import torch

# (mask_ratio, hard_ratio): len_keep = 0 at small L for high ratios; hard_ratio 1: every masked patch hard.
RATIOS = [(0.1, 0.0), (0.1, 1.0), (0.5, 0.3), (0.75, 0.0), (0.75, 0.5), (0.999, 1.0)]
# Values that sort specially: NaN, infinities, signed zeros, subnormals (float32 and float16).
SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-40, -1e-40, 6e-8, -6e-8, 1.0, -1.0]


def select_rows(gen: torch.Generator, N: int, L: int, dtype: torch.dtype, kind: str, device: str = "cpu") -> torch.Tensor:
    """(N, L) test values; row n uses pattern n % 4: random, heavy ties, specials, all equal."""
    x = torch.empty(N, L)
    for n in range(N):
        pattern = n % 4
        if pattern == 0:
            x[n] = torch.randn(L, generator=gen) if kind == "scores" else torch.rand(L, generator=gen)
        elif pattern == 1:
            x[n] = torch.randint(0, 3, (L,), generator=gen).float()
        elif pattern == 2:
            x[n] = torch.tensor(SPECIAL)[torch.randint(0, len(SPECIAL), (L,), generator=gen)]
        else:
            x[n] = float("nan") if kind == "scores" else 0.5
    return x.to(device, dtype)


# (mask_ratio, hard_ratio) for the special-value rows: no hard part, half, all masked hard, almost all masked.
SPECIAL_RATIOS = [(0.5, 0.0), (0.75, 0.5), (0.75, 1.0), (0.999, 1.0)]


def special_rows(gen: torch.Generator, N: int, L: int, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, noise), (N >= 4, L) float32 drawn from SPECIAL (noise from NaN, +-inf, 0: ties on both
    sides), with an all -inf score row, a half-NaN score row, an all-NaN and an all -0.0 noise row."""
    table = torch.tensor(SPECIAL)
    scores = table[torch.randint(0, len(SPECIAL), (N, L), generator=gen)].to(device)
    noise = table[torch.randint(0, 4, (N, L), generator=gen)].to(device)
    scores[0] = float("-inf")
    scores[1, ::2] = float("nan")
    noise[2] = float("nan")
    noise[3] = -0.0
    return scores, noise
