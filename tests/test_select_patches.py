"""Semantics of hpm_kernels.select_patches (SPEC section 1 step 2 and section 3).

Ground truth is tests/naive.select_patches (a per-sample Python loop written from SPEC).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy import stats

import hpm_kernels
from hpm_kernels import select_patches
from tests import naive

# --------------------------------------------------------------------------------------------
# helpers


def counts(L: int, mask_ratio: float, hard_ratio: float) -> tuple[int, int, int]:
    """(len_keep, num_mask, num_hard) as SPEC step 2 defines them."""
    len_keep = int(L * (1 - mask_ratio))
    num_mask = L - len_keep
    return len_keep, num_mask, int(num_mask * hard_ratio)


def assert_matches_naive(scores, noise, mask_ratio, hard_ratio):
    sel = select_patches(scores, noise, mask_ratio, hard_ratio)
    keep, masked, restore, mask = naive.select_patches(scores, noise, mask_ratio, hard_ratio)
    N, L = scores.shape
    len_keep, num_mask, _ = counts(L, mask_ratio, hard_ratio)
    assert sel.ids_keep.dtype == torch.int64
    assert sel.ids_mask.dtype == torch.int64
    assert sel.ids_restore.dtype == torch.int64
    assert sel.mask.dtype == torch.bool
    assert tuple(sel.ids_keep.shape) == (N, len_keep)
    assert tuple(sel.ids_mask.shape) == (N, num_mask)
    assert tuple(sel.ids_restore.shape) == (N, L)
    assert tuple(sel.mask.shape) == (N, L)
    assert sel.ids_keep.tolist() == keep
    assert sel.ids_mask.tolist() == masked
    assert sel.ids_restore.tolist() == restore
    assert sel.mask.tolist() == mask
    return sel


def assert_well_formed(sel, L: int, len_keep: int) -> None:
    """Structural invariants every Selection must satisfy (SPEC section 2)."""
    ids_keep, ids_mask, ids_restore, mask = sel
    N = mask.shape[0]
    assert ids_keep.shape == (N, len_keep) and ids_mask.shape == (N, L - len_keep)
    # ascending (strictly: no duplicates), disjoint, union = all L
    if len_keep > 1:
        assert bool((ids_keep[:, 1:] > ids_keep[:, :-1]).all())
    if L - len_keep > 1:
        assert bool((ids_mask[:, 1:] > ids_mask[:, :-1]).all())
    shuffle = torch.cat([ids_keep, ids_mask], dim=1)
    assert torch.equal(shuffle.sort(dim=1).values, torch.arange(L).expand(N, L))
    # ids_restore is the inverse permutation of ids_shuffle, both ways round
    assert torch.equal(shuffle.gather(1, ids_restore), torch.arange(L).expand(N, L))
    assert torch.equal(ids_restore.gather(1, shuffle), torch.arange(L).expand(N, L))
    # unshuffling [visible tokens, mask tokens] with ids_restore puts every token back in place
    tokens = shuffle.unsqueeze(-1).float()
    assert torch.equal(tokens.gather(1, ids_restore.unsqueeze(-1)).squeeze(-1), torch.arange(L).float().expand(N, L))
    # mask agrees with the index lists
    assert not bool(mask.gather(1, ids_keep).any())
    assert bool(mask.gather(1, ids_mask).all())
    assert torch.equal(mask.sum(1), torch.full((N,), L - len_keep))


def stable_top(scores_row: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores of one row, ties broken by the lower index (pure Python)."""
    vals = [(-math.inf if math.isnan(v) else v) for v in scores_row.double().tolist()]
    return sorted(range(len(vals)), key=lambda l: (-vals[l], l))[:k]


# --------------------------------------------------------------------------------------------
# agreement with the naive loop

CASES = [
    (N, L, mr, hr)
    for N, L in [(1, 1), (3, 1), (2, 2), (4, 7), (3, 196)]
    for mr in (0.75, 0.5, 0.9, 0.1)
    for hr in (0.0, 0.25, 0.5, 1.0)
]


@pytest.mark.parametrize(("N", "L", "mask_ratio", "hard_ratio"), CASES)
def test_matches_naive_random(gen, N, L, mask_ratio, hard_ratio):
    scores = torch.randn(N, L, generator=gen)
    noise = torch.rand(N, L, generator=gen)
    sel = assert_matches_naive(scores, noise, mask_ratio, hard_ratio)
    assert_well_formed(sel, L, counts(L, mask_ratio, hard_ratio)[0])


