"""Backends ``"cpu"`` and ``"cuda"``: the C++ and CUDA C++ kernels of ``csrc/`` (``torch.ops.hpm_C``).

``hpm_kernels._C`` holds the ``hpm_C`` schemas and the CPU kernels, ``hpm_kernels._C_cuda`` the
CUDA kernels; both are built by ``setup.py`` (see the README's build knobs). A backend lists only
the ops its extension registered a kernel for, and says why it is unavailable when its extension
did not build or load.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable

import torch

from . import build_config
from .backends import ATOMIC_BACKWARD, Backend

OPS = (
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
)
REBUILD = "reinstall with `pip install --no-build-isolation .` (see the README's build knobs)"


@functools.cache
def load_error(module: str) -> str | None:
    """Import ``hpm_kernels.<module>``; the reason it is unusable, or None. Where the build skipped
    the extension, the reason is the one the build recorded."""
    try:
        importlib.import_module(f"hpm_kernels.{module}")
    except ImportError as e:
        part = next(part for part, name in build_config.EXTENSIONS.items() if name == module)
        section = (build_config.read_record() or {}).get(part, {})
        if section.get("built") is False:
            return f"the extension hpm_kernels.{module} was not built: {section.get('reason')}; {REBUILD}"
        return f"the extension hpm_kernels.{module} is not available ({e}); {REBUILD}"
    return None


def registered_kernels(dispatch_key: str) -> dict[str, Callable]:
    """The hpm_C ops that have a kernel for ``dispatch_key`` ("CPU" or "CUDA"). An op the loaded
    extension does not define (built from older sources) is left out, so its backend refuses it
    ("has no kernel") and "auto" runs it elsewhere, instead of ``import hpm_kernels`` failing."""
    return {name: getattr(torch.ops.hpm_C, name) for name in OPS if _has_kernel(name, dispatch_key)}


def _has_kernel(name: str, dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"hpm_C::{name}", dispatch_key)
    except RuntimeError:  # "operator hpm_C::<name> does not exist": a stale build
        return False


@functools.cache
def _no_gpu() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA device visible"


def cpu_backend(priority: int) -> Backend:
    """The C++ CPU kernels (csrc/cpu/). Every op's kernel is listed: each measured faster than the
    reference on CPU tensors, 2 threads, ViT-B/16 shapes (benchmarks/cpu_ops.py; ratios in the
    table it prints: select_patches, patch_mse_loss, ranking loss, patchify, gather_tokens forward +
    backward well ahead; unpatchify only ~1.05x, as both sides are bound by the page faults of the
    fresh 154 MB output; resized_crop 7.8x: 3.3 ms vs 25.7 ms for 256 uint8 28 px crops
    to 32 x 32). An op measured slower would be left out here, with the ratio, so that
    "auto" keeps it on the reference."""
    missing = load_error("_C")
    return Backend(
        name="cpu",
        kernels={} if missing else registered_kernels("CPU"),
        devices=frozenset({"cpu"}),
        # float16 too (computed in float32 like the others), so that "auto" runs a half input on
        # the same backend as its float32 copy and both give the same numbers.
        dtypes=frozenset({torch.float32, torch.bfloat16, torch.float16}),
        priority=priority,
        unavailable_reason=lambda: missing,
        # Mixed float inputs (e.g. bfloat16 pred, float32 imgs) are fine: each input is read in
        # its own dtype and converted to float32 in the kernel, so the backend has no dtype-match check.
        description="C++ kernels for CPU tensors (at::parallel_for)",
    )


#: Largest row (L) one select_patches block of the CUDA backend holds (csrc/cuda/select.cu).
CUDA_MAX_SELECT_ROW = 4096


def cuda_backend(priority: int) -> Backend:
    missing = load_error("_C") or load_error("_C_cuda")
    return Backend(
        name="cuda",
        kernels={} if missing else registered_kernels("CUDA"),
        devices=frozenset({"cuda"}),
        dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
        max_row={"select_patches": CUDA_MAX_SELECT_ROW},
        priority=priority,
        atomic_backward=ATOMIC_BACKWARD,  # patch_scatter_add / scatter_add_rows
        unavailable_reason=(lambda: missing) if missing else _no_gpu,
        # Mixed float inputs (a bf16 autocast output against float32 images or losses) are fine:
        # the pairs (T, T) and (half or bfloat16, float32) run natively, any other mix is widened
        # exactly to one of them first (csrc/cuda/common.cuh, dispatch_pair).
        description="CUDA C++ kernels (csrc/cuda)",
    )
