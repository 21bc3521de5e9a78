"""Triton select_patches against the reference, bit for bit (CPU: through the interpreter)."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels.triton_kernels import select_patches as triton_select
from tests.select_cases import RATIOS, SPECIAL_RATIOS, select_rows, special_rows
from tests.triton_utils import DEVICE, DTYPE_PARAMS, ON_GPU, requires_triton, run_reference, run_triton

pytestmark = requires_triton

# L = 1, 2, 7 (len_keep = 0 at high mask ratios), 49, 196 (ViT-B/16 at 224 px), 197, 256 (a
# full block), 576 (ViT-L/14 at 336 px) and 4096, the largest row the Triton backend takes.
SHAPES = [(2, 1), (2, 2), (4, 7), (4, 49), (4, 196), (2, 197), (1, 256), (1, 576), (1, 4096)]


def _assert_same(got, want) -> None:
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape and g.device == w.device
        assert torch.equal(g, w)


def _check(scores, noise, mask_ratio, hard_ratio, fill):
    got = run_triton(hk.select_patches, scores, noise, mask_ratio, hard_ratio, fill=fill)
    _assert_same(got, run_reference(hk.select_patches, scores, noise, mask_ratio, hard_ratio))
    return got


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{n}x{l}" for n, l in SHAPES])
def test_matches_reference(gen, shape, dtype):
    N, L = shape
    scores = select_rows(gen, N, L, dtype, "scores", DEVICE)
    # Noise rows run one pattern ahead of the score rows: random scores meet tied noise, tied
    # scores special noise, special scores constant noise, all-NaN scores random noise.
    noise = select_rows(gen, N + 1, L, dtype, "noise", DEVICE)[1:]
    for i, (mask_ratio, hard_ratio) in enumerate(RATIOS):
        _check(scores, noise, mask_ratio, hard_ratio, fill="high" if i % 2 else "low")


@pytest.mark.parametrize("L", [7, 196])
def test_ties_and_special_values_everywhere(gen, L):
    """Scores and noise both drawn from a handful of special values (ties on both sides)."""
    N = 6
    scores, noise = special_rows(gen, N, L, DEVICE)
    for i, (mask_ratio, hard_ratio) in enumerate(SPECIAL_RATIOS):
        _check(scores, noise, mask_ratio, hard_ratio, fill="high" if i % 2 else "low")


def test_signed_zero_ties_by_index(gen):
    """-0.0 == +0.0 is a tie (lower index first), not -0.0 < +0.0."""
    scores = torch.tensor([[-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, 0.0, -0.0]], device=DEVICE)
    noise = scores.flip(1).clone()
    for hard_ratio in [0.0, 0.5, 1.0]:
        got = _check(scores, noise, 0.5, hard_ratio, fill="high")
    assert got.mask.tolist() == [[True, True, True, False, True, False, False, False]]


@pytest.mark.parametrize(
    "dtypes",
    [(torch.float16, torch.float32), (torch.float32, torch.float16)]
    + ([(torch.bfloat16, torch.float16), (torch.float32, torch.bfloat16)] if ON_GPU else []),
    ids=lambda d: "-".join(str(t).removeprefix("torch.") for t in d),
)
def test_scores_and_noise_in_different_dtypes(gen, dtypes):
    N, L = 4, 197
    scores = select_rows(gen, N, L, dtypes[0], "scores", DEVICE)
    noise = select_rows(gen, N + 1, L, dtypes[1], "noise", DEVICE)[1:]
    for mask_ratio, hard_ratio in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0)]:
        _check(scores, noise, mask_ratio, hard_ratio, fill="low")


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_non_contiguous_inputs(gen, dtype):
    N, L = 4, 49
    transposed = select_rows(gen, L, N, dtype, "scores", DEVICE).t()  # (N, L), row stride 1
    strided = select_rows(gen, N, 3 * L, dtype, "noise", DEVICE)[:, ::3]  # (N, L), element stride 3
    one_row = select_rows(gen, 1, L, dtype, "scores", DEVICE).expand(N, L)  # row stride 0
    every_other_row = select_rows(gen, 2 * N, L, dtype, "noise", DEVICE)[::2]  # row stride 2 L
    assert not any(t.is_contiguous() for t in [transposed, strided, one_row, every_other_row])
    for scores, noise in [(transposed, strided), (one_row, every_other_row), (strided, transposed)]:
        _check(scores, noise, 0.75, 0.5, fill="high")
        _check(scores, noise, 0.5, 0.0, fill="low")


def _count_launches(monkeypatch) -> list:
    """Wrap the kernel so that every launch records its grid."""
    grids = []
    kernel = triton_select._select_patches_kernel

    class Counting:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    monkeypatch.setattr(triton_select, "_select_patches_kernel", Counting())
    return grids


@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_whole_batch_is_one_launch(gen, monkeypatch, dtype):
    """One program per row, all rows in a single launch (so no host sync between samples)."""
    grids = _count_launches(monkeypatch)
    N, L = 5, 49
    scores = select_rows(gen, N, L, dtype, "scores", DEVICE)
    noise = select_rows(gen, N, L, dtype, "noise", DEVICE)
    _check(scores, noise, 0.75, 0.5, fill="high")
    assert grids == [(N,)]


def test_empty_batch(monkeypatch):
    grids = _count_launches(monkeypatch)
    scores = torch.empty(0, 49, device=DEVICE)
    sel = _check(scores, torch.empty(0, 49, device=DEVICE), 0.75, 0.5, fill="high")
    assert [tuple(t.shape) for t in sel] == [(0, 12), (0, 37), (0, 49), (0, 49)]
    assert grids == []


@pytest.mark.skipif(not ON_GPU, reason="host syncs can only be detected on a CUDA device")
def test_no_host_sync(gen):
    scores = torch.randn(64, 196, generator=gen).to(DEVICE)
    noise = torch.rand(64, 196, generator=gen).to(DEVICE)
    run_triton(hk.select_patches, scores, noise, 0.75, 0.5)  # compile outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        run_triton(hk.select_patches, scores, noise, 0.75, 0.5)
    finally:
        torch.cuda.set_sync_debug_mode("default")
