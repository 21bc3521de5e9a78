"""resized_crop (crop + resize + flip + normalisation) and random_resized_crop_params.

Ground truth: the reference (``F.interpolate`` per crop) in float64, itself checked against an
independent float64 formula here and against torchvision's tensor ``resized_crop`` (antialias=False).

Tolerances, on outputs normalised with std >= 0.25 (so |out| <= ~4):
- reference float32 vs float64 and vs torchvision on float images: 1e-6 of the [0, 1] value,
  i.e. atol 4e-6 after dividing by std (float32 rounding of a 16-term sum of values in [0, 1]);
- uint8 vs torchvision's uint8 output, which rounds to an integer: 0.5 / 255 before normalisation;
- cpu and triton backends vs the reference: atol 2e-5, rtol 1e-5 for every input dtype (all
  compute in float32 from exactly converted inputs; only the order of the float32 sums and the
  coefficient arithmetic differ from ATen's).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import hpm_kernels as hk
from hpm_kernels import crop_params
from hpm_kernels.reference.resized_crop import resized_crop as reference_resized_crop
from tests.triton_utils import TRITON_UNUSABLE, run_triton

CPU_INFO = next((b for b in hk.available_backends() if b.name == "cpu"), None)
requires_cpu = pytest.mark.skipif(
    CPU_INFO is None or not CPU_INFO.available, reason=f"C++ CPU backend unavailable: {CPU_INFO and CPU_INFO.reason}"
)
requires_triton = pytest.mark.skipif(TRITON_UNUSABLE is not None, reason=str(TRITON_UNUSABLE))

MEAN3, STD3 = [0.5, 0.4, 0.3], [0.25, 0.5, 1.0]
ATOL, RTOL = 2e-5, 1e-5


def _images(gen, B, C, H, W, dtype, layout="contiguous"):
    """Random images, never zero: uint8 in [1, 255], floats in (0.01, 1]."""
    wide = layout == "sliced"
    x = torch.rand(B, C, H, 2 * W + 1 if wide else W, generator=gen) * 0.99 + 0.01
    x = (x * 255).round().clamp(1, 255).to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    if wide:  # every other column, starting at 1: strides and a storage offset
        return x[..., 1::2]
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def _boxes(H, W):
    """1x1, the full image, upscaling (small crops) and downscaling (large crops), odd offsets."""
    return torch.tensor(
        [[0, 0, 1, 1], [0, 0, H, W], [H - 1, W - 1, 1, 1], [2, 1, 3, 2], [1, 0, H - 2, W], [H // 2, W // 3, H - H // 2, 2]],
        dtype=torch.int64,
    )


def _case(gen, dtype, C=3, H=13, W=7, layout="contiguous", with_index=True):
    images = _images(gen, 4, C, H, W, dtype, layout)
    boxes = _boxes(H, W)
    N = boxes.shape[0]
    index = torch.tensor([3, 0, 3, 1, 2, 3]) if with_index else None  # repeats
    if index is None:
        images = _images(gen, N, C, H, W, dtype, layout)
    flip = torch.tensor([True, False, True, True, False, False])
    return images, index, boxes, flip


def _stats(C):
    return (MEAN3, STD3) if C == 3 else ([0.45], [0.3])


def _naive64(images, index, boxes, flip, size, mean, std, mode):
    """An independent float64 formula: the 1-D resize as a matrix (taps from ATen's rules)."""
    Ho, Wo = size
    N, C = boxes.shape[0], images.shape[1]
    out = torch.empty(N, C, Ho, Wo, dtype=torch.float64)
    index = torch.arange(images.shape[0]) if index is None else index

    def matrix(n_in, n_out):
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        scale = n_in / n_out
        for o in range(n_out):
            real = scale * (o + 0.5) - 0.5
            if mode == "bicubic":
                i0 = math.floor(real)
                t = real - i0
                a = -0.75
                ws = [
                    ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
                    ((a + 2) * t - (a + 3)) * t * t + 1,
                    ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1,
                    ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
                ]
                for k, w in enumerate(ws):
                    m[o, min(max(i0 - 1 + k, 0), n_in - 1)] += w
            else:
                real = max(real, 0.0)
                i0 = min(math.floor(real), n_in - 1)
                lam = real - i0
                m[o, i0] += 1 - lam
                m[o, min(i0 + 1, n_in - 1)] += lam
        return m

    for n in range(N):
        t, l, h, w = boxes[n].tolist()
        crop = images[int(index[n]), :, t : t + h, l : l + w].double()
        v = matrix(h, Ho) @ crop @ matrix(w, Wo).T
        if images.dtype == torch.uint8:
            v = v.clamp(0, 255) / 255
        out[n] = v.flip(-1) if flip[n] else v
    m, s = torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)
    return (out - m.view(1, C, 1, 1)) / s.view(1, C, 1, 1)


