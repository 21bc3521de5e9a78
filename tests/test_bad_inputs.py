"""Every public op rejects bad arguments with the right exception type and a message that names
the offending argument in backticks (see hpm_kernels/_validation.py for the convention).

TypeError: wrong Python type or dtype; ValueError: wrong shape, value or device;
IndexError: index out of range (checked inside the op at run time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import _validation
from hpm_kernels.backends import ENV_VAR

# Shapes used throughout: imgs (N=2, C=3, 8, 8), p = 4 -> L = 4 patches of P = 48 values.
N, C, H, W, P_SIZE = 2, 3, 8, 8, 4
L = (H // P_SIZE) * (W // P_SIZE)
P = P_SIZE * P_SIZE * C
K = 3
D = 5


def imgs(n: int = N, c: int = C, h: int = H, w: int = W, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, c, h, w, dtype=dtype)


def ids(n: int = N, k: int = K, high: int = L, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """In-range random indices; the bad-index cases poke one element out of range."""
    return torch.randint(0, high, (n, k)).to(dtype)


def ids_with(value: int, n: int = N, k: int = K, high: int = L) -> torch.Tensor:
    out = ids(n, k, high)
    out[n - 1, k - 1] = value
    return out


def pred(n: int = N, k: int = K, p: int = P) -> torch.Tensor:
    return torch.randn(n, k, p)


def patches(n: int = N, l: int = L, p: int = P) -> torch.Tensor:
    return torch.randn(n, l, p)


def scores(n: int = N, l: int = 16) -> torch.Tensor:
    return torch.randn(n, l)


def noise(n: int = N, l: int = 16) -> torch.Tensor:
    return torch.rand(n, l)


def tokens(n: int = N, l: int = L, d: int = D) -> torch.Tensor:
    return torch.randn(n, l, d)


def rank(n: int = N, m: int = 6) -> torch.Tensor:
    return torch.randn(n, m)


def u8(b: int = N, c: int = C, h: int = H, w: int = W) -> torch.Tensor:
    return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8)


def boxes(n: int = N, row: tuple[int, int, int, int] = (1, 2, 5, 4)) -> torch.Tensor:
    return torch.tensor([row] * n, dtype=torch.int64)


def flips(n: int = N) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.bool)


def crop(images=None, bx=None, fl=None, size=4, mean=None, std=None, **kwargs):
    """hk.resized_crop with valid defaults for every argument not given."""
    images = u8() if images is None else images
    bx = boxes() if bx is None else bx
    fl = flips() if fl is None else fl
    mean = [0.5] * C if mean is None else mean
    std = [0.25] * C if std is None else std
    return hk.resized_crop(images, bx, fl, size, mean, std, **kwargs)


class Case(NamedTuple):
    id: str
    call: Callable[[], object]
    exc: type[Exception]
    names: tuple[str, ...]  # each must appear in the message, in backticks


def case(id: str, call: Callable[[], object], exc: type[Exception], *names: str) -> Case:
    return Case(id, call, exc, names)


# fmt: off
CASES = [
    # ---------------------------------------------------------------- patchify
    case("patchify/imgs-list", lambda: hk.patchify([[1.0]], P_SIZE), TypeError, "imgs"),
    case("patchify/imgs-ndarray", lambda: hk.patchify(imgs().numpy(), P_SIZE), TypeError, "imgs"),
    case("patchify/imgs-int64", lambda: hk.patchify(torch.randint(0, 9, (N, C, H, W)), P_SIZE), TypeError, "imgs"),
    case("patchify/imgs-bool", lambda: hk.patchify(torch.rand(N, C, H, W) > 0.5, P_SIZE), TypeError, "imgs"),
    case("patchify/imgs-complex", lambda: hk.patchify(torch.randn(N, C, H, W, dtype=torch.complex64), P_SIZE), TypeError, "imgs"),
    case("patchify/imgs-3d", lambda: hk.patchify(torch.randn(C, H, W), P_SIZE), ValueError, "imgs"),
    case("patchify/imgs-5d", lambda: hk.patchify(torch.randn(1, N, C, H, W), P_SIZE), ValueError, "imgs"),
    case("patchify/imgs-C0", lambda: hk.patchify(imgs(c=0), P_SIZE), ValueError, "imgs"),
    case("patchify/p-not-dividing-H", lambda: hk.patchify(imgs(h=8, w=12), 3), ValueError, "p"),
    case("patchify/p-not-dividing-W", lambda: hk.patchify(imgs(h=8, w=6), 4), ValueError, "p"),
    case("patchify/p-0", lambda: hk.patchify(imgs(), 0), ValueError, "p"),
    case("patchify/p-negative", lambda: hk.patchify(imgs(), -4), ValueError, "p"),
    case("patchify/p-bool", lambda: hk.patchify(imgs(), True), TypeError, "p"),
    case("patchify/p-float", lambda: hk.patchify(imgs(), 4.0), TypeError, "p"),
    case("patchify/p-str", lambda: hk.patchify(imgs(), "4"), TypeError, "p"),
    case("patchify/ids-list", lambda: hk.patchify(imgs(), P_SIZE, [[0, 1], [2, 3]]), TypeError, "ids"),
    case("patchify/ids-float", lambda: hk.patchify(imgs(), P_SIZE, ids().float()), TypeError, "ids"),
    case("patchify/ids-int32", lambda: hk.patchify(imgs(), P_SIZE, ids(dtype=torch.int32)), TypeError, "ids"),
    case("patchify/ids-1d", lambda: hk.patchify(imgs(), P_SIZE, ids()[0]), ValueError, "ids"),
    case("patchify/ids-3d", lambda: hk.patchify(imgs(), P_SIZE, ids()[None]), ValueError, "ids"),
    case("patchify/ids-batch-mismatch", lambda: hk.patchify(imgs(), P_SIZE, ids(n=N + 1)), ValueError, "ids"),
    case("patchify/ids-negative", lambda: hk.patchify(imgs(), P_SIZE, ids_with(-1)), IndexError, "ids"),
    case("patchify/ids-equal-L", lambda: hk.patchify(imgs(), P_SIZE, ids_with(L)), IndexError, "ids"),
    case("patchify/ids-huge", lambda: hk.patchify(imgs(), P_SIZE, ids_with(2**40)), IndexError, "ids"),
    case("patchify/ids-meta-device", lambda: hk.patchify(imgs(), P_SIZE, ids().to("meta")), ValueError, "imgs", "ids"),
    case("patchify/backend-unknown", lambda: hk.patchify(imgs(), P_SIZE, backend="nope"), ValueError, "backend"),
    case("patchify/backend-int", lambda: hk.patchify(imgs(), P_SIZE, backend=3), TypeError, "backend"),
    # ---------------------------------------------------------------- unpatchify
    case("unpatchify/patches-tuple", lambda: hk.unpatchify((1.0, 2.0), P_SIZE, H, W), TypeError, "patches"),
    case("unpatchify/patches-int32", lambda: hk.unpatchify(torch.randint(0, 9, (N, L, P), dtype=torch.int32), P_SIZE, H, W), TypeError, "patches"),
    case("unpatchify/patches-4d", lambda: hk.unpatchify(patches()[None], P_SIZE, H, W), ValueError, "patches"),
    case("unpatchify/L-too-small-for-H", lambda: hk.unpatchify(patches(), P_SIZE, 2 * H, W), ValueError, "patches"),
    case("unpatchify/L-too-big-for-W", lambda: hk.unpatchify(patches(l=L + 1), P_SIZE, H, W), ValueError, "patches"),
    case("unpatchify/P-not-multiple-of-pp", lambda: hk.unpatchify(patches(p=P - 1), P_SIZE, H, W), ValueError, "patches"),
    case("unpatchify/P-0", lambda: hk.unpatchify(patches(p=0), P_SIZE, H, W), ValueError, "patches"),
    case("unpatchify/H-float", lambda: hk.unpatchify(patches(), P_SIZE, 8.0, W), TypeError, "H"),
    case("unpatchify/W-bool", lambda: hk.unpatchify(patches(), P_SIZE, H, True), TypeError, "W"),
    case("unpatchify/W-0", lambda: hk.unpatchify(patches(l=0), P_SIZE, H, 0), ValueError, "W"),
    case("unpatchify/p-not-dividing-H", lambda: hk.unpatchify(patches(l=4, p=27), 3, 8, 6), ValueError, "p"),
    case("unpatchify/p-0", lambda: hk.unpatchify(patches(), 0, H, W), ValueError, "p"),
    case("unpatchify/p-float", lambda: hk.unpatchify(patches(), 4.0, H, W), TypeError, "p"),
    case("unpatchify/backend-unknown", lambda: hk.unpatchify(patches(), P_SIZE, H, W, backend="nope"), ValueError, "backend"),
    # ---------------------------------------------------------------- patch_mse_loss
    case("mse/pred-list", lambda: hk.patch_mse_loss([0.0], imgs(), P_SIZE, ids()), TypeError, "pred"),
    case("mse/pred-int64", lambda: hk.patch_mse_loss(torch.randint(0, 9, (N, K, P)), imgs(), P_SIZE, ids()), TypeError, "pred"),
    case("mse/pred-bool", lambda: hk.patch_mse_loss(pred() > 0, imgs(), P_SIZE, ids()), TypeError, "pred"),
    case("mse/pred-2d", lambda: hk.patch_mse_loss(pred()[0], imgs(), P_SIZE, ids()), ValueError, "pred"),
    case("mse/pred-wrong-P", lambda: hk.patch_mse_loss(pred(p=P + 1), imgs(), P_SIZE, ids()), ValueError, "pred"),
    case("mse/pred-wrong-K", lambda: hk.patch_mse_loss(pred(k=K + 1), imgs(), P_SIZE, ids()), ValueError, "pred"),
    case("mse/pred-wrong-N", lambda: hk.patch_mse_loss(pred(n=N + 1), imgs(), P_SIZE, ids()), ValueError, "pred"),
    case("mse/imgs-int", lambda: hk.patch_mse_loss(pred(), torch.randint(0, 9, (N, C, H, W)), P_SIZE, ids()), TypeError, "imgs"),
    case("mse/imgs-3d", lambda: hk.patch_mse_loss(pred(), imgs()[0], P_SIZE, ids()), ValueError, "imgs"),
    case("mse/imgs-no-channels", lambda: hk.patch_mse_loss(torch.randn(N, K, 0), imgs(c=0), P_SIZE, ids(), False), ValueError, "imgs"),
    case("mse/p-not-dividing", lambda: hk.patch_mse_loss(pred(), imgs(), 3, ids()), ValueError, "p"),
    case("mse/p-0", lambda: hk.patch_mse_loss(pred(), imgs(), 0, ids()), ValueError, "p"),
    case("mse/p-bool", lambda: hk.patch_mse_loss(pred(), imgs(), True, ids()), TypeError, "p"),
    case("mse/ids-None", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, None), TypeError, "ids"),
    case("mse/ids-float", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids().double()), TypeError, "ids"),
    case("mse/ids-int32", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(dtype=torch.int32)), TypeError, "ids"),
    case("mse/ids-batch-mismatch", lambda: hk.patch_mse_loss(pred(n=1), imgs(), P_SIZE, ids(n=1)), ValueError, "ids"),
    case("mse/ids-negative", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids_with(-3)), IndexError, "ids"),
    case("mse/ids-equal-L", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids_with(L)), IndexError, "ids"),
    case("mse/norm-pix-P1", lambda: hk.patch_mse_loss(pred(p=1), imgs(c=1), 1, ids(high=H * W)), ValueError, "norm_pix"),
    case("mse/norm-pix-int", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), 1), TypeError, "norm_pix"),
    case("mse/norm-pix-str", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), "True"), TypeError, "norm_pix"),
    case("mse/eps-negative", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), True, -1e-6), ValueError, "eps"),
    case("mse/eps-nan", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), True, math.nan), ValueError, "eps"),
    case("mse/eps-inf", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), True, math.inf), ValueError, "eps"),
    case("mse/eps-str", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), True, "1e-6"), TypeError, "eps"),
    case("mse/imgs-meta-device", lambda: hk.patch_mse_loss(pred(), imgs().to("meta"), P_SIZE, ids()), ValueError, "pred", "imgs", "ids"),
    case("mse/backend-unknown", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), backend="nope"), ValueError, "backend"),
    case("mse/backend-int", lambda: hk.patch_mse_loss(pred(), imgs(), P_SIZE, ids(), backend=3), TypeError, "backend"),
    # ---------------------------------------------------------------- select_patches
    case("select/scores-list", lambda: hk.select_patches([[0.1, 0.2]], noise(), 0.75, 0.5), TypeError, "scores"),
    case("select/scores-int", lambda: hk.select_patches(torch.randint(0, 9, (N, 16)), noise(), 0.75, 0.5), TypeError, "scores"),
    case("select/scores-1d", lambda: hk.select_patches(scores()[0], noise()[0], 0.75, 0.5), ValueError, "scores"),
    case("select/scores-3d", lambda: hk.select_patches(scores()[None], noise()[None], 0.75, 0.5), ValueError, "scores"),
    case("select/noise-None", lambda: hk.select_patches(scores(), None, 0.75, 0.5), TypeError, "noise"),
    case("select/noise-bool", lambda: hk.select_patches(scores(), noise() > 0.5, 0.75, 0.5), TypeError, "noise"),
    case("select/noise-shape-L", lambda: hk.select_patches(scores(), noise(l=15), 0.75, 0.5), ValueError, "noise"),
    case("select/noise-shape-N", lambda: hk.select_patches(scores(), noise(n=N + 1), 0.75, 0.5), ValueError, "noise"),
    case("select/mask-ratio-0", lambda: hk.select_patches(scores(), noise(), 0.0, 0.5), ValueError, "mask_ratio"),
    case("select/mask-ratio-1", lambda: hk.select_patches(scores(), noise(), 1.0, 0.5), ValueError, "mask_ratio"),
    case("select/mask-ratio-int-1", lambda: hk.select_patches(scores(), noise(), 1, 0.5), ValueError, "mask_ratio"),
    case("select/mask-ratio-negative", lambda: hk.select_patches(scores(), noise(), -0.1, 0.5), ValueError, "mask_ratio"),
    case("select/mask-ratio-nan", lambda: hk.select_patches(scores(), noise(), math.nan, 0.5), ValueError, "mask_ratio"),
    case("select/mask-ratio-str", lambda: hk.select_patches(scores(), noise(), "0.75", 0.5), TypeError, "mask_ratio"),
    case("select/mask-ratio-bool", lambda: hk.select_patches(scores(), noise(), True, 0.5), TypeError, "mask_ratio"),
    case("select/mask-ratio-tensor", lambda: hk.select_patches(scores(), noise(), torch.tensor(0.75), 0.5), TypeError, "mask_ratio"),
    case("select/hard-ratio-negative", lambda: hk.select_patches(scores(), noise(), 0.75, -0.01), ValueError, "hard_ratio"),
    case("select/hard-ratio-above-1", lambda: hk.select_patches(scores(), noise(), 0.75, 1.01), ValueError, "hard_ratio"),
    case("select/hard-ratio-nan", lambda: hk.select_patches(scores(), noise(), 0.75, math.nan), ValueError, "hard_ratio"),
    case("select/hard-ratio-inf", lambda: hk.select_patches(scores(), noise(), 0.75, math.inf), ValueError, "hard_ratio"),
    case("select/hard-ratio-None", lambda: hk.select_patches(scores(), noise(), 0.75, None), TypeError, "hard_ratio"),
    case("select/noise-meta-device", lambda: hk.select_patches(scores(), noise().to("meta"), 0.75, 0.5), ValueError, "scores", "noise"),
    case("select/backend-unknown", lambda: hk.select_patches(scores(), noise(), 0.75, 0.5, backend="nope"), ValueError, "backend"),
    case("select/backend-int", lambda: hk.select_patches(scores(), noise(), 0.75, 0.5, backend=3), TypeError, "backend"),
    # ---------------------------------------------------------------- gather_tokens
    case("gather/x-list", lambda: hk.gather_tokens([[[0.0]]], ids()), TypeError, "x"),
    case("gather/x-int", lambda: hk.gather_tokens(torch.randint(0, 9, (N, L, D)), ids()), TypeError, "x"),
    case("gather/x-2d", lambda: hk.gather_tokens(tokens()[0], ids()), ValueError, "x"),
    case("gather/x-4d", lambda: hk.gather_tokens(tokens()[None], ids()), ValueError, "x"),
    case("gather/x-batch-not-1-or-N", lambda: hk.gather_tokens(tokens(n=N + 1), ids()), ValueError, "x"),
    case("gather/x-batch-N-ids-batch-1", lambda: hk.gather_tokens(tokens(), ids(n=1)), ValueError, "x"),
    case("gather/ids-float", lambda: hk.gather_tokens(tokens(), ids().float()), TypeError, "ids"),
    case("gather/ids-int32", lambda: hk.gather_tokens(tokens(), ids(dtype=torch.int32)), TypeError, "ids"),
    case("gather/ids-1d", lambda: hk.gather_tokens(tokens(), ids()[0]), ValueError, "ids"),
    case("gather/ids-negative", lambda: hk.gather_tokens(tokens(), ids_with(-1)), IndexError, "ids"),
    case("gather/ids-equal-L", lambda: hk.gather_tokens(tokens(), ids_with(L)), IndexError, "ids"),
    case("gather/ids-out-of-range-shared-x", lambda: hk.gather_tokens(tokens(n=1), ids_with(L + 7)), IndexError, "ids"),
    case("gather/x-meta-device", lambda: hk.gather_tokens(tokens().to("meta"), ids()), ValueError, "x", "ids"),
    case("gather/backend-unknown", lambda: hk.gather_tokens(tokens(), ids(), backend="nope"), ValueError, "backend"),
    # ---------------------------------------------------------------- pairwise_ranking_loss
    case("rank/pred-list", lambda: hk.pairwise_ranking_loss([[0.0, 1.0]], rank()), TypeError, "pred"),
    case("rank/pred-int", lambda: hk.pairwise_ranking_loss(torch.randint(0, 9, (N, 6)), rank()), TypeError, "pred"),
    case("rank/pred-1d", lambda: hk.pairwise_ranking_loss(rank()[0], rank()[0]), ValueError, "pred"),
    case("rank/pred-3d", lambda: hk.pairwise_ranking_loss(rank()[None], rank()[None]), ValueError, "pred"),
    case("rank/target-int", lambda: hk.pairwise_ranking_loss(rank(), torch.randint(0, 9, (N, 6))), TypeError, "target"),
    case("rank/target-1d", lambda: hk.pairwise_ranking_loss(rank(), rank()[0]), ValueError, "target"),
    case("rank/target-shape-M", lambda: hk.pairwise_ranking_loss(rank(), rank(m=5)), ValueError, "target"),
    case("rank/target-shape-N", lambda: hk.pairwise_ranking_loss(rank(), rank(n=N + 1)), ValueError, "target"),
    case("rank/eps-negative", lambda: hk.pairwise_ranking_loss(rank(), rank(), -1e-6), ValueError, "eps"),
    case("rank/eps-nan", lambda: hk.pairwise_ranking_loss(rank(), rank(), math.nan), ValueError, "eps"),
    case("rank/eps-inf", lambda: hk.pairwise_ranking_loss(rank(), rank(), math.inf), ValueError, "eps"),
    case("rank/eps-None", lambda: hk.pairwise_ranking_loss(rank(), rank(), None), TypeError, "eps"),
    case("rank/target-meta-device", lambda: hk.pairwise_ranking_loss(rank(), rank().to("meta")), ValueError, "pred", "target"),
    case("rank/backend-unknown", lambda: hk.pairwise_ranking_loss(rank(), rank(), backend="nope"), ValueError, "backend"),
    case("rank/backend-int", lambda: hk.pairwise_ranking_loss(rank(), rank(), backend=3), TypeError, "backend"),
    # ---------------------------------------------------------------- resized_crop
    case("crop/images-list", lambda: crop(images=[[0]]), TypeError, "images"),
    case("crop/images-int64", lambda: crop(images=u8().long()), TypeError, "images"),
    case("crop/images-float64", lambda: crop(images=u8().double()), TypeError, "images"),
    case("crop/images-3d", lambda: crop(images=u8()[0]), ValueError, "images"),
    case("crop/images-W0", lambda: crop(images=u8(w=0)), ValueError, "images"),
    case("crop/images-requires-grad", lambda: crop(images=u8().float().requires_grad_()), ValueError, "images"),
    case("crop/boxes-list", lambda: crop(bx=[[0, 0, 1, 1]] * N), TypeError, "boxes"),
    case("crop/boxes-int32", lambda: crop(bx=boxes().int()), TypeError, "boxes"),
    case("crop/boxes-shape", lambda: crop(bx=boxes()[:, :3]), ValueError, "boxes"),
    case("crop/boxes-rows", lambda: crop(bx=boxes(n=N + 1)), ValueError, "boxes"),
    case("crop/boxes-height-0", lambda: crop(bx=boxes(row=(0, 0, 0, 4))), ValueError, "boxes"),
    case("crop/boxes-top-negative", lambda: crop(bx=boxes(row=(-1, 0, 2, 2))), ValueError, "boxes"),
    case("crop/boxes-past-bottom", lambda: crop(bx=boxes(row=(4, 0, H - 3, 2))), ValueError, "boxes"),
    case("crop/boxes-past-right", lambda: crop(bx=boxes(row=(0, 1, 2, W))), ValueError, "boxes"),
    case("crop/flip-int", lambda: crop(fl=flips().long()), TypeError, "flip"),
    case("crop/flip-length", lambda: crop(fl=flips(n=N + 1)), ValueError, "flip"),
    case("crop/flip-list", lambda: crop(fl=[False] * N), TypeError, "flip"),
    case("crop/size-0", lambda: crop(size=0), ValueError, "size"),
    case("crop/size-triple", lambda: crop(size=(4, 4, 4)), TypeError, "size"),
    case("crop/size-float", lambda: crop(size=(4.0, 4)), TypeError, "size"),
    case("crop/mean-length", lambda: crop(mean=[0.5]), ValueError, "mean"),
    case("crop/mean-str", lambda: crop(mean="0.5"), TypeError, "mean"),
    case("crop/mean-nan", lambda: crop(mean=[0.5, math.nan, 0.5]), ValueError, "mean"),
    case("crop/std-zero", lambda: crop(std=[0.5, 0.0, 0.5]), ValueError, "std"),
    case("crop/std-length", lambda: crop(std=[0.5] * (C + 1)), ValueError, "std"),
    case("crop/interpolation-nearest", lambda: crop(interpolation="nearest"), ValueError, "interpolation"),
    case("crop/interpolation-int", lambda: crop(interpolation=2), TypeError, "interpolation"),
    case("crop/index-int32", lambda: crop(index=torch.zeros(N, dtype=torch.int32)), TypeError, "index"),
    case("crop/index-2d", lambda: crop(index=torch.zeros(N, 1, dtype=torch.int64)), ValueError, "index"),
    case("crop/index-vs-boxes", lambda: crop(index=torch.zeros(N + 1, dtype=torch.int64)), ValueError, "boxes"),
    case("crop/index-out-of-range", lambda: crop(index=torch.tensor([0, N])), IndexError, "index"),
    case("crop/index-negative", lambda: crop(index=torch.tensor([-1, 0])), IndexError, "index"),
    case("crop/flip-meta-device", lambda: crop(fl=flips().to("meta")), ValueError, "images", "flip"),
    case("crop/backend-unknown", lambda: crop(backend="nope"), ValueError, "backend"),
    # ---------------------------------------------------------------- context manager
    case("context/backend-unknown", lambda: hk.backend("nope").__enter__(), ValueError, "backend"),
    case("context/backend-int", lambda: hk.backend(3).__enter__(), TypeError, "backend"),
]
# fmt: on


def test_case_ids_are_unique() -> None:
    ids_ = [c.id for c in CASES]
    assert len(ids_) == len(set(ids_))
    assert len(CASES) >= 40


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend named in the environment must not change which error a case hits."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(_validation, "CHECK_INDICES", True)


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_rejected(bad: Case) -> None:
    with pytest.raises(bad.exc) as info:
        bad.call()
    # exactly the promised type, not a subclass that happens to match (e.g. BackendUnavailableError)
    assert type(info.value) is bad.exc, f"{type(info.value).__name__}: {info.value}"
    message = str(info.value)
    for name in bad.names:
        assert f"`{name}`" in message, f"`{name}` not named in: {message}"


def test_device_mismatch_message_names_the_devices() -> None:
    with pytest.raises(ValueError) as info:
        hk.gather_tokens(tokens().to("meta"), ids())
    assert "`x` on meta" in str(info.value)
    assert "`ids` on cpu" in str(info.value)


def test_bad_backend_in_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "nope")
    with pytest.raises(ValueError) as info:
        hk.patchify(imgs(), P_SIZE)
    assert f"`{ENV_VAR}`" in str(info.value)


def test_index_range_check_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    x, i, t = imgs(), ids(), tokens()
    pr = pred()
    expected = (
        hk.patchify(x, P_SIZE, i),
        hk.gather_tokens(t, i),
        hk.patch_mse_loss(pr, x, P_SIZE, i)[1],
    )
    monkeypatch.setattr(_validation, "CHECK_INDICES", False)
    # the check itself is skipped ...
    _validation.check_index_range("ids", ids_with(-1), L)
    # ... and in-range calls give the same results as with it on
    got = (
        hk.patchify(x, P_SIZE, i),
        hk.gather_tokens(t, i),
        hk.patch_mse_loss(pr, x, P_SIZE, i)[1],
    )
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_numpy_scalars_are_accepted_as_numbers():
    import numpy as np

    x = imgs()
    torch.testing.assert_close(hk.patchify(x, np.int64(P_SIZE)), hk.patchify(x, P_SIZE))
    s, z = scores(), noise()
    want = hk.select_patches(s, z, 0.5, 0.25)
    got = hk.select_patches(s, z, np.float32(0.5), np.float16(0.25))
    for g, w in zip(got, want):
        assert torch.equal(g, w)
