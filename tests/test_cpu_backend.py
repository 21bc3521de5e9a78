"""The C++ CPU backend ("cpu": hpm_kernels._C, csrc/cpu/) against the reference, every op forward
and backward, on the test matrix of the Triton kernels (tests/test_triton_*.py).

float32 results must match the reference within 1e-5. Half-precision results (bfloat16, and
float16, which the backend also takes) follow the flash-attention rule: their error against the
reference evaluated in float64 on the same values is at most twice the reference's own error in
that dtype, plus a small atol. Copies (patchify, gather) and select_patches must be exact. Every
kernel output is poisoned (hpm_C::_set_poison: NaN floats, INT64_MAX/MIN ints, True/False bools)
before it is written, so an element a kernel forgets to write fails the comparison.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import compiled
from hpm_kernels.ops._dispatch import choose
from tests.select_cases import RATIOS, SPECIAL_RATIOS, select_rows, special_rows

CPU_INFO = next((b for b in hk.available_backends() if b.name == "cpu"), None)
CPU_OK = CPU_INFO is not None and CPU_INFO.available
requires_cpu = pytest.mark.skipif(
    not CPU_OK, reason=f"C++ CPU backend unavailable: {CPU_INFO.reason if CPU_INFO else 'not registered'}"
)

F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16
DTYPES = [pytest.param(F32, id="float32"), pytest.param(BF16, id="bfloat16")]
DTYPES3 = [*DTYPES, pytest.param(F16, id="float16")]
# (N, C, H, W, p): p = 4/8/14/16, C = 1/3, H != W, L not a power of two.
SHAPES = [(2, 3, 8, 12, 4), (1, 1, 16, 24, 8), (2, 3, 28, 14, 14), (1, 3, 32, 16, 16), (3, 1, 12, 20, 4)]
LAYOUTS = ["contiguous", "channels_last", "strided"]


# ----------------------------------------------------------------------------------------------
# Running and comparing


@contextlib.contextmanager
def poisoned(mode: int) -> Iterator[None]:
    torch.ops.hpm_C._set_poison(mode)
    try:
        yield
    finally:
        torch.ops.hpm_C._set_poison(0)


def run_cpu(fn, *args, mode: int = 1, **kwargs):
    """fn(*args, **kwargs) (forward and any backward inside fn) on the cpu backend, outputs poisoned."""
    with poisoned(mode), hk.backend("cpu"):
        return fn(*args, **kwargs)


def run_reference(fn, *args, **kwargs):
    with hk.backend("reference"):
        return fn(*args, **kwargs)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def check_close(got: torch.Tensor, want: torch.Tensor, want64: torch.Tensor | None = None) -> None:
    """got (cpu) vs want (reference, same inputs); for half dtypes also against want64, the
    reference run in float64 on the same values: err(got) <= 2 err(want) + atol."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not got.isnan().any() or want.isnan().any(), "NaN (poison?) in the output"
    if got.dtype == F32 or want64 is None:
        atol = rtol = 1e-5 if got.dtype == F32 else 1e-2
        torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=False)
        return
    scale = max(1.0, want64.abs().max().item()) if want64.numel() else 1.0
    ours, theirs = _max_err(got, want64), _max_err(want, want64)
    assert ours <= 2 * theirs + 1e-5 * scale, f"error {ours:.3g} vs the reference's own {theirs:.3g} (scale {scale:.3g})"


def _double(x):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    return x


def _images(gen, shape, dtype, layout="contiguous"):
    N, C, H, W, _ = shape
    if layout == "strided":  # every other column of a wider image
        return torch.randn(N, C, H, 2 * W, generator=gen).to(dtype)[..., ::2]
    imgs = torch.randn(N, C, H, W, generator=gen).to(dtype)
    return imgs.to(memory_format=torch.channels_last) if layout == "channels_last" else imgs


def _id_sets(gen, N, L):
    """K = 0; K = L (a permutation per row); repeated ids (K = L + 2 > L)."""
    return [
        torch.zeros(N, 0, dtype=torch.int64),
        torch.rand(N, L, generator=gen).argsort(dim=1),
        torch.randint(0, L, (N, L + 2), generator=gen),
    ]


