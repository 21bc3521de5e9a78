"""Backend ``"triton"``: Triton kernels for CUDA tensors, the default there.

With ``TRITON_INTERPRET=1`` in the environment before ``import hpm_kernels``, the same kernels
run on CPU tensors through Triton's interpreter (slow; no bfloat16): ask for them by name,
``with hpm_kernels.backend("triton"):`` or ``HPM_KERNELS_BACKEND=triton``. This is how CI tests
the real kernel code without a GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence

import torch

from ..backends import ATOMIC_BACKWARD, Backend

NAME = "triton"
#: Largest row (L) one select_patches program sorts in registers.
MAX_SELECT_ROW = 4096
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _kernels() -> tuple[Mapping[str, Callable], str | None]:
    if importlib.util.find_spec("triton") is None:
        return {}, "triton is not installed"
    from . import gather_tokens, patch_mse_loss, patchify, ranking_loss, resized_crop, select_patches
    from ._common import on_input_device

    kernels = {
        "patchify": patchify.patchify,
        "patchify_backward": patchify.patchify_backward,
        "unpatchify": patchify.unpatchify,
        "patch_mse_loss": patch_mse_loss.patch_mse_loss,
        "patch_mse_loss_backward": patch_mse_loss.patch_mse_loss_backward,
        "select_patches": select_patches.select_patches,
        "gather_tokens": gather_tokens.gather_tokens,
        "gather_tokens_backward": gather_tokens.gather_tokens_backward,
        "pairwise_ranking_loss": ranking_loss.pairwise_ranking_loss,
        "pairwise_ranking_loss_backward": ranking_loss.pairwise_ranking_loss_backward,
        "resized_crop": resized_crop.resized_crop,
    }
    return {op: on_input_device(fn) for op, fn in kernels.items()}, None


@functools.cache
def _no_device() -> str | None:
    if _INTERPRET or torch.cuda.is_available():
        return None
    return "no CUDA device visible (set TRITON_INTERPRET=1 before importing hpm_kernels to run the kernels on CPU tensors)"


def _interpreter_limits(op: str, device: torch.device, dtypes: Sequence[torch.dtype], row: int) -> str | None:
    if device.type == "cpu" and torch.bfloat16 in dtypes:
        return "the Triton interpreter has no bfloat16"
    return None


def backend() -> Backend:
    kernels, missing = _kernels()
    return Backend(
        name=NAME,
        kernels=kernels,
        devices=frozenset({"cuda", "cpu"} if _INTERPRET else {"cuda"}),
        auto_devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        max_row={"select_patches": MAX_SELECT_ROW},
        priority=10,
        unavailable_reason=(lambda: missing) if missing else _no_device,
        check=_interpreter_limits,
        atomic_backward=ATOMIC_BACKWARD,
        description="Triton kernels; default for CUDA tensors"
        + (" (TRITON_INTERPRET=1: also CPU tensors, by name)" if _INTERPRET else ""),
    )
