"""The examples run (tiny shapes) and say what they promise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mae_to_hpm_runs_all_three_phases(capsys):
    example = _load("mae_to_hpm")
    times = example.main(["--steps", "2", "--img-size", "16", "--patch-size", "4", "--batch", "4", "--dim", "32"])
    assert list(times) == ["mae, unpatched", "mae, patch_mae", "hpm, patch_mae + hpm_kernels.nn"]
    assert all(t > 0 for t in times.values())
    out = capsys.readouterr().out
    assert "ms/step" in out and "x the unpatched MAE step" in out
