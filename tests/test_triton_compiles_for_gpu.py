"""Every Triton kernel compiles for an H100 (sm_90) through Triton's real GPU compiler, here,
without a GPU: the interpreter accepts code the GPU compiler rejects (see compile_for_gpu.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

KERNELS = [
    "_gather_rows_kernel",
    "_patch_copy_kernel",
    "_patch_mse_bwd_kernel",
    "_patch_mse_fwd_kernel",
    "_ranking_loss_bwd_kernel",
    "_ranking_loss_fwd_kernel",
    "_resized_crop_kernel",
    "_select_patches_kernel",
]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_every_kernel_compiles_for_sm90():
    script = Path(__file__).with_name("compile_for_gpu.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("compiled") and all(k in last for k in KERNELS), last