# ----------------------------------------------------------------------------------------------
# Build and registration (not skipped: a compiler without the extension is a failure)


def _cxx() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


@pytest.mark.skipif(_cxx() is None, reason="no C++ compiler: the extension cannot have been built")
def test_extension_built_with_every_op():
    assert CPU_OK, f"a C++ compiler is present but the cpu backend is unavailable: {CPU_INFO and CPU_INFO.reason}"
    missing = [op for op in compiled.OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"hpm_C::{op}", "CPU")]
    assert not missing, f"hpm_C ops without a CPU kernel: {missing}"
    assert set(compiled.registered_kernels("CPU")) == set(compiled.OPS)


@requires_cpu
def test_backend_declaration():
    assert set(CPU_INFO.dtypes) == {"bfloat16", "float16", "float32"} and CPU_INFO.devices == ("cpu",)
    with pytest.raises(hk.BackendUnavailableError, match="float64"):
        hk.patchify(torch.randn(1, 1, 4, 4, dtype=torch.float64), 2, backend="cpu")
    # Mixed float dtypes are accepted (converted inside the kernels).
    pred = torch.randn(2, 6, 48, dtype=BF16)
    hk.patch_mse_loss(pred, torch.randn(2, 3, 8, 12), 4, torch.zeros(2, 6, dtype=torch.int64), backend="cpu")


@requires_cpu
def test_auto_picks_cpu_only_for_the_ops_it_leads():
    from hpm_kernels import backends

    cpu = backends._REGISTRY["cpu"]
    x = torch.randn(2, 3, 8, 8)
    for op in compiled.OPS:
        want = "cpu" if op in cpu.kernels and cpu.priority > backends._REGISTRY["reference"].priority else "reference"
        assert choose(op, None, x, row=4) == want, op


@requires_cpu
def test_poison_mode_is_checked():
    with pytest.raises(RuntimeError, match="mode must be 0"):
        torch.ops.hpm_C._set_poison(3)
    torch.ops.hpm_C._set_poison(0)


# ----------------------------------------------------------------------------------------------
# patchify / unpatchify