def _reference(images, index, boxes, flip, size, mean, std, mode, dtype=torch.float32):
    index = torch.arange(images.shape[0]) if index is None else index
    return reference_resized_crop(images, index, boxes, flip, *size, mean, std, mode == "bicubic", dtype)


MODES = ["bicubic", "bilinear"]


# ----------------------------------------------------------------------------------------------
# The reference


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("size", [(5, 9), (32, 32), (1, 1)], ids=str)
def test_reference_matches_float64_formula(gen, mode, dtype, size):
    images, index, boxes, flip = _case(gen, dtype)
    want = _naive64(images, index, boxes, flip, size, MEAN3, STD3, mode)
    got64 = _reference(images, index, boxes, flip, size, MEAN3, STD3, mode, torch.float64)
    torch.testing.assert_close(got64, want, atol=1e-12, rtol=1e-12)
    got = hk.resized_crop(images, boxes, flip, size, MEAN3, STD3, index=index, interpolation=mode, backend="reference")
    assert got.dtype == torch.float32 and got.shape == (6, 3, *size)
    torch.testing.assert_close(got.double(), want, atol=4e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_reference_matches_torchvision_tensor_resized_crop(gen, mode, dtype):
    """torchvision's float path. (Its native uint8 CPU kernel is separable with fixed-point weights
    and stores the horizontal pass as uint8: up to ~19/255 away from interpolate + round for
    bicubic, so uint8 images are compared through torchvision's float path, clamped as ours.)"""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    interp = InterpolationMode.BICUBIC if mode == "bicubic" else InterpolationMode.BILINEAR
    images, index, boxes, flip = _case(gen, dtype, H=20, W=17)
    size = (24, 11)
    got = hk.resized_crop(images, boxes, flip, size, [0.0] * 3, [1.0] * 3, index=index, interpolation=mode)
    for n in range(boxes.shape[0]):
        t, l, h, w = boxes[n].tolist()
        img = images[int(index[n])].float()
        want = tvf.resized_crop(img, t, l, h, w, list(size), interpolation=interp, antialias=False)
        if dtype == torch.uint8:
            want = want.clamp(0, 255) / 255  # torchvision then rounds: within 0.5 / 255 of ours
        want = want.flip(-1) if flip[n] else want
        torch.testing.assert_close(got[n], want, atol=2e-6, rtol=0)


def test_uint8_is_clamped_not_rounded():
    # A step edge overshoots with bicubic: clamped to [0, 1] after / 255, and not rounded.
    images = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    images[..., 2:] = 255
    boxes = torch.tensor([[0, 0, 4, 4]])
    out = hk.resized_crop(images, boxes, torch.tensor([False]), (4, 11), [0.0], [1.0], backend="reference")
    want = F.interpolate(images.double(), size=(4, 11), mode="bicubic", align_corners=False).clamp(0, 255) / 255
    torch.testing.assert_close(out.double(), want, atol=1e-6, rtol=0)
    assert out.min() == 0 and out.max() == 1 and ((out * 255 - (out * 255).round()).abs() > 1e-3).any()


# ----------------------------------------------------------------------------------------------
# The cpu and triton backends against the reference


def _compare(run, gen, dtype, mode, C=3, layout="contiguous", with_index=True, size=(5, 9), H=13, W=7):
    images, index, boxes, flip = _case(gen, dtype, C, H, W, layout, with_index)
    mean, std = _stats(C)
    want = _reference(images, index, boxes, flip, size, mean, std, mode)
    got = run(hk.resized_crop, images, boxes, flip, size, mean, std, index=index, interpolation=mode)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert not got.isnan().any(), "NaN (poison?) in the output"
    torch.testing.assert_close(got, want, atol=ATOL, rtol=RTOL)


def run_cpu(fn, *args, **kwargs):
    """On the cpu backend with every output poisoned (NaN) before the kernel writes it."""
    torch.ops.hpm_C._set_poison(1)
    try:
        with hk.backend("cpu"):
            return fn(*args, **kwargs)
    finally:
        torch.ops.hpm_C._set_poison(0)


CPU_DTYPES = [torch.uint8, torch.float32, torch.float16, torch.bfloat16]


@requires_cpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_cpu_matches_reference(gen, mode, dtype, layout):
    _compare(run_cpu, gen, dtype, mode, 3, layout)
    _compare(run_cpu, gen, dtype, mode, 1, layout, with_index=False, size=(32, 32), H=28, W=28)


@requires_cpu
@pytest.mark.parametrize("mode", MODES)
def test_cpu_single_pixel_output_and_empty_batch(gen, mode):
    _compare(run_cpu, gen, torch.uint8, mode, size=(1, 1))
    images = _images(gen, 3, 3, 8, 8, torch.float32)
    empty = torch.zeros(0, dtype=torch.int64)
    out = run_cpu(
        hk.resized_crop,
        images,
        torch.zeros(0, 4, dtype=torch.int64),
        torch.zeros(0, dtype=torch.bool),
        4,
        MEAN3,
        STD3,
        index=empty,
    )
    assert out.shape == (0, 3, 4, 4) and out.dtype == torch.float32


@requires_triton
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16], ids=str)
def test_triton_matches_reference(gen, mode, dtype):
    layout = {torch.uint8: "channels_last", torch.float32: "sliced", torch.float16: "contiguous"}[dtype]
    _compare(run_triton, gen, dtype, mode, 3, layout)
    if dtype == torch.uint8:
        _compare(run_triton, gen, dtype, mode, 1, "contiguous", with_index=False, size=(7, 4))


