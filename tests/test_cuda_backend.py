"""The "cuda" backend (CUDA C++ kernels of csrc/cuda, hpm_kernels._C_cuda).

Without a GPU only the build check runs: where a CUDA toolkit and a CUDA build of torch are
present, the extension must have been built and must register a CUDA kernel for every hpm_C op.
With a GPU: every op (forward and backward) on "cuda" against the reference and the Triton
kernels, in float32, bfloat16 and float16, over the shape classes of the Triton tests (odd p,
C = 1/3, H != W, K = 0 / K = L, repeated ids, ties, special values, non-contiguous inputs, mixed
dtypes), plus ViT-B/16 at N = 256. Outputs are poisoned before the kernels write them
(HPM_KERNELS_CUDA_POISON), so any element a kernel forgets shows up.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import hpm_kernels as hk
from hpm_kernels import backends, build_config, compiled
from tests.select_cases import RATIOS, SPECIAL_RATIOS, select_rows, special_rows

ON_GPU = torch.cuda.is_available()
DEVICE = torch.device("cuda")
BACKEND = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_PARAMS = [pytest.param(d, id=str(d).removeprefix("torch.")) for d in DTYPES]
# (atol, rtol) for outputs in their own dtype against the reference on the same inputs; both
# accumulate in float32, so for half dtypes the bound is the rounding of the output itself.
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}


def _unavailable() -> str | None:
    if not ON_GPU:
        return "needs a CUDA GPU"
    info = next((b for b in hk.available_backends() if b.name == BACKEND), None)
    if info is None:
        return f"backend {BACKEND!r} is not registered"
    return None if info.available else f"backend {BACKEND!r} unavailable: {info.reason}"


requires_cuda_backend = pytest.mark.skipif(_unavailable() is not None, reason=str(_unavailable()))


# --- build check (runs everywhere) -----------------------------------------------------------


def test_extension_is_built_where_a_cuda_toolkit_is_present():
    """Where the build found a usable CUDA toolkit and a CUDA build of torch, hpm_kernels._C_cuda
    must import (no GPU needed) and register a CUDA kernel for all ten hpm_C ops. Where it found
    none, skip with the reason the build recorded (hpm_kernels/_build.json), after checking that
    the record is not stale: a toolkit that today's search finds must have been built with."""
    record = hk.build_info()
    assert record is not None, (
        "no build record (hpm_kernels/_build.json): install with `make install` or `pip install --no-build-isolation .`"
    )
    assert record["torch"] == torch.__version__, f"built against torch {record['torch']}, running {torch.__version__}: reinstall"
    cuda = record["cuda"]
    if not cuda["built"]:
        if cuda.get("mode") == "auto" and torch.version.cuda is not None:
            now = build_config.find_cuda_toolkit(torch.version.cuda)
            assert now.home is None, (
                f"the build recorded {cuda['reason']!r}, but a usable toolkit is at {now.home} now: reinstall"
            )
        pytest.skip(f"the build skipped the CUDA extension: {cuda['reason']}")
    for module in ["_C", "_C_cuda"]:
        try:
            importlib.import_module(f"hpm_kernels.{module}")
        except ImportError as e:
            pytest.fail(f"the build used the CUDA toolkit at {cuda['cuda_home']} but hpm_kernels.{module} does not import: {e}")
    missing = [op for op in compiled.OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"hpm_C::{op}", "CUDA")]
    assert not missing, f"hpm_C ops without a CUDA kernel: {missing}"
    assert set(compiled.registered_kernels("CUDA")) == set(compiled.OPS)
    backend = backends._REGISTRY["cuda"]
    assert set(backend.kernels) == set(compiled.OPS) and backend.row_limit("select_patches") == compiled.CUDA_MAX_SELECT_ROW


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    """Every output the CUDA wrappers allocate starts as NaN / the integer max / True."""
    monkeypatch.setenv("HPM_KERNELS_CUDA_POISON", "high")
    return monkeypatch


def run(backend: str, fn, *args, **kwargs):
    with hk.backend(backend):
        return fn(*args, **kwargs)