def _patchify_grad(imgs, p, ids, grad):
    x = imgs.detach().clone().requires_grad_()
    out = hk.patchify(x, p, ids)
    out.backward(grad)
    return out.detach(), x.grad


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_patchify_forward_backward(gen, shape, dtype, layout):
    N, _, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = _images(gen, shape, dtype, layout)
    for i, ids in enumerate([None, *_id_sets(gen, N, L), torch.randint(0, L, (N, max(1, L // 3)), generator=gen)]):
        K = L if ids is None else ids.shape[1]
        grad = torch.randn(N, K, p * p * shape[1], generator=gen).to(dtype)
        out, d_imgs = run_cpu(_patchify_grad, imgs, p, ids, grad, mode=1 + i % 2)
        want, d_want = run_reference(_patchify_grad, imgs, p, ids, grad)
        assert torch.equal(out, want)
        d64 = run_reference(_patchify_grad, imgs.double(), p, ids, grad.double())[1] if dtype != F32 else None
        check_close(d_imgs, d_want, d64)


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES3)
def test_patchify_backward_adds_repeated_ids(gen, dtype):
    imgs = torch.randn(2, 3, 8, 8, generator=gen).to(dtype)
    ids = torch.tensor([[1, 1, 1, 0], [3, 2, 3, 3]])
    grad = torch.rand(2, 4, 48, generator=gen).to(dtype)
    _, got = run_cpu(_patchify_grad, imgs, 4, ids, grad)
    _, want = run_reference(_patchify_grad, imgs, 4, ids, grad)
    _, want64 = run_reference(_patchify_grad, imgs.double(), 4, ids, grad.double())
    check_close(got, want, want64)
    assert not got[0, :, 4:, 4:].any() and not got[1, :, :4, :4].any()  # never taken: zeros


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES3)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_unpatchify_forward_backward(gen, shape, dtype):
    N, C, H, W, p = shape
    patches = torch.randn(N, (H // p) * (W // p), p * p * C, generator=gen).to(dtype)
    grad = torch.randn(N, C, H, W, generator=gen).to(dtype)

    def run(x):
        x = x.detach().clone().requires_grad_()
        out = hk.unpatchify(x, p, H, W)
        out.backward(grad)
        return out.detach(), x.grad

    wide = torch.randn(N, patches.shape[1], 2 * patches.shape[2], generator=gen).to(dtype)[..., ::2]  # element stride 2
    for i, source in enumerate([patches, patches.transpose(0, 1).contiguous().transpose(0, 1), wide]):
        got = run_cpu(run, source, mode=1 + i % 2)
        want = run_reference(run, source)
        assert all(torch.equal(g, w) for g, w in zip(got, want))


# ----------------------------------------------------------------------------------------------
# gather_tokens


def _gather_grad(x, ids, grad):
    x = x.detach().clone().requires_grad_()
    out = hk.gather_tokens(x, ids)
    out.backward(grad)
    return out.detach(), x.grad


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_batch", ["N", 1])
@pytest.mark.parametrize("D", [1, 7, 64, 1100])
def test_gather_tokens_forward_backward(gen, dtype, x_batch, D):
    N, L = 3, 11
    x = torch.randn(N if x_batch == "N" else 1, L, D, generator=gen).to(dtype)
    for i, K in enumerate([0, 1, L, 2 * L]):
        ids = torch.randint(0, L, (N, K), generator=gen)
        grad = torch.randn(N, K, D, generator=gen).to(dtype)
        out, d_x = run_cpu(_gather_grad, x, ids, grad, mode=1 + i % 2)
        want, d_want = run_reference(_gather_grad, x, ids, grad)
        assert torch.equal(out, want)
        d64 = run_reference(_gather_grad, x.double(), ids, grad.double())[1] if dtype != F32 else None
        check_close(d_x, d_want, d64)


@requires_cpu
def test_gather_tokens_non_contiguous_inputs(gen):
    x = torch.randn(9, 4, 10, generator=gen).transpose(0, 1)  # (4, 9, 10), strided
    ids = torch.randint(0, 9, (6, 4), generator=gen).t()  # (4, 6), strided
    grad = torch.randn(10, 6, 4, generator=gen).permute(2, 1, 0)  # (4, 6, 10), strided
    got, want = run_cpu(_gather_grad, x, ids, grad), run_reference(_gather_grad, x, ids, grad)
    assert torch.equal(got[0], want[0])
    check_close(got[1], want[1])
    x1 = torch.randn(1, 9, 20, generator=gen)[..., ::2]  # batch-1 x, element stride 2
    got, want = run_cpu(_gather_grad, x1, ids, grad), run_reference(_gather_grad, x1, ids, grad)
    assert torch.equal(got[0], want[0])
    check_close(got[1], want[1])


# ----------------------------------------------------------------------------------------------
# patch_mse_loss


def _mse_grad(pred, imgs, p, ids, norm_pix, w):
    """(loss, per_patch, d pred) with d pred from loss + (w * per_patch).sum(): both gradient paths."""
    x = pred.detach().clone().requires_grad_()
    loss, per_patch = hk.patch_mse_loss(x, imgs, p, ids, norm_pix)
    (loss + (w * per_patch).sum()).backward()
    return loss.detach(), per_patch.detach(), x.grad


def _compare_mse(gen, pred, imgs, p, ids, norm_pix, mode=1):
    w = torch.randn(ids.shape, generator=gen)
    got = run_cpu(_mse_grad, pred, imgs, p, ids, norm_pix, w, mode=mode)
    want = run_reference(_mse_grad, pred, imgs, p, ids, norm_pix, w)
    low = pred.dtype != F32 or imgs.dtype != F32
    want64 = run_reference(_mse_grad, pred.double(), imgs.double(), p, ids, norm_pix, w.double()) if low else (None,) * 3
    for g, r, r64 in zip(got, want, want64):
        check_close(g, r, r64)
    return got


NORM = [pytest.param(True, id="norm"), pytest.param(False, id="plain")]


@requires_cpu
@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_patch_mse_loss_forward_backward(gen, shape, dtype, norm_pix):
    N, C, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = _images(gen, shape, dtype)
    for i, ids in enumerate(_id_sets(gen, N, L)):
        pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(dtype)
        loss, per_patch, grad = _compare_mse(gen, pred, imgs, p, ids, norm_pix, mode=1 + i % 2)
        assert loss.dtype == per_patch.dtype == F32 and grad.dtype == dtype
        if ids.shape[1] == 0:
            assert loss.item() == 0.0 and per_patch.shape == (N, 0) and grad.shape == pred.shape


@requires_cpu
@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2]], ids=str)
def test_patch_mse_loss_image_layouts(gen, shape, layout, norm_pix):
    N, C, H, W, p = shape
    imgs = _images(gen, shape, F32, layout)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen)
    _compare_mse(gen, pred, imgs, p, ids, norm_pix)


@requires_cpu
@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize(
    "dtypes", [(BF16, F32), (F32, BF16), (F16, F32), (BF16, F16)], ids=lambda d: str(d).removeprefix("torch.")
)
def test_patch_mse_loss_mixed_dtypes(gen, dtypes, norm_pix):
    pred_dtype, img_dtype = dtypes
    N, C, H, W, p = SHAPES[3]
    imgs = _images(gen, SHAPES[3], img_dtype, "channels_last")
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen).to(pred_dtype)
    _, _, grad = _compare_mse(gen, pred, imgs, p, ids, norm_pix)
    assert grad.dtype == pred_dtype


