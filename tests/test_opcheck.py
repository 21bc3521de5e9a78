"""torch.library.opcheck over every op: schema, fake kernel, autograd registration, AOT dispatch."""

from __future__ import annotations

import pytest
import torch

import hpm_kernels  # noqa: F401  (registers torch.ops.hpm)

ops = torch.ops.hpm


def _cases(gen):
    def r(*shape, dtype=torch.float32, grad=False):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_(grad)

    ids = torch.randint(0, 6, (2, 4), generator=gen)
    yield "patchify", ops.patchify.default, (r(2, 3, 8, 12, grad=True), 4, None, "reference")
    yield "patchify_ids", ops.patchify.default, (r(2, 3, 8, 12, grad=True), 4, ids, "reference")
    yield "patchify_backward", ops.patchify_backward.default, (r(2, 4, 48), 4, 8, 12, ids, "reference")
    yield "unpatchify", ops.unpatchify.default, (r(2, 6, 48, grad=True), 4, 8, 12, "reference")
    yield (
        "patch_mse_loss",
        ops.patch_mse_loss.default,
        (r(2, 4, 48, grad=True), r(2, 3, 8, 12), 4, ids, True, 1e-6, "reference"),
    )
    yield (
        "patch_mse_loss_bf16_pred",
        ops.patch_mse_loss.default,
        (r(2, 4, 48, dtype=torch.bfloat16, grad=True), r(2, 3, 8, 12), 4, ids, False, 1e-6, "reference"),
    )
    yield (
        "patch_mse_loss_backward",
        ops.patch_mse_loss_backward.default,
        (r(()), r(2, 4), r(2, 4, 48), r(2, 3, 8, 12), 4, ids, True, 1e-6, "reference"),
    )
    yield "select_patches", ops.select_patches.default, (r(2, 6), torch.rand(2, 6, generator=gen), 2, 2, "reference")
    yield "gather_tokens", ops.gather_tokens.default, (r(2, 6, 5, grad=True), ids, "reference")
    yield "gather_tokens_b1", ops.gather_tokens.default, (r(1, 6, 5, grad=True), ids, "reference")
    yield "gather_tokens_backward", ops.gather_tokens_backward.default, (r(2, 4, 5), ids, 6, 1, "reference")
    yield "ranking", ops.pairwise_ranking_loss.default, (r(2, 7, grad=True), torch.rand(2, 7, generator=gen), 1e-6, "reference")
    yield (
        "ranking_backward",
        ops.pairwise_ranking_loss_backward.default,
        (r(()), r(2, 7), torch.rand(2, 7, generator=gen), 1e-6, "reference"),
    )
    imgs8 = torch.randint(1, 256, (3, 2, 9, 7), generator=gen, dtype=torch.uint8)
    crop = (torch.tensor([2, 0, 2]), torch.tensor([[0, 0, 9, 7], [1, 2, 3, 4], [4, 6, 1, 1]]), torch.tensor([True, False, True]))
    stats = ([0.5, 0.4], [0.25, 0.5])
    yield "resized_crop_u8", ops.resized_crop.default, (imgs8, *crop, 5, 6, *stats, True, "reference")
    yield (
        "resized_crop_f32",
        ops.resized_crop.default,
        (torch.rand(3, 2, 9, 7, generator=gen), *crop, 4, 11, *stats, False, "reference"),
    )


CASE_NAMES = [name for name, *_ in _cases(torch.Generator())]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_opcheck(gen, name):
    op, args = next((op, args) for n, op, args in _cases(gen) if n == name)
    torch.library.opcheck(op, args)


def test_every_op_is_covered():
    covered = {op.__name__.split(".")[0] for _, op, _ in _cases(torch.Generator())}
    assert covered == {
        "patchify",
        "patchify_backward",
        "unpatchify",
        "patch_mse_loss",
        "patch_mse_loss_backward",
        "select_patches",
        "gather_tokens",
        "gather_tokens_backward",
        "pairwise_ranking_loss",
        "pairwise_ranking_loss_backward",
        "resized_crop",
    }
