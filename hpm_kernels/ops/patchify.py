"""``hpm::patchify`` / ``hpm::unpatchify``: images <-> MAE-ordered patch vectors, with fused gather."""

from __future__ import annotations

import torch

from .. import _validation as v
from .. import backends
from ._dispatch import choose, kernel_for


@torch.library.custom_op("hpm::patchify", mutates_args=())
def _patchify(imgs: torch.Tensor, p: int, ids: torch.Tensor | None, backend: str) -> torch.Tensor:
    L = (imgs.shape[2] // p) * (imgs.shape[3] // p)
    if ids is not None:
        v.check_index_range("ids", ids, L)
    return kernel_for("patchify", backend, imgs, ids, row=L)(imgs, p, ids)


@_patchify.register_fake
def _(imgs, p, ids, backend):
    N, C, H, W = imgs.shape
    K = (H // p) * (W // p) if ids is None else ids.shape[1]
    return imgs.new_empty(N, K, p * p * C)


@torch.library.custom_op("hpm::patchify_backward", mutates_args=())
def _patchify_backward(grad: torch.Tensor, p: int, H: int, W: int, ids: torch.Tensor | None, backend: str) -> torch.Tensor:
    name = choose("patchify_backward", backend, grad, ids, row=grad.shape[1])
    if ids is not None:  # without ids the backward is unpatchify: every pixel written once
        backends.alert_if_nondeterministic("patchify_backward", name)
    return backends.kernel("patchify_backward", name)(grad, p, H, W, ids)


@_patchify_backward.register_fake
def _(grad, p, H, W, ids, backend):
    return grad.new_empty(grad.shape[0], grad.shape[2] // (p * p), H, W)


def _patchify_setup(ctx, inputs, output):
    imgs, p, ids, backend = inputs
    ctx.p, ctx.H, ctx.W, ctx.backend = p, imgs.shape[2], imgs.shape[3], backend
    ctx.save_for_backward(ids)


def _patchify_grad(ctx, grad):
    (ids,) = ctx.saved_tensors
    return _patchify_backward(grad.contiguous(), ctx.p, ctx.H, ctx.W, ids, ctx.backend), None, None, None


_patchify.register_autograd(_patchify_grad, setup_context=_patchify_setup)


@torch.library.custom_op("hpm::unpatchify", mutates_args=())
def _unpatchify(patches: torch.Tensor, p: int, H: int, W: int, backend: str) -> torch.Tensor:
    return kernel_for("unpatchify", backend, patches, row=patches.shape[1])(patches, p, H, W)


@_unpatchify.register_fake
def _(patches, p, H, W, backend):
    return patches.new_empty(patches.shape[0], patches.shape[2] // (p * p), H, W)


def _unpatchify_setup(ctx, inputs, output):
    _, ctx.p, _, _, ctx.backend = inputs


def _unpatchify_grad(ctx, grad):
    return _patchify(grad.contiguous(), ctx.p, None, ctx.backend), None, None, None, None


_unpatchify.register_autograd(_unpatchify_grad, setup_context=_unpatchify_setup)


def patchify(imgs: torch.Tensor, p: int, ids: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Cut images into patch vectors, optionally only the patches ``ids``.

    Args:
        imgs: (N, C, H, W) float16/bfloat16/float32/float64, any strides.
        p: patch size; must divide H and W. L = (H/p) * (W/p), P = p*p*C.
        ids: optional (N, K) int64 patch indices in [0, L) (raster order, repeats allowed).
        backend: backend name for this call (default: context manager, env, then auto).

    Returns:
        (N, L, P), or (N, K, P) with ``out[n, k] = patch ids[n, k] of imgs[n]``, in imgs' dtype.
        Element (i, j, c) of a patch (pixel row i, column j, channel c) is at (i*p + j)*C + c.
        The gradient scatters back into an image-shaped tensor (zeros where no patch was taken).
    """
    v.check_image("imgs", imgs)
    N, _, H, W = imgs.shape
    p = v.check_patch_size(p, H, W)
    if ids is not None:
        v.check_index_tensor("ids", ids, N)
        v.check_same_device(imgs=imgs, ids=ids)
    L = (H // p) * (W // p)
    return _patchify(imgs, p, ids, choose("patchify", backend, imgs, ids, row=L))


def unpatchify(patches: torch.Tensor, p: int, H: int, W: int, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of :func:`patchify` without ``ids``: (N, L, P) -> (N, C, H, W), C = P / (p*p).

    ``L`` must equal (H/p) * (W/p); output in patches' dtype.
    """
    v.check_float_tensor("patches", patches, 3, "(N, L, P)")
    H = v.check_int("H", H, 1)
    W = v.check_int("W", W, 1)
    p = v.check_patch_size(p, H, W)
    _, L, P = patches.shape
    if L != (H // p) * (W // p):
        raise ValueError(
            f"`patches` must have L = (H/p)*(W/p) = {(H // p) * (W // p)} patches (dim 1) for H = {H}, W = {W}, p = {p}, got {L}"
        )
    if P == 0 or P % (p * p):
        raise ValueError(f"`patches` must have P = p*p*C values per patch (dim 2), a positive multiple of {p * p}, got {P}")
    return _unpatchify(patches, p, H, W, choose("unpatchify", backend, patches, row=L))