@requires_cpu
def test_patch_mse_loss_strided_pred_ids_and_large_patch(gen):
    N, C, H, W, p = SHAPES[0]
    L, K, P = (H // p) * (W // p), 5, p * p * C
    imgs = _images(gen, SHAPES[0], F32, "strided")
    ids = torch.randint(0, L, (K, N), generator=gen).t()  # (N, K), strided
    pred = torch.randn(P, K, N, generator=gen).permute(2, 1, 0)  # (N, K, P), strided
    for norm_pix in [True, False]:
        _compare_mse(gen, pred, imgs, p, ids, norm_pix, mode=2)
    big = (1, 3, 40, 80, 40)  # P = 4800
    imgs = _images(gen, big, BF16, "strided")
    pred = torch.randn(1, 3, 4800, generator=gen).to(BF16)
    _compare_mse(gen, pred, imgs, 40, torch.tensor([[1, 0, 1]]), True)


@requires_cpu
@pytest.mark.parametrize("norm_pix", NORM)
def test_patch_mse_loss_float32_matches_float64_reference(gen, norm_pix):
    N, C, H, W, p = SHAPES[2]
    imgs = _images(gen, SHAPES[2], F32)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen)
    w = torch.randn(ids.shape, generator=gen)
    got = run_cpu(_mse_grad, pred, imgs, p, ids, norm_pix, w)
    want = run_reference(_mse_grad, pred.double(), imgs.double(), p, ids, norm_pix, w.double())
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r.float(), rtol=1e-5, atol=1e-7 * r.abs().max().item())