def triton_accepts(op: str, *tensors: torch.Tensor, row: int) -> bool:
    """Whether the Triton backend can run ``op`` on these inputs (then "cuda" is compared with it too)."""
    triton = backends._REGISTRY.get("triton")
    dtypes = [t.dtype for t in tensors if t.is_floating_point()]
    return triton is not None and triton.refusal(op, tensors[0].device, dtypes, row) is None


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same dtype and shape, no NaN (poison) left, values within TOL of the output's dtype."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, want.dtype, got.shape, want.shape)
    atol, rtol = TOL.get(got.dtype, (1e-5, 1e-5))
    torch.testing.assert_close(got, want, atol=atol, rtol=rtol, equal_nan=False)


def assert_same(got, want, exact: bool) -> None:
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if exact:
            assert g.dtype == w.dtype and g.shape == w.shape and g.device == w.device
            assert torch.equal(g, w)
        else:
            assert_close(g, w)


def compare(op: str, fn, *args, tensors, row: int, exact: bool = False):
    """fn(*args) on "cuda" against "reference", and against "triton" where Triton takes the inputs."""
    got = run(BACKEND, fn, *args)
    assert_same(got, run("reference", fn, *args), exact)
    if triton_accepts(op, *tensors, row=row):
        assert_same(got, run("triton", fn, *args), exact)
    return got


def randn(gen, *shape, dtype=torch.float32, scale=1.0):
    return (scale * torch.randn(*shape, generator=gen)).to(DEVICE, dtype)


# --- patchify / unpatchify ---------------------------------------------------------------------

# (N, C, H, W, p): p = 4/5/7/8/14/16 (odd p), C = 1/3, H != W, L not a power of two.
SHAPES = [
    (2, 3, 8, 12, 4),
    (1, 1, 16, 24, 8),
    (2, 3, 28, 14, 14),
    (1, 3, 32, 16, 16),
    (3, 1, 12, 20, 4),
    (2, 3, 15, 10, 5),
    (1, 1, 21, 35, 7),
]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def images(gen, shape, dtype, layout="contiguous"):
    N, C, H, W, _ = shape
    if layout == "strided":  # every other column of a wider image
        return randn(gen, N, C, H, 2 * W, dtype=dtype)[..., ::2]
    imgs = randn(gen, N, C, H, W, dtype=dtype)
    return imgs.to(memory_format=torch.channels_last) if layout == "channels_last" else imgs


