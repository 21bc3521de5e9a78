"""GPU-only checks of the Triton backend at training scale (ViT-B/16, 224 px, N = 256) in
float32, bfloat16 and float16, and torch.compile over the Triton kernels. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk
from tests.test_compile import hpm_step
from tests.triton_utils import ON_GPU, assert_close, run_reference, run_triton

pytestmark = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA GPU")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
N, C, S, p, D = 256, 3, 224, 16, 768
L, P = (S // p) ** 2, p * p * C


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator(device="cuda").manual_seed(1234)
    imgs = torch.randn(N, C, S, S, generator=g, device="cuda")
    scores = torch.randn(N, L, generator=g, device="cuda")
    noise = torch.rand(N, L, generator=g, device="cuda")
    return g, imgs, scores, noise


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_vit_b_scale_every_op(batch, dtype):
    g, imgs32, scores, noise = batch
    imgs = imgs32.to(dtype)
    sel_ref = run_reference(hk.select_patches, scores.to(dtype), noise, 0.75, 0.5)
    sel = run_triton(hk.select_patches, scores.to(dtype), noise, 0.75, 0.5)
    for a, b in zip(sel, sel_ref):
        assert torch.equal(a, b)
    for ids in [None, sel.ids_keep]:
        assert torch.equal(run_triton(hk.patchify, imgs, p, ids), run_reference(hk.patchify, imgs, p, ids))
    M = sel.ids_mask.shape[1]
    pred = torch.randn(N, M, P, generator=g, device="cuda").to(dtype)
    for norm_pix in [True, False]:
        got = run_triton(hk.patch_mse_loss, pred, imgs, p, sel.ids_mask, norm_pix)
        want = run_reference(hk.patch_mse_loss, pred, imgs, p, sel.ids_mask, norm_pix)
        for a, b in zip(got, want):
            assert_close(a, b)
    x = torch.randn(1, L, D, generator=g, device="cuda").to(dtype)
    assert torch.equal(run_triton(hk.gather_tokens, x, sel.ids_mask), run_reference(hk.gather_tokens, x, sel.ids_mask))
    s = torch.randn(N, M, generator=g, device="cuda").to(dtype)
    t = torch.rand(N, M, generator=g, device="cuda")
    assert_close(run_triton(hk.pairwise_ranking_loss, s, t), run_reference(hk.pairwise_ranking_loss, s, t))


def test_triton_is_the_cuda_default():
    x = torch.randn(2, 3, 8, 8, device="cuda")
    from hpm_kernels.ops._dispatch import choose

    assert choose("patchify", None, x, row=4) == "triton"


def test_compiled_step_on_triton_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator(device="cuda").manual_seed(0)
    from tests.test_compile import C as C_
    from tests.test_compile import D as D_
    from tests.test_compile import H as H_
    from tests.test_compile import L as L_
    from tests.test_compile import N as N_
    from tests.test_compile import P as P_
    from tests.test_compile import W as W_

    def r(*shape, grad=False):
        return torch.randn(*shape, generator=g, device="cuda").requires_grad_(grad)

    inputs = (
        r(N_, C_, H_, W_),
        torch.rand(N_, L_, generator=g, device="cuda"),
        r(1, L_, D_, grad=True),
        r(P_, D_, grad=True),
        r(D_, P_, grad=True),
        r(P_, 1),
    )
    with hk.backend("triton"):
        explanation = torch._dynamo.explain(hpm_step)(*inputs)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        want, _ = hpm_step(*inputs)
        got, _ = torch.compile(hpm_step, fullgraph=True)(*inputs)
    torch.testing.assert_close(got, want)