@requires_cpu
@pytest.mark.parametrize("which", ["loss", "per_patch"])
def test_patch_mse_loss_single_gradient_path(gen, which):
    N, C, H, W, p = SHAPES[4]
    imgs = _images(gen, SHAPES[4], F32)
    ids = _id_sets(gen, N, (H // p) * (W // p))[2]
    pred = torch.randn(N, ids.shape[1], p * p * C, generator=gen)

    def run(pred):
        x = pred.clone().requires_grad_()
        loss, per_patch = hk.patch_mse_loss(x, imgs, p, ids, True)
        (loss if which == "loss" else per_patch.sum()).backward()
        return x.grad

    check_close(run_cpu(run, pred), run_reference(run, pred))


# ----------------------------------------------------------------------------------------------
# select_patches (bit for bit)

SEL_SHAPES = [(2, 1), (2, 2), (4, 7), (4, 49), (4, 196), (2, 197), (1, 256), (1, 576), (1, 4096)]


def _check_select(scores, noise, mask_ratio, hard_ratio, mode=1):
    got = run_cpu(hk.select_patches, scores, noise, mask_ratio, hard_ratio, mode=mode)
    want = run_reference(hk.select_patches, scores, noise, mask_ratio, hard_ratio)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and torch.equal(g, w)
    return got


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES3)
@pytest.mark.parametrize("shape", SEL_SHAPES, ids=str)
def test_select_patches_matches_reference(gen, shape, dtype):
    N, L = shape
    scores = select_rows(gen, N, L, dtype, "scores")
    noise = select_rows(gen, N + 1, L, dtype, "noise")[1:]  # one pattern ahead of the scores
    for i, (mask_ratio, hard_ratio) in enumerate(RATIOS):
        _check_select(scores, noise, mask_ratio, hard_ratio, mode=1 + i % 2)


@requires_cpu
@pytest.mark.parametrize("L", [7, 196])
def test_select_patches_ties_and_special_values_everywhere(gen, L):
    N = 6
    scores, noise = special_rows(gen, N, L)
    for i, (mask_ratio, hard_ratio) in enumerate(SPECIAL_RATIOS):
        _check_select(scores, noise, mask_ratio, hard_ratio, mode=1 + i % 2)


@requires_cpu
def test_select_patches_signed_zero_ties_by_index():
    scores = torch.tensor([[-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, 0.0, -0.0]])
    noise = scores.flip(1).clone()
    for hard_ratio in [0.0, 0.5, 1.0]:
        got = _check_select(scores, noise, 0.5, hard_ratio)
    assert got.mask.tolist() == [[True, True, True, False, True, False, False, False]]


@requires_cpu
@pytest.mark.parametrize("dtypes", [(F16, F32), (F32, BF16), (BF16, F16)], ids=lambda d: "-".join(str(t)[6:] for t in d))
def test_select_patches_mixed_dtypes(gen, dtypes):
    N, L = 4, 197
    scores = select_rows(gen, N, L, dtypes[0], "scores")
    noise = select_rows(gen, N + 1, L, dtypes[1], "noise")[1:]
    for mask_ratio, hard_ratio in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0)]:
        _check_select(scores, noise, mask_ratio, hard_ratio, mode=2)


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_select_patches_non_contiguous_inputs(gen, dtype):
    N, L = 4, 49
    transposed = select_rows(gen, L, N, dtype, "scores").t()  # (N, L), row stride 1
    strided = select_rows(gen, N, 3 * L, dtype, "noise")[:, ::3]  # element stride 3
    one_row = select_rows(gen, 1, L, dtype, "scores").expand(N, L)  # row stride 0
    every_other_row = select_rows(gen, 2 * N, L, dtype, "noise")[::2]
    for scores, noise in [(transposed, strided), (one_row, every_other_row), (strided, transposed)]:
        _check_select(scores, noise, 0.75, 0.5, mode=1)
        _check_select(scores, noise, 0.5, 0.0, mode=2)


@requires_cpu
def test_select_patches_empty_batch():
    sel = _check_select(torch.empty(0, 49), torch.empty(0, 49), 0.75, 0.5)
    assert [tuple(t.shape) for t in sel] == [(0, 12), (0, 37), (0, 49), (0, 49)]


# ----------------------------------------------------------------------------------------------
# pairwise_ranking_loss


def _rank_grad(pred, target, eps=1e-6):
    """(loss, d loss / d pred) for an upstream gradient of M (scales the gradient to O(1))."""
    x = pred.detach().clone().requires_grad_()
    loss = hk.pairwise_ranking_loss(x, target, eps)
    loss.backward(torch.tensor(float(max(pred.shape[1], 1))))
    return loss.detach(), x.grad


def _check_rank(pred, target, eps=1e-6, mode=1):
    got = run_cpu(_rank_grad, pred, target, eps, mode=mode)
    want = run_reference(_rank_grad, pred, target, eps)
    low = pred.dtype != F32 or target.dtype != F32
    want64 = run_reference(_rank_grad, pred.double(), target.double(), eps) if low else (None, None)
    assert got[0].dtype == F32 and got[1].dtype == pred.dtype
    check_close(got[0], want[0], want64[0])
    check_close(got[1], want[1], want64[1])
    return got


