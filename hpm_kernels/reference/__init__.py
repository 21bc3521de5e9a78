"""Vectorised PyTorch reference implementations: the ground truth every kernel is tested against.

Each function has the signature of its ``torch.ops.hpm`` op minus the trailing ``backend``
argument, takes already-validated inputs, returns new tensors and runs on any device.
"""

from .gather_tokens import gather_tokens, gather_tokens_backward
from .patch_mse_loss import patch_mse_loss, patch_mse_loss_backward
from .patchify import patchify, patchify_backward, unpatchify
from .ranking_loss import pairwise_ranking_loss, pairwise_ranking_loss_backward
from .resized_crop import resized_crop
from .select_patches import select_patches

KERNELS = {
    "patchify": patchify,
    "patchify_backward": patchify_backward,
    "unpatchify": unpatchify,
    "patch_mse_loss": patch_mse_loss,
    "patch_mse_loss_backward": patch_mse_loss_backward,
    "select_patches": select_patches,
    "gather_tokens": gather_tokens,
    "gather_tokens_backward": gather_tokens_backward,
    "pairwise_ranking_loss": pairwise_ranking_loss,
    "pairwise_ranking_loss_backward": pairwise_ranking_loss_backward,
    "resized_crop": resized_crop,
}

__all__ = ["KERNELS", *KERNELS]
