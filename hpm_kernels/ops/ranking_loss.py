"""``hpm::pairwise_ranking_loss``: HPM's relative loss-prediction objective, O(N*M) memory."""

from __future__ import annotations

import torch

from .. import _validation as v
from ..reference._dtypes import compute_dtype
from ._dispatch import choose, kernel_for


@torch.library.custom_op("hpm::pairwise_ranking_loss", mutates_args=())
def _ranking_loss(pred: torch.Tensor, target: torch.Tensor, eps: float, backend: str) -> torch.Tensor:
    return kernel_for("pairwise_ranking_loss", backend, pred, target, row=pred.shape[1])(pred, target, eps)


@_ranking_loss.register_fake
def _(pred, target, eps, backend):
    return pred.new_empty((), dtype=compute_dtype(pred.dtype, target.dtype))


@torch.library.custom_op("hpm::pairwise_ranking_loss_backward", mutates_args=())
def _ranking_loss_backward(
    grad: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, eps: float, backend: str
) -> torch.Tensor:
    impl = kernel_for("pairwise_ranking_loss_backward", backend, pred, target, row=pred.shape[1])
    return impl(grad, pred, target, eps)


@_ranking_loss_backward.register_fake
def _(grad, pred, target, eps, backend):
    return torch.empty_like(pred)


def _setup(ctx, inputs, output):
    pred, target, ctx.eps, ctx.backend = inputs
    ctx.save_for_backward(pred, target)


def _grad(ctx, grad):
    pred, target = ctx.saved_tensors
    return _ranking_loss_backward(grad, pred, target, ctx.eps, ctx.backend), None, None, None


_ranking_loss.register_autograd(_grad, setup_context=_setup)


def pairwise_ranking_loss(
    pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6, *, backend: str | None = None
) -> torch.Tensor:
    """HPM's relative loss-prediction objective, without any (N, M, M) tensor.

    For each row n and ordered pair (i, j) with ``target[n, j] != target[n, i]``, with
    ``d = pred[n, j] - pred[n, i]``: ``-log(sigmoid(d) + eps)`` if ``target[n, j] > target[n, i]``,
    else ``-log(1 - sigmoid(d) + eps)``. The sum over the batch is divided by the number of such
    pairs; 0 when there is none. Pairs with a NaN target count as ties.

    Args:
        pred: (N, M) float, the predicted losses s' at the masked patches.
        target: (N, M) float, the actual per-patch losses l (treated as a constant).
        eps: the 1e-6 of the official formula, >= 0.

    Returns:
        scalar, float32 (float64 if an input is float64); gradient flows to ``pred`` only.
    """
    v.check_float_tensor("pred", pred, 2, "(N, M)")
    v.check_float_tensor("target", target, 2, "(N, M)")
    if target.shape != pred.shape:
        raise ValueError(f"`target` must have the shape of `pred` {tuple(pred.shape)}, got {tuple(target.shape)}")
    eps = v.check_eps(eps)
    v.check_same_device(pred=pred, target=target)
    name = choose("pairwise_ranking_loss", backend, pred, target, row=pred.shape[1])
    return _ranking_loss(pred, target.detach(), eps, name)