@pytest.mark.parametrize(("N", "L", "mask_ratio", "hard_ratio"), [c for c in CASES if c[1] > 1])
def test_matches_naive_tied_scores_and_noise(gen, N, L, mask_ratio, hard_ratio):
    scores = torch.randint(0, 3, (N, L), generator=gen).float()
    noise = torch.randint(0, 4, (N, L), generator=gen).float() / 4  # ties in the noise too
    assert_matches_naive(scores, noise, mask_ratio, hard_ratio)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_matches_naive_dtypes(gen, dtype):
    # rounding to a half dtype creates ties, which must be broken by index like everything else
    scores = torch.randn(4, 49, generator=gen).to(dtype)
    noise = torch.rand(4, 49, generator=gen).to(dtype)
    for hr in (0.0, 0.5, 1.0):
        assert_matches_naive(scores, noise, 0.75, hr)
    # mixed dtypes between scores and noise
    assert_matches_naive(scores, torch.rand(4, 49, generator=gen), 0.75, 0.5)


def test_empty_batch():
    sel = select_patches(torch.rand(0, 8), torch.rand(0, 8), 0.75, 0.5)
    assert [tuple(t.shape) for t in sel] == [(0, 2), (0, 6), (0, 8), (0, 8)]


# --------------------------------------------------------------------------------------------
# hard_ratio = 0 is MAE random masking


