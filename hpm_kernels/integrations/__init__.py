"""One-line patches of models people already run (Liger-Kernel's ``apply_*`` idea).

>>> from hpm_kernels.integrations import patch_mae
>>> model = patch_mae(MaskedAutoencoderViT(...))   # the MAE or the official HPM interface

See :mod:`hpm_kernels.integrations.mae` for what is replaced, what is left alone and why.
"""

from __future__ import annotations

from .mae import PatchReport, full_selection, patch_mae, patch_report, unpatch_mae, use_selection

__all__ = ["PatchReport", "full_selection", "patch_mae", "patch_report", "unpatch_mae", "use_selection"]
