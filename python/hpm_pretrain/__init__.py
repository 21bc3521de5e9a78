"""hpm_pretrain: the reference HPM / MAE pretraining script built on hpm_kernels.

Skeleton: the trainer (model, data, methods, checkpoints) lands with issue 4.
"""

__version__ = "0.1.0"
