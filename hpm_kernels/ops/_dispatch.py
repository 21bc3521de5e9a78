"""Glue between the ops and the backend registry."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .. import backends


def choose(op: str, requested: str | None, *tensors: torch.Tensor | None, row: int) -> str:
    """Resolve the backend for ``op`` on these inputs (see :mod:`hpm_kernels.backends`)."""
    present = [t for t in tensors if t is not None]
    dtypes = [t.dtype for t in present if t.is_floating_point()]
    return backends.resolve(op, requested, present[0].device, dtypes, row)


def kernel_for(op: str, backend: str, *tensors: torch.Tensor | None, row: int) -> Callable:
    """The kernel that runs ``op`` inside an op body. ``backend`` was resolved by the public
    wrapper, or is ``"auto"`` when the op was called directly through ``torch.ops.hpm``."""
    return backends.kernel(op, choose(op, backend, *tensors, row=row))
