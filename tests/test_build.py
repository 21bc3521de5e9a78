"""The build knobs of setup.py and the installed package's metadata."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup(mode: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPM_KERNELS_BUILD_CUDA": mode}
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True)


def test_bad_knob_value_fails_with_a_clear_message():
    run = _setup("yes")
    assert run.returncode != 0
    assert "HPM_KERNELS_BUILD_CUDA must be auto, 0 or 1" in run.stderr


def test_knob_zero_skips_the_cuda_extension():
    run = _setup("0")
    assert run.returncode == 0, run.stderr
    assert "skipping the CUDA extension" in run.stderr


@pytest.mark.parametrize("mode", ["auto", "1"])
def test_no_cuda_sources_means_nothing_to_build(mode):
    if list((ROOT / "csrc" / "cuda").glob("*.cu")):
        pytest.skip("csrc/cuda has sources; the extension tests cover the build")
    run = _setup(mode)
    assert run.returncode == 0, run.stderr
    assert "skipping the CUDA extension: csrc/cuda has no sources" in run.stderr


def test_both_packages_import():
    import hpm_kernels
    import hpm_pretrain

    assert hpm_kernels.__version__ == hpm_pretrain.__version__