@pytest.mark.parametrize(("L", "mask_ratio"), [(1, 0.75), (2, 0.5), (7, 0.75), (16, 0.9), (196, 0.75), (196, 0.1)])
def test_hard_ratio_zero_is_mae(gen, L, mask_ratio):
    N = 5
    scores = torch.randn(N, L, generator=gen)
    noise = torch.rand(N, L, generator=gen)
    sel = select_patches(scores, noise, mask_ratio, 0.0)
    len_keep = int(L * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    assert torch.equal(sel.ids_keep, ids_shuffle[:, :len_keep].sort(dim=1).values)
    assert torch.equal(sel.ids_mask, ids_shuffle[:, len_keep:].sort(dim=1).values)
    mae_mask = torch.ones(N, L, dtype=torch.bool)
    mae_mask.scatter_(1, ids_shuffle[:, :len_keep], False)
    assert torch.equal(sel.mask, mae_mask)
    # and scores play no part at all
    assert all(torch.equal(a, b) for a, b in zip(sel, select_patches(-scores, noise, mask_ratio, 0.0)))


# --------------------------------------------------------------------------------------------
# the hard set


@pytest.mark.parametrize("hard_ratio", [0.25, 0.5, 1.0])
@pytest.mark.parametrize(("L", "mask_ratio"), [(7, 0.75), (16, 0.75), (49, 0.5), (196, 0.75), (196, 0.9)])
def test_hard_set_is_stable_top_scores(gen, L, mask_ratio, hard_ratio):
    N = 6
    scores = torch.randint(0, 3, (N, L), generator=gen).float()  # many ties
    _, _, num_hard = counts(L, mask_ratio, hard_ratio)
    assert num_hard > 0
    noises = [
        torch.rand(N, L, generator=gen),
        torch.rand(N, L, generator=gen),
        -scores + 0.01 * torch.rand(N, L, generator=gen),  # adversarial: hardest patches have the least noise
        torch.zeros(N, L),  # all noise tied
    ]
    for noise in noises:
        sel = select_patches(scores, noise, mask_ratio, hard_ratio)
        for n in range(N):
            top = stable_top(scores[n], num_hard)
            assert bool(sel.mask[n, top].all()), f"row {n}: a top-{num_hard} patch was left visible"


def test_hard_set_ties_go_to_lower_index():
    # all scores equal: the hard set is the first num_hard patches; noise would keep exactly those
    L, mask_ratio, hard_ratio = 8, 0.5, 0.5  # len_keep 4, num_hard 2
    scores = torch.zeros(1, L)
    noise = torch.arange(L, dtype=torch.float32).unsqueeze(0)  # prefers keeping 0, 1, 2, 3
    sel = select_patches(scores, noise, mask_ratio, hard_ratio)
    assert sel.ids_keep.tolist() == [[2, 3, 4, 5]]
    assert sel.ids_mask.tolist() == [[0, 1, 6, 7]]
    # partial ties: scores [1, 5, 5, 5, 0, 5, ...] -> hard {1, 2} (not 3 or 5)
    scores = torch.tensor([[1.0, 5, 5, 5, 0, 5, 0, 0]])
    sel = select_patches(scores, noise, mask_ratio, hard_ratio)
    assert sel.ids_keep.tolist() == [[0, 3, 4, 5]]


def test_hard_set_does_not_depend_on_noise(gen):
    # With hard_ratio = 1 the masked set IS the hard set, so it must be the same for any noise.
    N, L = 8, 32
    scores = torch.randint(0, 4, (N, L), generator=gen).float()
    a = select_patches(scores, torch.rand(N, L, generator=gen), 0.75, 1.0)
    b = select_patches(scores, torch.rand(N, L, generator=gen), 0.75, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for n in range(N):
        assert a.ids_mask[n].tolist() == sorted(stable_top(scores[n], 24))
    # With hard_ratio < 1, the intersection of the masked sets over many noises still holds
    # the hard set (and, here, nothing else).
    noise = torch.rand(256, L, generator=gen)
    sel = select_patches(scores[:1].expand(256, L), noise, 0.75, 0.5)
    always = sel.mask.all(0).nonzero().flatten().tolist()
    assert always == sorted(stable_top(scores[0], 12))


def test_num_hard_equals_num_mask(gen):
    # hard_ratio = 1: every masked patch is hard; noise only decides nothing
    N, L = 4, 196
    scores = torch.randn(N, L, generator=gen)
    sel = assert_matches_naive(scores, torch.rand(N, L, generator=gen), 0.75, 1.0)
    expected = scores.topk(147, dim=1).indices.sort(dim=1).values
    assert torch.equal(sel.ids_mask, expected)


def test_len_keep_zero(gen):
    # L = 3, mask_ratio 0.9: len_keep = int(0.3) = 0, everything masked, for any hard_ratio
    for hr in (0.0, 0.5, 1.0):
        sel = assert_matches_naive(torch.randn(2, 3, generator=gen), torch.rand(2, 3, generator=gen), 0.9, hr)
        assert sel.ids_keep.shape == (2, 0)
        assert sel.ids_mask.tolist() == [[0, 1, 2], [0, 1, 2]]
        assert sel.ids_restore.tolist() == [[0, 1, 2], [0, 1, 2]]
        assert bool(sel.mask.all())


@pytest.mark.parametrize(("L", "mask_ratio", "hard_ratio"), [(3, 0.9, 0.5), (1, 0.5, 1.0), (10, 0.75, 1.0), (196, 0.75, 0.5)])
def test_structure(gen, L, mask_ratio, hard_ratio):
    N = 5
    sel = select_patches(torch.randn(N, L, generator=gen), torch.rand(N, L, generator=gen), mask_ratio, hard_ratio)
    assert_well_formed(sel, L, counts(L, mask_ratio, hard_ratio)[0])


# --------------------------------------------------------------------------------------------
# NaN rule: NaN scores rank like -inf, NaN noise like +inf


def test_nan_scores(gen):
    N, L = 6, 20
    scores = torch.randn(N, L, generator=gen)
    scores[torch.rand(N, L, generator=gen) < 0.4] = float("nan")
    scores[0, :3] = float("-inf")  # ties between -inf and NaN: by index
    scores[1] = float("nan")  # a row of NaN only
    noise = torch.rand(N, L, generator=gen)
    for mr, hr in [(0.75, 0.5), (0.75, 1.0), (0.5, 1.0), (0.25, 1.0)]:
        sel = assert_matches_naive(scores, noise, mr, hr)
        _, _, num_hard = counts(L, mr, hr)
        for n in range(N):
            real = (~scores[n].isnan()).sum().item()
            top = stable_top(scores[n], num_hard)
            assert bool(sel.mask[n, top].all())
            # a NaN score is never chosen as hard while a real number (other than -inf) is left
            finite = int((scores[n] > float("-inf")).sum())
            chosen_nan = sum(1 for l in top if math.isnan(scores[n, l].item()))
            assert chosen_nan == max(0, num_hard - real)
            assert chosen_nan == 0 or finite <= num_hard


def test_nan_noise(gen):
    N, L = 6, 20
    scores = torch.randn(N, L, generator=gen)
    noise = torch.rand(N, L, generator=gen)
    noise[torch.rand(N, L, generator=gen) < 0.5] = float("nan")
    noise[0, :4] = float("inf")  # ties between +inf and NaN: by index
    noise[1] = float("nan")
    for mr, hr in [(0.75, 0.0), (0.75, 0.5), (0.25, 0.0), (0.25, 0.5)]:
        sel = assert_matches_naive(scores, noise, mr, hr)
        len_keep, _, _ = counts(L, mr, hr)
        # rows with enough real noise among non-hard patches keep no NaN-noise patch
        if hr == 0.0:
            for n in range(N):
                real = int((~noise[n].isnan()).sum())
                kept_nan = int(noise[n, sel.ids_keep[n]].isnan().sum())
                assert kept_nan == max(0, len_keep - real)


def test_infinities_and_signed_zeros(gen):
    # +inf scores are the hardest, -inf noise the first kept; -0.0 and 0.0 are a tie (by index)
    N, L = 4, 24
    choices = torch.tensor([float("-inf"), -0.0, 0.0, 1.0, float("inf"), float("nan")])
    scores = choices[torch.randint(0, 6, (N, L), generator=gen)]
    noise = choices[torch.randint(0, 6, (N, L), generator=gen)]
    for mr, hr in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0), (0.25, 0.5)]:
        assert_matches_naive(scores, noise, mr, hr)


