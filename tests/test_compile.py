"""torch.compile(fullgraph=True) over a small HPM step that uses all five ops: no graph break,
same values and gradients as eager."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels as hk

N, C, H, W, p = 2, 3, 8, 12, 4
L, P, D = (H // p) * (W // p), p * p * C, 8


def hpm_step(imgs, noise, pos, w_embed, w_pred, w_score):
    # Teacher scores from all patches, then easy-to-hard selection.
    scores = (hk.patchify(imgs, p) @ w_score).squeeze(-1)
    sel = hk.select_patches(scores, noise, 0.5, 0.5)
    visible = hk.patchify(imgs, p, sel.ids_keep) @ w_embed + hk.gather_tokens(pos, sel.ids_keep)
    queries = hk.gather_tokens(pos, sel.ids_mask) + visible.mean(1, keepdim=True)
    pred = queries @ w_pred
    loss, per_patch = hk.patch_mse_loss(pred, imgs, p, sel.ids_mask)
    rank = hk.pairwise_ranking_loss(queries.sum(-1), per_patch.detach())
    recon = hk.unpatchify(hk.patchify(imgs, p), p, H, W)
    return loss + rank + 1e-3 * recon.square().mean(), sel.mask


def _inputs(gen):
    def r(*shape, grad=False):
        return torch.randn(*shape, generator=gen).requires_grad_(grad)

    return (
        r(N, C, H, W),
        torch.rand(N, L, generator=gen),
        r(1, L, D, grad=True),
        r(P, D, grad=True),
        r(D, P, grad=True),
        r(P, 1),
    )


def test_step_has_no_graph_break(gen):
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(hpm_step)(*_inputs(gen))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_step_matches_eager(gen, compiler):
    torch._dynamo.reset()
    inputs = _inputs(gen)
    params = [t for t in inputs if t.requires_grad]
    loss, mask = hpm_step(*inputs)
    want = torch.autograd.grad(loss, params)
    compiled = torch.compile(hpm_step, fullgraph=True, backend=compiler)
    c_loss, c_mask = compiled(*inputs)
    got = torch.autograd.grad(c_loss, params)
    torch.testing.assert_close(c_loss, loss)
    assert torch.equal(c_mask, mask)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_backend_context_is_honoured_under_compile(gen):
    torch._dynamo.reset()
    inputs = _inputs(gen)
    with hk.backend("reference"):
        loss, _ = torch.compile(hpm_step, fullgraph=True, backend="aot_eager")(*inputs)
    torch.testing.assert_close(loss, hpm_step(*inputs)[0])