def _rank_inputs(gen, N, M, dtype, target_dtype=None, scale=1.0):
    pred = (scale * torch.randn(N, M, generator=gen)).to(dtype)
    return pred, torch.rand(N, M, generator=gen).to(target_dtype or dtype)


RANK_SHAPES = [(1, 1), (2, 7), (3, 49), (2, 64), (2, 147), (1, 300), (1, 0), (0, 5)]


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES3)
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
def test_ranking_loss_forward_backward(gen, shape, dtype):
    _check_rank(*_rank_inputs(gen, *shape, dtype), mode=1 + shape[1] % 2)


@requires_cpu
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1])
def test_ranking_loss_eps(gen, eps):
    _check_rank(*_rank_inputs(gen, 2, 70, F32), eps=eps, mode=2)


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_ranking_loss_ties_and_nan_targets(gen, dtype):
    pred = torch.randn(3, 100, generator=gen).to(dtype)
    for target in [torch.full_like(pred, 0.25), torch.full_like(pred, float("nan"))]:
        loss, grad = _check_rank(pred, target)
        assert loss.item() == 0.0 and not grad.any()
    target = torch.randint(0, 3, (3, 100), generator=gen).to(dtype)
    target[1] = 1.0
    target[2, ::3] = -0.0  # ties with +0.0
    target[2, 1::3] = 0.0
    _check_rank(pred, target)
    pred, target = _rank_inputs(gen, 2, 147, dtype)
    target[torch.rand(2, 147, generator=gen) < 0.3] = float("nan")
    target[0, :5] = float("inf")
    target[1, :5] = float("-inf")
    _check_rank(pred, target, mode=2)


@requires_cpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_ranking_loss_saturated_sigmoid(gen, dtype):
    # |d| up to ~200: sigmoid(d) underflows below eps for half the pairs, 1 - sigmoid rounds to 0.
    _check_rank(*_rank_inputs(gen, 2, 147, dtype, scale=30.0))


@requires_cpu
@pytest.mark.parametrize("dtypes", [(BF16, F32), (F32, BF16), (F16, F32), (BF16, F16)], ids=str)
def test_ranking_loss_mixed_dtypes(gen, dtypes):
    _check_rank(*_rank_inputs(gen, 3, 49, *dtypes))


@requires_cpu
def test_ranking_loss_non_contiguous_inputs(gen):
    pred = torch.randn(147, 3, generator=gen).t()  # (3, 147), strides (1, 3)
    target = torch.rand(147, 6, generator=gen).t()[::2]  # (3, 147), strides (2, 6)
    got = _check_rank(pred, target)
    assert all(torch.equal(a, b) for a, b in zip(got, _check_rank(pred.contiguous(), target.contiguous())))


@requires_cpu
def test_ranking_loss_against_float64_reference(gen):
    pred, target = _rank_inputs(gen, 2, 300, F32, scale=3.0)
    got_loss, got_grad = run_cpu(_rank_grad, pred, target)
    want_loss, want_grad = run_reference(_rank_grad, pred.double(), target.double())
    torch.testing.assert_close(got_loss.double(), want_loss, atol=0.0, rtol=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, atol=1e-6, rtol=1e-5)


@requires_cpu
def test_ranking_loss_large_row_and_deterministic_across_threads(gen):
    pred, target = _rank_inputs(gen, 5, 1100, F32)
    first = _check_rank(pred, target)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        second = run_cpu(_rank_grad, pred, target)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ----------------------------------------------------------------------------------------------
# Bad inputs: the wrappers validate before any kernel runs; the hpm_C ops check what they rely on.