def test_nan_scores_and_noise_together(gen):
    N, L = 5, 30
    scores = torch.randint(0, 3, (N, L), generator=gen).float()
    scores[torch.rand(N, L, generator=gen) < 0.3] = float("nan")
    noise = torch.rand(N, L, generator=gen)
    noise[torch.rand(N, L, generator=gen) < 0.3] = float("nan")
    for mr, hr in [(0.75, 0.25), (0.5, 0.5), (0.9, 1.0)]:
        assert_matches_naive(scores, noise, mr, hr)


# --------------------------------------------------------------------------------------------
# memory layout


def test_non_contiguous_inputs(gen):
    N, L = 5, 49
    base_s = torch.randint(0, 3, (L, 3 * N), generator=gen).float()
    base_z = torch.rand(2 * L, N, generator=gen)
    layouts = {
        "transposed": (base_s[:, :N].t(), base_z[:L].t()),
        "strided": (base_s.t()[::3], base_z[::2].t()),
        "sliced columns": (
            torch.randint(0, 3, (N, 2 * L), generator=gen).float()[:, 1::2],
            torch.rand(N, L + 7, generator=gen)[:, 7:],
        ),
        "expanded": (torch.randint(0, 3, (1, L), generator=gen).float().expand(N, L), torch.rand(N, L, generator=gen)),
        "flipped": (base_s[:, :N].t().flip(1), base_z[:L].t().flip(0)),
    }
    for name, (scores, noise) in layouts.items():
        assert scores.shape == noise.shape == (N, L), name
        for mr, hr in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0)]:
            got = select_patches(scores, noise, mr, hr)
            want = select_patches(scores.contiguous(), noise.contiguous(), mr, hr)
            for a, b in zip(got, want):
                assert torch.equal(a, b), name
            assert_matches_naive(scores, noise, mr, hr)


# --------------------------------------------------------------------------------------------
# batch rows are independent


def test_rows_independent(gen):
    N, L = 7, 49
    scores = torch.randint(0, 5, (N, L), generator=gen).float()
    noise = torch.rand(N, L, generator=gen)
    for mr, hr in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0)]:
        whole = select_patches(scores, noise, mr, hr)
        for n in range(N):
            alone = select_patches(scores[n : n + 1], noise[n : n + 1], mr, hr)
            for a, b in zip(whole, alone):
                assert torch.equal(a[n : n + 1], b)
        # permuting the batch permutes the result
        perm = torch.randperm(N, generator=gen)
        permuted = select_patches(scores[perm], noise[perm], mr, hr)
        for a, b in zip(whole, permuted):
            assert torch.equal(a[perm], b)


# --------------------------------------------------------------------------------------------
# uniformity of the random remainder (fixed seed: a statistical test must not be flaky)

UNI_L, UNI_MASK_RATIO, UNI_HARD_RATIO, UNI_DRAWS = 16, 0.75, 0.5, 4000


def _uniformity_setup():
    gen = torch.Generator().manual_seed(20230405)
    # fixed scores with ties, including a tie that straddles the hard/non-hard boundary
    row = torch.tensor([3.0, 1, 4, 1, 5, 9, 2, 5, 5, 3, 5, 8, 9, 7, 9, 3])
    scores = row.expand(UNI_DRAWS, UNI_L)
    noise = torch.rand(UNI_DRAWS, UNI_L, generator=gen)
    len_keep, num_mask, num_hard = counts(UNI_L, UNI_MASK_RATIO, UNI_HARD_RATIO)
    hard = stable_top(row, num_hard)
    rest = [l for l in range(UNI_L) if l not in hard]
    return scores, noise, len_keep, num_mask, num_hard, hard, rest


