"""hpm_kernels: fused PyTorch ops for Hard Patches Mining (HPM) masked-image pretraining.

Every op is a ``torch.library`` custom op (``torch.ops.hpm.*``) with autograd and a fake kernel,
so it works under ``torch.compile(fullgraph=True)``. Shapes: images (N, C, H, W); patch size p;
L = (H/p)*(W/p) patches of P = p*p*C values in MAE order; index tensors (N, K) int64.
``resized_crop`` / ``random_resized_crop`` (with ``random_resized_crop_params``) do MAE's data
augmentation (random resized crop, flip, normalisation) for a whole batch (not differentiable).
See README.md for the table of ops and backends.
"""

from __future__ import annotations

from . import build_config, compiled, integrations, nn, reference, triton_kernels
from .backends import (
    Backend,
    BackendInfo,
    BackendUnavailableError,
    available_backends,
    backend,
    register_backend,
)
from .crop_params import random_resized_crop_params
from .ops.gather_tokens import gather_tokens
from .ops.patch_mse_loss import patch_mse_loss
from .ops.patchify import patchify, unpatchify
from .ops.ranking_loss import pairwise_ranking_loss
from .ops.resized_crop import random_resized_crop, resized_crop
from .ops.select_patches import Selection, mask_counts, select_patches

__version__ = "0.1.0"


def build_info() -> dict | None:
    """What ``setup.py`` decided when it built this installation's C++/CUDA extensions: for
    ``"cpu"`` and ``"cuda"``, ``built`` and the ``reason`` when not, plus the CUDA toolkit, the
    architectures and the job count it used and why. None if the package was not built by setup.py."""
    return build_config.read_record()


register_backend(
    Backend(
        name="reference",
        kernels=reference.KERNELS,
        devices=None,
        priority=0,
        description="vectorised PyTorch, any device; the ground truth the kernels are tested against",
    )
)
register_backend(triton_kernels.backend())
# Priorities: triton 10 leads on CUDA until GPU timings say otherwise (benchmarks/RESULTS.md);
# the C++ CPU backend (5) leads the reference on CPU tensors: it measured faster for every op it
# lists (benchmarks/cpu_ops.py; an op that measures slower is left out of its kernels instead).
register_backend(compiled.cpu_backend(priority=5))
register_backend(compiled.cuda_backend(priority=5))

__all__ = [
    "Backend",
    "BackendInfo",
    "BackendUnavailableError",
    "Selection",
    "available_backends",
    "backend",
    "build_info",
    "gather_tokens",
    "integrations",
    "mask_counts",
    "nn",
    "pairwise_ranking_loss",
    "patch_mse_loss",
    "patchify",
    "random_resized_crop",
    "random_resized_crop_params",
    "register_backend",
    "resized_crop",
    "select_patches",
    "unpatchify",
]