@requires_cpu
def test_bad_inputs(gen):
    imgs = torch.randn(2, 3, 8, 12, generator=gen)
    bad_ids = torch.tensor([[0, 6], [1, 2]])  # L = 6
    with hk.backend("cpu"):
        with pytest.raises(IndexError, match="ids"):
            hk.patchify(imgs, 4, bad_ids)
        with pytest.raises(IndexError, match="ids"):
            hk.gather_tokens(torch.randn(2, 6, 5), bad_ids)
        with pytest.raises(IndexError, match="ids"):
            hk.patch_mse_loss(torch.randn(2, 2, 48), imgs, 4, bad_ids)
        with pytest.raises(ValueError, match="pred"):
            hk.patch_mse_loss(torch.randn(2, 2, 47), imgs, 4, bad_ids.clamp_max(5))
    with pytest.raises(RuntimeError, match="len_keep"):
        torch.ops.hpm_C.select_patches(torch.randn(2, 6), torch.rand(2, 6), 3, 4)
    with pytest.raises(RuntimeError):  # float64 is not a dtype of this backend's kernels
        torch.ops.hpm_C.patchify(imgs.double(), 4, None)


# ----------------------------------------------------------------------------------------------
# opcheck of the hpm_C ops (no autograd or fake kernel of their own: the schema checks apply)


def _opcheck_cases(gen):
    def r(*shape, dtype=F32):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    C = torch.ops.hpm_C
    ids = torch.randint(0, 6, (2, 4), generator=gen)
    yield "patchify", C.patchify.default, (r(2, 3, 8, 12), 4, None)
    yield "patchify_ids", C.patchify.default, (r(2, 3, 8, 12, dtype=BF16), 4, ids)
    yield "patchify_backward", C.patchify_backward.default, (r(2, 4, 48), 4, 8, 12, ids)
    yield "unpatchify", C.unpatchify.default, (r(2, 6, 48), 4, 8, 12)
    yield "patch_mse_loss", C.patch_mse_loss.default, (r(2, 4, 48), r(2, 3, 8, 12), 4, ids, True, 1e-6)
    yield (
        "patch_mse_loss_backward",
        C.patch_mse_loss_backward.default,
        (r(()), r(2, 4), r(2, 4, 48, dtype=BF16), r(2, 3, 8, 12), 4, ids, False, 1e-6),
    )
    yield "select_patches", C.select_patches.default, (r(2, 6), torch.rand(2, 6, generator=gen), 2, 2)
    yield "gather_tokens", C.gather_tokens.default, (r(1, 6, 5), ids)
    yield "gather_tokens_backward", C.gather_tokens_backward.default, (r(2, 4, 5), ids, 6, 1)
    yield "ranking", C.pairwise_ranking_loss.default, (r(2, 7), torch.rand(2, 7, generator=gen), 1e-6)
    yield (
        "ranking_backward",
        C.pairwise_ranking_loss_backward.default,
        (r(()), r(2, 7), torch.rand(2, 7, generator=gen), 1e-6),
    )
    imgs8 = torch.randint(1, 256, (3, 2, 9, 7), generator=gen, dtype=torch.uint8)
    crop = (torch.tensor([2, 0, 2]), torch.tensor([[0, 0, 9, 7], [1, 2, 3, 4], [4, 6, 1, 1]]), torch.tensor([True, False, True]))
    yield "resized_crop", C.resized_crop.default, (imgs8, *crop, 5, 6, [0.5, 0.4], [0.25, 0.5], True)


OPCHECK_NAMES = [name for name, *_ in _opcheck_cases(torch.Generator())] if CPU_OK else []


@requires_cpu
@pytest.mark.parametrize("name", OPCHECK_NAMES)
def test_opcheck_hpm_C_op(gen, name):
    op, args = next((op, args) for n, op, args in _opcheck_cases(gen) if n == name)
    torch.library.opcheck(op, args, test_utils=("test_schema",))


@requires_cpu
def test_opcheck_covers_every_op():
    assert {op.__name__.split(".")[0] for _, op, _ in _opcheck_cases(torch.Generator())} == set(compiled.OPS)


@requires_cpu
def test_benchmark_script_smoke(capsys):
    """benchmarks/cpu_ops.py runs end to end on tiny shapes (its numbers mean nothing here)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import cpu_ops

    threads = torch.get_num_threads()
    try:
        rows = cpu_ops.main(["--smoke", "--n", "2", "--threads", str(threads)])
    finally:
        torch.set_num_threads(threads)
    assert {r["op"] for r in rows} >= {"select_patches", "patch_mse_loss fwd+bwd", "pairwise_ranking_loss fwd+bwd"}
    assert "cpu x" in capsys.readouterr().out