def _marginal_chisquare(mask: torch.Tensor, rest: list[int], num_mask: int, num_hard: int) -> float:
    observed = mask[:, rest].sum(0).double()
    q = (num_mask - num_hard) / len(rest)
    expected = torch.full_like(observed, q * mask.shape[0])
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


def _subset_chisquare(mask: torch.Tensor, rest: list[int], len_keep: int) -> float:
    """Chi-square of the kept subsets over all C(len(rest), len_keep) of them (joint uniformity)."""
    subsets = {s: i for i, s in enumerate(itertools.combinations(rest, len_keep))}
    observed = torch.zeros(len(subsets), dtype=torch.float64)
    for row in (~mask).tolist():
        observed[subsets[tuple(l for l in rest if row[l])]] += 1
    expected = torch.full_like(observed, mask.shape[0] / len(subsets))
    return float(stats.chisquare(observed.numpy(), expected.numpy()).pvalue)


def test_random_remainder_is_uniform():
    scores, noise, len_keep, num_mask, num_hard, hard, rest = _uniformity_setup()
    assert (len_keep, num_mask, num_hard) == (4, 12, 6)
    assert hard == [5, 12, 14, 11, 13, 4]  # the 9s, 8, 7, then the first of the tied 5s (4, 7, 8, 10)
    sel = select_patches(scores, noise, UNI_MASK_RATIO, UNI_HARD_RATIO)
    # hard patches are masked in 100% of rows
    assert bool(sel.mask[:, hard].all())
    assert torch.equal(sel.mask.sum(1), torch.full((UNI_DRAWS,), num_mask))
    # each non-hard patch is masked with probability (num_mask - num_hard) / (L - num_hard)
    assert _marginal_chisquare(sel.mask, rest, num_mask, num_hard) > 1e-4
    # and every kept subset of the non-hard patches is equally likely
    assert _subset_chisquare(sel.mask, rest, len_keep) > 1e-4


def _biased_lowest_index(scores, noise, len_keep, hard):
    """Negative control: keep the lowest-index non-hard patches, ignoring noise."""
    N, L = noise.shape
    rest = [l for l in range(L) if l not in hard]
    mask = torch.ones(N, L, dtype=torch.bool)
    mask[:, rest[:len_keep]] = False
    return mask


def _biased_index_drift(scores, noise, len_keep, hard):
    """Negative control, subtler: the noise key nudged by up to 0.15 by the patch index (as a
    selector that mixes a deterministic tie-break into the key would do)."""
    N, L = noise.shape
    key = noise + 0.15 * torch.arange(L) / L
    key[:, hard] = float("inf")
    mask = torch.ones(N, L, dtype=torch.bool)
    mask.scatter_(1, key.argsort(1)[:, :len_keep], False)
    return mask


def _biased_rotation(scores, noise, len_keep, hard):
    """Negative control for the joint test: keep a random run of len_keep consecutive non-hard
    patches (cyclically). Every patch is kept with the right marginal probability, but only
    len(rest) of the C(len(rest), len_keep) subsets ever occur."""
    N, L = noise.shape
    rest = torch.tensor([l for l in range(L) if l not in hard])
    start = (noise[:, 0] * len(rest)).long().clamp_max(len(rest) - 1)
    keep = rest[(start.unsqueeze(1) + torch.arange(len_keep)) % len(rest)]
    mask = torch.ones(N, L, dtype=torch.bool)
    mask.scatter_(1, keep, False)
    return mask


@pytest.mark.parametrize("selector", [_biased_lowest_index, _biased_index_drift, _biased_rotation])
def test_uniformity_test_has_power(selector):
    scores, noise, len_keep, num_mask, num_hard, hard, rest = _uniformity_setup()
    mask = selector(scores, noise, len_keep, hard)
    # the biased selectors are valid selections (hard masked, right count) ...
    assert bool(mask[:, hard].all())
    assert torch.equal(mask.sum(1), torch.full((UNI_DRAWS,), num_mask))
    # ... but the same chi-square rejects them
    p_marginal = _marginal_chisquare(mask, rest, num_mask, num_hard)
    p_subset = _subset_chisquare(mask, rest, len_keep)
    assert min(p_marginal, p_subset) < 1e-6


def test_reference_backend_pinned_matches_naive():
    # Pin the "reference" backend explicitly, so the ground-truth backend is covered whatever
    # "auto" picks for CPU tensors in the tests above.
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (3, 16), generator=gen).float()
    noise = torch.rand(3, 16, generator=gen)
    with hpm_kernels.backend("reference"):
        assert_matches_naive(scores, noise, 0.75, 0.5)