@requires_triton
def test_triton_empty_batch(gen):
    images = _images(gen, 2, 1, 5, 5, torch.float32)
    out = run_triton(
        hk.resized_crop,
        images,
        torch.zeros(0, 4, dtype=torch.int64),
        torch.zeros(0, dtype=torch.bool),
        3,
        [0.0],
        [1.0],
        index=torch.zeros(0, dtype=torch.int64),
    )
    assert out.shape == (0, 1, 3, 3)


# ----------------------------------------------------------------------------------------------
# The public API


def test_under_torch_compile(gen):
    images, index, boxes, flip = _case(gen, torch.uint8)

    def aug(images, boxes, flip, index):
        return hk.resized_crop(images, boxes, flip, (5, 9), MEAN3, STD3, index=index) * 2

    torch._dynamo.reset()
    got = torch.compile(aug, fullgraph=True, backend="aot_eager")(images, boxes, flip, index)
    torch.testing.assert_close(got, aug(images, boxes, flip, index))


def test_opcheck(gen):
    images, index, boxes, flip = _case(gen, torch.uint8)
    torch.library.opcheck(torch.ops.hpm.resized_crop.default, (images, index, boxes, flip, 5, 9, MEAN3, STD3, True, "reference"))


def test_random_resized_crop_is_params_then_resized_crop(gen):
    images = _images(gen, 10, 1, 28, 28, torch.uint8)
    index = torch.tensor([7, 2, 2, 9])
    got = hk.random_resized_crop(images, index, 3, 1, 32, [0.5], [0.5])
    boxes, flip = hk.random_resized_crop_params(3, 1, index, (28, 28))
    torch.testing.assert_close(got, hk.resized_crop(images, boxes, flip, 32, [0.5], [0.5], index=index), atol=0, rtol=0)


def test_not_differentiable():
    images = torch.rand(2, 1, 6, 6, requires_grad=True)
    with pytest.raises(ValueError, match="`images` requires grad"):
        hk.resized_crop(images, torch.tensor([[0, 0, 6, 6]] * 2), torch.zeros(2, dtype=torch.bool), 4, [0.0], [1.0])


# ----------------------------------------------------------------------------------------------
# random_resized_crop_params


def test_params_are_a_function_of_seed_epoch_and_index():
    b1, f1 = hk.random_resized_crop_params(7, 2, [3, 5, 9], (28, 28))
    b2, f2 = hk.random_resized_crop_params(7, 2, torch.tensor([5]), (28, 28))
    assert b1.dtype == torch.int64 and b1.shape == (3, 4) and f1.dtype == torch.bool and f1.shape == (3,)
    assert torch.equal(b1[1:2], b2) and torch.equal(f1[1:2], f2)
    again = hk.random_resized_crop_params(7, 2, [3, 5, 9], (28, 28))
    assert torch.equal(again[0], b1) and torch.equal(again[1], f1)
    many = torch.arange(64)
    base = hk.random_resized_crop_params(7, 2, many, (28, 28))[0]
    for seed, epoch in [(8, 2), (7, 3)]:
        assert not torch.equal(hk.random_resized_crop_params(seed, epoch, many, (28, 28))[0], base)


