"""``hpm::gather_tokens``: pick tokens per sample, with a scatter-add backward."""

from __future__ import annotations

import torch

from .. import _validation as v
from .. import backends
from ._dispatch import choose, kernel_for


@torch.library.custom_op("hpm::gather_tokens", mutates_args=())
def _gather_tokens(x: torch.Tensor, ids: torch.Tensor, backend: str) -> torch.Tensor:
    v.check_index_range("ids", ids, x.shape[1])
    return kernel_for("gather_tokens", backend, x, ids, row=x.shape[1])(x, ids)


@_gather_tokens.register_fake
def _(x, ids, backend):
    return x.new_empty(ids.shape[0], ids.shape[1], x.shape[2])


@torch.library.custom_op("hpm::gather_tokens_backward", mutates_args=())
def _gather_tokens_backward(grad: torch.Tensor, ids: torch.Tensor, L: int, x_batch: int, backend: str) -> torch.Tensor:
    name = choose("gather_tokens_backward", backend, grad, ids, row=L)
    backends.alert_if_nondeterministic("gather_tokens_backward", name)
    return backends.kernel("gather_tokens_backward", name)(grad, ids, L, x_batch)


@_gather_tokens_backward.register_fake
def _(grad, ids, L, x_batch, backend):
    return grad.new_empty(x_batch, L, grad.shape[2])


def _setup(ctx, inputs, output):
    x, ids, ctx.backend = inputs
    ctx.L, ctx.x_batch = x.shape[1], x.shape[0]
    ctx.save_for_backward(ids)


def _grad(ctx, grad):
    (ids,) = ctx.saved_tensors
    return _gather_tokens_backward(grad.contiguous(), ids, ctx.L, ctx.x_batch, ctx.backend), None, None


_gather_tokens.register_autograd(_grad, setup_context=_setup)


def gather_tokens(x: torch.Tensor, ids: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Gather tokens per sample: ``out[n, k] = x[n, ids[n, k]]``.

    Args:
        x: (N, L, D) or (1, L, D) float tensor; a batch of 1 is shared by every sample
            (e.g. position embeddings), and its gradient sums over the batch.
        ids: (N, K) int64 in [0, L); repeats allowed (their gradients add).

    Returns:
        (N, K, D) in x's dtype.
    """
    v.check_float_tensor("x", x, 3, "(N, L, D) or (1, L, D)")
    v.check_index_tensor("ids", ids, None)
    N = ids.shape[0]
    if x.shape[0] not in (1, N):
        raise ValueError(f"`x` must have batch size 1 or N = {N} (the batch size of `ids`), got {x.shape[0]}")
    v.check_same_device(x=x, ids=ids)
    return _gather_tokens(x, ids, choose("gather_tokens", backend, x, ids, row=x.shape[1]))
