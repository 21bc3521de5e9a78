"""``hpm::patch_mse_loss``: fused patchify + gather + norm-pix target + per-patch MSE."""

from __future__ import annotations

import torch

from .. import _validation as v
from ..reference._dtypes import compute_dtype
from ._dispatch import choose, kernel_for


@torch.library.custom_op("hpm::patch_mse_loss", mutates_args=())
def _patch_mse_loss(
    pred: torch.Tensor, imgs: torch.Tensor, p: int, ids: torch.Tensor, norm_pix: bool, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    L = (imgs.shape[2] // p) * (imgs.shape[3] // p)
    v.check_index_range("ids", ids, L)
    return kernel_for("patch_mse_loss", backend, pred, imgs, ids, row=L)(pred, imgs, p, ids, norm_pix, eps)


@_patch_mse_loss.register_fake
def _(pred, imgs, p, ids, norm_pix, eps, backend):
    dtype = compute_dtype(pred.dtype, imgs.dtype)
    return pred.new_empty((), dtype=dtype), pred.new_empty(pred.shape[:2], dtype=dtype)


@torch.library.custom_op("hpm::patch_mse_loss_backward", mutates_args=())
def _patch_mse_loss_backward(
    grad_loss: torch.Tensor,
    grad_per_patch: torch.Tensor,
    pred: torch.Tensor,
    imgs: torch.Tensor,
    p: int,
    ids: torch.Tensor,
    norm_pix: bool,
    eps: float,
    backend: str,
) -> torch.Tensor:
    L = (imgs.shape[2] // p) * (imgs.shape[3] // p)
    impl = kernel_for("patch_mse_loss_backward", backend, pred, imgs, ids, row=L)
    return impl(grad_loss, grad_per_patch, pred, imgs, p, ids, norm_pix, eps)


@_patch_mse_loss_backward.register_fake
def _(grad_loss, grad_per_patch, pred, imgs, p, ids, norm_pix, eps, backend):
    return torch.empty_like(pred)


def _setup(ctx, inputs, output):
    pred, imgs, ctx.p, ids, ctx.norm_pix, ctx.eps, ctx.backend = inputs
    ctx.save_for_backward(pred, imgs, ids)


def _grad(ctx, grad_loss, grad_per_patch):
    pred, imgs, ids = ctx.saved_tensors
    d_pred = _patch_mse_loss_backward(
        grad_loss, grad_per_patch.contiguous(), pred, imgs, ctx.p, ids, ctx.norm_pix, ctx.eps, ctx.backend
    )
    return d_pred, None, None, None, None, None, None


_patch_mse_loss.register_autograd(_grad, setup_context=_setup)


def patch_mse_loss(
    pred: torch.Tensor,
    imgs: torch.Tensor,
    p: int,
    ids: torch.Tensor,
    norm_pix: bool = True,
    eps: float = 1e-6,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reconstruction loss of predicted patches against the target computed from ``imgs``.

    Args:
        pred: (N, K, P) predictions for patches ``ids``; P = p*p*C.
        imgs: (N, C, H, W) images; H and W divisible by ``p``. May differ from pred in dtype.
        ids: (N, K) int64 in [0, L): which patch each row of ``pred`` predicts.
        norm_pix: normalise each target patch as ``(x - mean) / sqrt(var + eps)`` with the
            unbiased variance (needs P >= 2).

    Returns:
        ``(loss, per_patch)``: ``per_patch`` (N, K) is the mean over P of ``(pred - target)**2``,
        ``loss`` () its mean (0 when N*K = 0); float32, or float64 if an input is float64.
        Gradients flow to ``pred`` only; the target is a constant.
    """
    v.check_float_tensor("pred", pred, 3, "(N, K, P)")
    v.check_image("imgs", imgs)
    N, C, H, W = imgs.shape
    p = v.check_patch_size(p, H, W)
    v.check_index_tensor("ids", ids, N)
    v.check_bool("norm_pix", norm_pix)
    eps = v.check_eps(eps)
    P = p * p * C
    if tuple(pred.shape) != (N, ids.shape[1], P):
        raise ValueError(
            f"`pred` must have shape (N, K, p*p*C) = {(N, ids.shape[1], P)} to match `imgs` and `ids`, got {tuple(pred.shape)}"
        )
    if norm_pix and P < 2:
        raise ValueError(f"`norm_pix` needs patches of P = p*p*C >= 2 values (unbiased variance), got P = {P}")
    v.check_same_device(pred=pred, imgs=imgs, ids=ids)
    L = (H // p) * (W // p)
    return _patch_mse_loss(pred, imgs, p, ids, norm_pix, eps, choose("patch_mse_loss", backend, pred, imgs, ids, row=L))