@pytest.mark.parametrize("size", [(28, 28), (13, 40), (50, 9)], ids=str)
def test_params_boxes_follow_torchvision(size):
    H, W = size
    boxes, flip = hk.random_resized_crop_params(0, 0, torch.arange(4000), size)
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + h <= H).all() and (left + w <= W).all()
    # Fallback rows (no attempt fitted) are the central crop; the others are random crops with
    # area fraction in [0.2, 1] and aspect ratio in [3/4, 4/3], up to the rounding of h and w.
    u = crop_params.uniforms(0, 0, np.arange(4000), crop_params.FLIP_DRAW + 1)
    att = u[:, : crop_params.FLIP_DRAW].reshape(-1, 10, 4)
    area = H * W * (0.2 + 0.8 * att[..., 0])
    aspect = np.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * att[..., 1])
    ww, hh = np.round(np.sqrt(area * aspect)), np.round(np.sqrt(area / aspect))
    fits = torch.from_numpy(((ww > 0) & (ww <= W) & (hh > 0) & (hh <= H)).any(1))
    hf, wf = h[fits].double(), w[fits].double()
    # h, w are rounded from h*, w* with h* w* in [0.2, 1] H W and w* / h* in [3/4, 4/3]: |h - h*| <= 0.5.
    assert ((hf + 0.5) * (wf + 0.5) >= 0.2 * H * W).all() and (hf * wf <= H * W).all()
    assert ((wf + 0.5) / (hf - 0.5).clamp_min(1e-9) >= 3 / 4).all() and ((wf - 0.5) / (hf + 0.5) <= 4 / 3).all()
    assert fits.any()
    assert abs(flip.double().mean().item() - 0.5) < 0.03  # 4000 draws: sd 0.008
    if (~fits).any():
        fb = boxes[~fits]
        assert (fb == fb[0]).all()


@pytest.mark.parametrize("size", [(28, 28), (10, 40), (40, 10)], ids=str)
def test_params_fallback_equals_torchvision(size):
    T = pytest.importorskip("torchvision.transforms")
    H, W = size
    boxes, _ = hk.random_resized_crop_params(1, 0, [0, 1, 2], size, scale=(5.0, 6.0))
    torch.manual_seed(0)
    want = T.RandomResizedCrop.get_params(torch.zeros(1, H, W), scale=(5.0, 6.0), ratio=(3 / 4, 4 / 3))
    assert all(tuple(b) == tuple(want) for b in boxes.tolist())


def test_params_flip_p_and_bad_arguments():
    idx = torch.arange(100)
    assert not hk.random_resized_crop_params(0, 0, idx, 28, flip_p=0.0)[1].any()
    assert hk.random_resized_crop_params(0, 0, idx, 28, flip_p=1.0)[1].all()
    assert hk.random_resized_crop_params(0, 0, [], 28)[0].shape == (0, 4)
    for call, exc, name in [
        (lambda: hk.random_resized_crop_params(-1, 0, idx, 28), ValueError, "seed"),
        (lambda: hk.random_resized_crop_params(0, 1.5, idx, 28), TypeError, "epoch"),
        (lambda: hk.random_resized_crop_params(0, 0, idx.int(), 28), TypeError, "index"),
        (lambda: hk.random_resized_crop_params(0, 0, idx[None], 28), ValueError, "index"),
        (lambda: hk.random_resized_crop_params(0, 0, [-1], 28), ValueError, "index"),
        (lambda: hk.random_resized_crop_params(0, 0, idx, (28, 0)), ValueError, "image_size"),
        (lambda: hk.random_resized_crop_params(0, 0, idx, 28, scale=(0.5, 0.2)), ValueError, "scale"),
        (lambda: hk.random_resized_crop_params(0, 0, idx, 28, ratio=(0.0, 1.0)), ValueError, "ratio"),
        (lambda: hk.random_resized_crop_params(0, 0, idx, 28, ratio=0.5), TypeError, "ratio"),
        (lambda: hk.random_resized_crop_params(0, 0, idx, 28, flip_p=1.5), ValueError, "flip_p"),
    ]:
        with pytest.raises(exc, match=f"`{name}`"):
            call()


def test_uniforms_are_uniform_53_bit_floats():
    u = crop_params.uniforms(123, 4, np.arange(2000), 41)
    assert u.shape == (2000, 41) and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert np.all(u * 2.0**53 == np.floor(u * 2.0**53))