def id_sets(gen, N, L):
    """None (all patches); K = 0; K = L (a permutation per row); K = L // 3 + 1 random, with repeats; K > L."""
    perm = torch.rand(N, L, generator=gen).argsort(dim=1)
    return [
        None,
        torch.zeros(N, 0, dtype=torch.int64, device=DEVICE),
        perm.to(DEVICE),
        torch.randint(0, L, (N, L // 3 + 1), generator=gen).to(DEVICE),
        torch.randint(0, L, (N, L + 2), generator=gen).to(DEVICE),
    ]


def _patchify_and_grad(imgs, p, ids, grad):
    x = imgs.detach().clone().requires_grad_()
    out = hk.patchify(x, p, ids)
    out.backward(grad)
    return out.detach(), x.grad


@requires_cuda_backend
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_patchify_forward_backward(gen, dtype, shape, layout):
    N, C, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = images(gen, shape, dtype, layout)
    for ids in id_sets(gen, N, L):
        K = L if ids is None else ids.shape[1]
        grad = randn(gen, N, K, p * p * C, dtype=dtype)
        out = compare("patchify", hk.patchify, imgs, p, ids, tensors=[imgs], row=L, exact=True)
        assert out.is_contiguous() and out.shape == (N, K, p * p * C)
        got = run(BACKEND, _patchify_and_grad, imgs, p, ids, grad)
        want = run("reference", _patchify_and_grad, imgs, p, ids, grad)
        assert torch.equal(got[0], want[0])
        assert_close(got[1], want[1])


@requires_cuda_backend
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_unpatchify(gen, dtype, shape):
    N, C, H, W, p = shape
    patches = randn(gen, N, (H // p) * (W // p), p * p * C, dtype=dtype)
    for source in [
        patches,
        patches.transpose(0, 1).contiguous().transpose(0, 1),
        patches[:, :, :].transpose(1, 2).contiguous().transpose(1, 2),
    ]:
        compare("unpatchify", hk.unpatchify, source, p, H, W, tensors=[source], row=source.shape[1], exact=True)
        x = source.detach().clone().requires_grad_()
        grad = randn(gen, N, C, H, W, dtype=dtype)
        run(BACKEND, hk.unpatchify, x, p, H, W).backward(grad)
        assert torch.equal(x.grad, run("reference", hk.patchify, grad, p))


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_patchify_backward_adds_repeated_ids(gen, dtype):
    imgs = randn(gen, 2, 3, 8, 8, dtype=dtype)
    ids = torch.tensor([[1, 1, 1, 0], [3, 2, 3, 3]], device=DEVICE)
    grad = torch.rand(2, 4, 48, generator=gen).to(DEVICE, dtype)
    got = run(BACKEND, _patchify_and_grad, imgs, 4, ids, grad)[1]
    assert_close(got, run("reference", _patchify_and_grad, imgs, 4, ids, grad)[1])
    assert not got[0, :, 4:].any() and not got[1, :, :4].any()  # patches 2, 3 of image 0 and 0, 1 of image 1 untouched


# --- gather_tokens -----------------------------------------------------------------------------


def _gather_and_grad(x, ids, grad):
    x = x.detach().clone().requires_grad_()
    out = hk.gather_tokens(x, ids)
    out.backward(grad)
    return out.detach(), x.grad


@requires_cuda_backend
@pytest.mark.parametrize("D", [1, 7, 8, 64, 768, 1100])
@pytest.mark.parametrize("x_batch", ["N", 1])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_gather_tokens_forward_backward(gen, dtype, x_batch, D):
    N, L = 3, 11
    x = randn(gen, N if x_batch == "N" else 1, L, D, dtype=dtype)
    for K in [0, 1, L, 2 * L]:
        ids = torch.randint(0, L, (N, K), generator=gen).to(DEVICE)
        grad = randn(gen, N, K, D, dtype=dtype)
        got = compare("gather_tokens", _gather_and_grad, x, ids, grad, tensors=[x], row=L)
        assert torch.equal(got[0], run("reference", hk.gather_tokens, x, ids))


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_gather_tokens_non_contiguous_and_misaligned(gen, dtype):
    x = randn(gen, 9, 4, 10, dtype=dtype).transpose(0, 1)  # (4, 9, 10), strided batch and rows
    ids = torch.randint(0, 9, (6, 4), generator=gen).to(DEVICE).t()  # (4, 6), strided
    compare("gather_tokens", hk.gather_tokens, x, ids, tensors=[x], row=9, exact=True)
    wide = randn(gen, 2, 5, 17, dtype=dtype)
    for view in [wide[:, :, 1:9], wide[:, :, ::2], wide[:1, :, 3:11]]:  # offset base, strided last dim, shared
        ids = torch.randint(0, 5, (2, 7), generator=gen).to(DEVICE)
        compare("gather_tokens", hk.gather_tokens, view, ids, tensors=[view], row=5, exact=True)


# --- patch_mse_loss ------------------------------------------------------------------------------

NORM_PARAMS = [pytest.param(True, id="norm"), pytest.param(False, id="plain")]
# P = 3*40*40 = 4800 > 4096: rows too long for registers, the kernels loop over the patch instead.
BIG_P_SHAPE = (1, 3, 40, 80, 40)


def _mse_and_grad(pred, imgs, p, ids, norm_pix, w):
    """(loss, per_patch, d pred) with d pred from loss + (w * per_patch).sum(): both gradient paths."""
    x = pred.detach().clone().requires_grad_()
    loss, per_patch = hk.patch_mse_loss(x, imgs, p, ids, norm_pix)
    (loss + (w * per_patch).sum()).backward()
    return loss.detach(), per_patch.detach(), x.grad


def _compare_mse(gen, pred, imgs, p, ids, norm_pix):
    w = torch.randn(ids.shape, generator=gen).to(DEVICE)
    L = (imgs.shape[2] // p) * (imgs.shape[3] // p)
    return compare("patch_mse_loss", _mse_and_grad, pred, imgs, p, ids, norm_pix, w, tensors=[pred, imgs], row=L)


@requires_cuda_backend
@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_patch_mse_loss_forward_backward(gen, dtype, shape, norm_pix):
    N, C, H, W, p = shape
    L = (H // p) * (W // p)
    imgs = images(gen, shape, dtype)
    for ids in id_sets(gen, N, L)[1:]:
        pred = randn(gen, N, ids.shape[1], p * p * C, dtype=dtype)
        loss, per_patch, grad = _compare_mse(gen, pred, imgs, p, ids, norm_pix)
        assert loss.dtype == per_patch.dtype == torch.float32 and grad.dtype == dtype
        if ids.shape[1] == 0:
            assert loss.item() == 0.0 and per_patch.shape == (N, 0) and grad.shape == pred.shape


@requires_cuda_backend
@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[5]], ids=str)
def test_patch_mse_loss_image_layouts(gen, shape, layout, norm_pix):
    N, C, H, W, p = shape
    imgs = images(gen, shape, torch.float32, layout)
    ids = id_sets(gen, N, (H // p) * (W // p))[4]
    pred = randn(gen, N, ids.shape[1], p * p * C)
    _compare_mse(gen, pred, imgs, p, ids, norm_pix)


MIXED = [
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float16),
]
MIXED_IDS = ["-".join(str(d).removeprefix("torch.") for d in pair) for pair in MIXED]


@requires_cuda_backend
@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("dtypes", MIXED, ids=MIXED_IDS)
def test_patch_mse_loss_mixed_dtypes(gen, dtypes, norm_pix):
    pred_dtype, img_dtype = dtypes
    N, C, H, W, p = SHAPES[3]
    imgs = images(gen, SHAPES[3], img_dtype, "channels_last")
    ids = id_sets(gen, N, (H // p) * (W // p))[4]
    pred = randn(gen, N, ids.shape[1], p * p * C, dtype=pred_dtype)
    loss, per_patch, grad = _compare_mse(gen, pred, imgs, p, ids, norm_pix)
    assert grad.dtype == pred_dtype and loss.dtype == per_patch.dtype == torch.float32


@requires_cuda_backend
@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_patch_mse_loss_long_rows(gen, dtype, norm_pix):
    N, C, _, _, p = BIG_P_SHAPE
    imgs = images(gen, BIG_P_SHAPE, dtype, "strided")
    ids = torch.tensor([[1, 0, 1]], device=DEVICE)
    pred = randn(gen, N, 3, p * p * C, dtype=dtype)
    _compare_mse(gen, pred, imgs, p, ids, norm_pix)


@requires_cuda_backend
def test_patch_mse_loss_strided_pred_and_ids(gen):
    N, C, H, W, p = SHAPES[0]
    L, K, P = (H // p) * (W // p), 5, p * p * C
    imgs = images(gen, SHAPES[0], torch.float32, "strided")
    ids = torch.randint(0, L, (K, N), generator=gen).to(DEVICE).t()  # (N, K), strided
    pred = randn(gen, P, K, N).permute(2, 1, 0)  # (N, K, P), strided
    for norm_pix in [True, False]:
        _compare_mse(gen, pred, imgs, p, ids, norm_pix)


@requires_cuda_backend
@pytest.mark.parametrize("norm_pix", NORM_PARAMS)
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[6], BIG_P_SHAPE], ids=str)
def test_patch_mse_loss_float32_matches_float64_reference(gen, shape, norm_pix):
    N, C, H, W, p = shape
    imgs = images(gen, shape, torch.float32)
    ids = id_sets(gen, N, (H // p) * (W // p))[4]
    pred = randn(gen, N, ids.shape[1], p * p * C)
    w = torch.randn(ids.shape, generator=gen).to(DEVICE)
    got = run(BACKEND, _mse_and_grad, pred, imgs, p, ids, norm_pix, w)
    want = run("reference", _mse_and_grad, pred.double(), imgs.double(), p, ids, norm_pix, w.double())
    for g, r in zip(got, want, strict=True):
        assert g.dtype == torch.float32 and r.dtype == torch.float64
        torch.testing.assert_close(g, r.float(), rtol=1e-5, atol=1e-7 * r.abs().max().item())


@requires_cuda_backend
@pytest.mark.parametrize("which", ["loss", "per_patch"])
def test_patch_mse_loss_single_gradient_path(gen, which):
    N, C, H, W, p = SHAPES[4]
    imgs = images(gen, SHAPES[4], torch.float32)
    ids = id_sets(gen, N, (H // p) * (W // p))[4]
    pred = randn(gen, N, ids.shape[1], p * p * C)
    grads = []
    for backend in [BACKEND, "reference"]:
        x = pred.clone().requires_grad_()
        loss, per_patch = run(backend, hk.patch_mse_loss, x, imgs, p, ids, True)
        (loss if which == "loss" else per_patch.sum()).backward()
        grads.append(x.grad)
    assert_close(*grads)


# --- select_patches --------------------------------------------------------------------------------

# L = 1, 2, 7, 49, 196 (ViT-B/16 at 224 px), 197, 256, 576 (ViT-L/14 at 336 px), 1000, 4096 (the
# largest row the CUDA backend takes: 8 patches per thread).
SELECT_SHAPES = [(2, 1), (2, 2), (4, 7), (4, 49), (4, 196), (2, 197), (1, 256), (1, 576), (3, 1000), (1, 4096)]


def _check_select(scores, noise, mask_ratio, hard_ratio):
    got = compare(
        "select_patches",
        hk.select_patches,
        scores,
        noise,
        mask_ratio,
        hard_ratio,
        tensors=[scores, noise],
        row=scores.shape[1],
        exact=True,
    )
    N, L = scores.shape
    len_keep, _ = hk.mask_counts(L, mask_ratio, hard_ratio)
    assert [tuple(t.shape) for t in got] == [(N, len_keep), (N, L - len_keep), (N, L), (N, L)]
    return got


@requires_cuda_backend
@pytest.mark.parametrize("fill", ["high", "low"])
@pytest.mark.parametrize("shape", SELECT_SHAPES, ids=[f"{n}x{l}" for n, l in SELECT_SHAPES])
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_select_patches(gen, _poison, dtype, shape, fill):
    _poison.setenv("HPM_KERNELS_CUDA_POISON", fill)
    N, L = shape
    scores = select_rows(gen, N, L, dtype, "scores", DEVICE)
    noise = select_rows(gen, N + 1, L, dtype, "noise", DEVICE)[1:]  # one pattern ahead of the scores
    for mask_ratio, hard_ratio in RATIOS:
        _check_select(scores, noise, mask_ratio, hard_ratio)


@requires_cuda_backend
@pytest.mark.parametrize("L", [7, 196, 4096])
def test_select_patches_ties_and_special_values_everywhere(gen, L):
    N = 6
    scores, noise = special_rows(gen, N, L, DEVICE)
    for mask_ratio, hard_ratio in SPECIAL_RATIOS:
        _check_select(scores, noise, mask_ratio, hard_ratio)


@requires_cuda_backend
def test_select_patches_signed_zero_ties_by_index():
    scores = torch.tensor([[-0.0, 0.0, -0.0, 0.0, 1.0, -1.0, 0.0, -0.0]], device=DEVICE)
    noise = scores.flip(1).clone()
    for hard_ratio in [0.0, 0.5, 1.0]:
        got = _check_select(scores, noise, 0.5, hard_ratio)
    assert got.mask.tolist() == [[True, True, True, False, True, False, False, False]]


@requires_cuda_backend
@pytest.mark.parametrize("dtypes", MIXED, ids=MIXED_IDS)
def test_select_patches_mixed_dtypes(gen, dtypes):
    N, L = 4, 197
    scores = select_rows(gen, N, L, dtypes[0], "scores", DEVICE)
    noise = select_rows(gen, N + 1, L, dtypes[1], "noise", DEVICE)[1:]
    for mask_ratio, hard_ratio in [(0.75, 0.0), (0.75, 0.5), (0.5, 1.0)]:
        _check_select(scores, noise, mask_ratio, hard_ratio)


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_select_patches_non_contiguous(gen, dtype):
    N, L = 4, 49
    transposed = select_rows(gen, L, N, dtype, "scores", DEVICE).t()  # (N, L), row stride 1
    strided = select_rows(gen, N, 3 * L, dtype, "noise", DEVICE)[:, ::3]  # element stride 3
    one_row = select_rows(gen, 1, L, dtype, "scores", DEVICE).expand(N, L)  # row stride 0
    every_other_row = select_rows(gen, 2 * N, L, dtype, "noise", DEVICE)[::2]
    for scores, noise in [(transposed, strided), (one_row, every_other_row), (strided, transposed)]:
        _check_select(scores, noise, 0.75, 0.5)
        _check_select(scores, noise, 0.5, 0.0)


@requires_cuda_backend
def test_select_patches_empty_batch_and_long_rows_refused():
    sel = _check_select(torch.empty(0, 49, device=DEVICE), torch.empty(0, 49, device=DEVICE), 0.75, 0.5)
    assert [tuple(t.shape) for t in sel] == [(0, 12), (0, 37), (0, 49), (0, 49)]
    scores = torch.randn(1, compiled.CUDA_MAX_SELECT_ROW + 1, device=DEVICE)
    with pytest.raises(hk.BackendUnavailableError, match="rows up to 4096"):
        hk.select_patches(scores, torch.rand_like(scores), 0.75, 0.5, backend=BACKEND)


# --- pairwise_ranking_loss ------------------------------------------------------------------------

# (N, M): M = 0/1, below, between and above multiples of the 64-row blocks and 256-wide tiles, N = 0.
RANK_SHAPES = [(1, 1), (2, 7), (3, 49), (2, 64), (2, 147), (1, 300), (2, 513), (1, 0), (0, 5)]


def _rank_and_grad(pred, target, eps=1e-6):
    """(loss, d loss / d pred) for an upstream gradient of M, which scales the gradient's entries
    (a sum over ~M pairs divided by ~M^2 pairs) to O(1), so the dtype's tolerance means something."""
    x = pred.detach().clone().requires_grad_()
    loss = hk.pairwise_ranking_loss(x, target, eps)
    loss.backward(torch.tensor(float(max(pred.shape[1], 1)), device=pred.device))
    return loss.detach(), x.grad


def _check_rank(pred, target, eps=1e-6):
    got = compare("pairwise_ranking_loss", _rank_and_grad, pred, target, eps, tensors=[pred, target], row=pred.shape[1])
    assert got[0].dtype == torch.float32 and got[1].dtype == pred.dtype
    return got


def rank_inputs(gen, N, M, dtype, target_dtype=None, scale=1.0):
    pred = randn(gen, N, M, dtype=dtype, scale=scale)
    target = torch.rand(N, M, generator=gen).to(DEVICE, target_dtype or dtype)
    return pred, target


@requires_cuda_backend
@pytest.mark.parametrize("shape", RANK_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ranking_loss(gen, dtype, shape):
    _check_rank(*rank_inputs(gen, *shape, dtype))


@requires_cuda_backend
@pytest.mark.parametrize("eps", [0.0, 1e-6, 0.1])
def test_ranking_loss_eps_and_low_poison(gen, _poison, eps):
    _poison.setenv("HPM_KERNELS_CUDA_POISON", "low")  # int32 partial counts start at INT_MIN
    _check_rank(*rank_inputs(gen, 2, 70, torch.float32), eps=eps)


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ranking_loss_ties_and_nan_targets(gen, dtype):
    pred = randn(gen, 3, 100, dtype=dtype)
    for target in [torch.full_like(pred, 0.25), torch.full_like(pred, float("nan"))]:
        loss, grad = _check_rank(pred, target)
        assert loss.item() == 0.0 and not grad.any()
    target = torch.randint(0, 3, (3, 100), generator=gen).to(DEVICE, dtype)
    target[1] = 1.0
    _check_rank(pred, target)
    pred, target = rank_inputs(gen, 2, 147, dtype)
    target[torch.rand(2, 147, generator=gen).to(DEVICE) < 0.3] = float("nan")
    _check_rank(pred, target)


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ranking_loss_saturated_sigmoid(gen, dtype):
    _check_rank(*rank_inputs(gen, 2, 147, dtype, scale=30.0))


@requires_cuda_backend
@pytest.mark.parametrize("dtypes", MIXED, ids=MIXED_IDS)
def test_ranking_loss_mixed_dtypes(gen, dtypes):
    _check_rank(*rank_inputs(gen, 3, 147, *dtypes))


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_ranking_loss_non_contiguous(gen, dtype):
    pred = randn(gen, 147, 3, dtype=dtype).t()  # (3, 147), strides (1, 3)
    target = torch.rand(147, 6, generator=gen).to(DEVICE, dtype).t()[::2]  # (3, 147), strides (2, 6)
    got = _check_rank(pred, target)
    again = _check_rank(pred.contiguous(), target.contiguous())
    assert all(torch.equal(a, b) for a, b in zip(got, again, strict=True))


@requires_cuda_backend
def test_ranking_loss_against_float64_reference(gen):
    pred, target = rank_inputs(gen, 2, 300, torch.float32, scale=3.0)
    got_loss, got_grad = run(BACKEND, _rank_and_grad, pred, target)
    want_loss, want_grad = run("reference", _rank_and_grad, pred.double(), target.double())
    torch.testing.assert_close(got_loss.double(), want_loss, atol=0.0, rtol=1e-5)
    torch.testing.assert_close(got_grad.double(), want_grad, atol=1e-6, rtol=1e-5)


@requires_cuda_backend
def test_losses_are_deterministic(gen):
    """No atomics in the loss reductions: two runs agree bit for bit."""
    pred, target = rank_inputs(gen, 5, 300, torch.float32)
    first, second = (run(BACKEND, _rank_and_grad, pred, target) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    imgs = images(gen, SHAPES[3], torch.float32)
    ids = id_sets(gen, 1, 2)[4]
    pred = randn(gen, 1, ids.shape[1], 768)
    w = torch.randn(ids.shape, generator=gen).to(DEVICE)
    first, second = (run(BACKEND, _mse_and_grad, pred, imgs, 16, ids, True, w) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# --- whole-batch behaviour, training scale, backend declaration -----------------------------------


@requires_cuda_backend
def test_no_host_sync(gen):
    """select_patches, patch_mse_loss and the ranking loss (forward and backward) never sync."""
    ops = torch.ops.hpm_C
    scores, noise = randn(gen, 64, 196), torch.rand(64, 196, generator=gen).to(DEVICE)
    imgs = randn(gen, 64, 3, 224, 224, dtype=torch.bfloat16).float()
    ids = torch.rand(64, 196, generator=gen).argsort(1)[:, :147].to(DEVICE)
    pred = randn(gen, 64, 147, 768, dtype=torch.bfloat16)
    s, t = randn(gen, 64, 147, dtype=torch.bfloat16), torch.rand(64, 147, generator=gen).to(DEVICE)
    one = torch.ones((), device=DEVICE)
    token_ids = torch.randint(0, 147, (64, 10), generator=gen).to(DEVICE)

    def calls():
        ops.select_patches(scores, noise, 49, 73)
        _, per_patch = ops.patch_mse_loss(pred, imgs, 16, ids, True, 1e-6)
        ops.patch_mse_loss_backward(one, per_patch, pred, imgs, 16, ids, True, 1e-6)
        ops.pairwise_ranking_loss(s, t, 1e-6)
        ops.pairwise_ranking_loss_backward(one, s, t, 1e-6)
        ops.patchify(imgs, 16, ids)
        ops.gather_tokens(pred, token_ids)

    calls()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        calls()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@requires_cuda_backend
def test_backend_declaration():
    (info,) = [b for b in hk.available_backends() if b.name == BACKEND]
    assert info.available and info.reason is None and info.devices == ("cuda",)
    assert set(info.dtypes) == {"bfloat16", "float16", "float32"}
    with pytest.raises(hk.BackendUnavailableError, match="float64"):
        hk.patchify(torch.randn(1, 1, 4, 4, dtype=torch.float64, device=DEVICE), 2, backend=BACKEND)
    with pytest.raises(hk.BackendUnavailableError, match="runs on"):
        hk.patchify(torch.randn(1, 1, 4, 4), 2, backend=BACKEND)


@requires_cuda_backend
def test_float64_through_the_raw_ops(gen):
    """The backend declares no float64, but the hpm_C CUDA kernels compute float64 in float64."""
    imgs = randn(gen, 2, 3, 8, 12, dtype=torch.float64)
    ids = torch.randint(0, 6, (2, 5), generator=gen).to(DEVICE)
    pred = randn(gen, 2, 5, 48, dtype=torch.float64)
    got = torch.ops.hpm_C.patch_mse_loss(pred, imgs, 4, ids, True, 1e-6)
    want = hk.reference.patch_mse_loss(pred, imgs, 4, ids, True, 1e-6)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == torch.float64
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    s, t = randn(gen, 2, 77, dtype=torch.float64), torch.rand(2, 77, generator=gen).to(DEVICE)
    loss = torch.ops.hpm_C.pairwise_ranking_loss(s, t, 1e-6)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, hk.reference.pairwise_ranking_loss(s, t, 1e-6), rtol=1e-12, atol=1e-12)
    sel = torch.ops.hpm_C.select_patches(s, t.double(), 19, 29)
    for g, w in zip(sel, hk.reference.select_patches(s, t.double(), 19, 29), strict=True):
        assert torch.equal(g, w)


VIT = dict(N=256, C=3, S=224, p=16, D=768)


@requires_cuda_backend
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_vit_b_16_scale_every_op(dtype):
    """ViT-B/16 at 224 px, N = 256, mask ratio 0.75, hard ratio 0.5: every op forward and backward."""
    N, C, S, p, D = VIT["N"], VIT["C"], VIT["S"], VIT["p"], VIT["D"]
    L, P = (S // p) ** 2, p * p * C
    g = torch.Generator(device=DEVICE).manual_seed(1234)
    imgs32 = torch.randn(N, C, S, S, generator=g, device=DEVICE)
    imgs = imgs32.to(dtype)
    scores = torch.randn(N, L, generator=g, device=DEVICE).to(dtype)
    noise = torch.rand(N, L, generator=g, device=DEVICE)
    sel = _check_select(scores, noise, 0.75, 0.5)
    for ids in [None, sel.ids_keep]:
        grad = torch.randn(N, L if ids is None else ids.shape[1], P, generator=g, device=DEVICE).to(dtype)
        compare("patchify", _patchify_and_grad, imgs, p, ids, grad, tensors=[imgs], row=L)
    M = sel.ids_mask.shape[1]
    pred = torch.randn(N, M, P, generator=g, device=DEVICE).to(dtype)
    w = torch.randn(N, M, generator=g, device=DEVICE)
    for image in [imgs, imgs32]:  # same dtype, and a half pred against float32 images (autocast)
        for norm_pix in [True, False]:
            args = (pred, image, p, sel.ids_mask, norm_pix, w)
            compare("patch_mse_loss", _mse_and_grad, *args, tensors=[pred, image], row=L)
    for x in [
        torch.randn(1, L, D, generator=g, device=DEVICE).to(dtype),
        torch.randn(N, L, D, generator=g, device=DEVICE).to(dtype),
    ]:
        grad = torch.randn(N, M, D, generator=g, device=DEVICE).to(dtype)
        compare("gather_tokens", _gather_and_grad, x, sel.ids_mask, grad, tensors=[x], row=L)
    s = torch.randn(N, M, generator=g, device=DEVICE).to(dtype)
    for t in [torch.rand(N, M, generator=g, device=DEVICE).to(dtype), torch.rand(N, M, generator=g, device=DEVICE)]:
        _check_rank(s, t)


@requires_cuda_backend
def test_compiled_step_on_cuda_has_no_graph_break_and_matches_eager():
    from tests.test_compile import C, D, H, L, N, P, W, hpm_step

    torch._dynamo.reset()
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def r(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=DEVICE).requires_grad_(grad)

    inputs = (
        r(N, C, H, W),
        torch.rand(N, L, generator=g, device=DEVICE),
        r(1, L, D, grad=True),
        r(P, D, grad=True),
        r(D, P, grad=True),
        r(P, 1),
    )
    with hk.backend(BACKEND):
        explanation = torch._dynamo.explain(hpm_step)(*inputs)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        want, _ = hpm_step(*inputs)
        got, _ = torch.compile(hpm_step, fullgraph=True)(*inputs)
    torch.testing.assert_close(got, want)
