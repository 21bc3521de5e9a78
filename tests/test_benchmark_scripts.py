"""The GPU benchmark script runs end to end (on CPU through the Triton interpreter, tiny shapes).

This checks the script's code paths so a GPU session is not spent on typos; it asserts nothing
about speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.triton_utils import ON_GPU, requires_triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@requires_triton
@pytest.mark.skipif(ON_GPU, reason="on a GPU, benchmarks/gpu_check.sh runs the real thing")
def test_gpu_ops_smoke(tmp_path, capsys):
    import gpu_ops

    out = tmp_path / "ops.json"
    gpu_ops.main(["--smoke", "--dtype", "fp32", "--n", "2", "--img", "16", "--patch", "4", "--dim", "8", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    ops = {r["op"] for r in rows}
    assert {"select_patches", "patch_mse_loss fwd+bwd", "pairwise_ranking_loss fwd+bwd", "gather_tokens fwd+bwd"} <= ops
    assert "x vs triton" in capsys.readouterr().out


def test_integrations_step_smoke(tmp_path, monkeypatch, capsys):
    """benchmarks/integrations_step.py end to end on a tiny shape: JSON, then the RESULTS.md section."""
    import integrations_step as bench

    monkeypatch.setitem(bench.SHAPES, "tiny", bench.Shape(16, 4, 3, 4, 32, 1, 2, 16, 1, 2))
    bench.main(["--shapes", "tiny", "--repeats", "2", "--warmup", "1", "--out-dir", str(tmp_path)])
    result = json.loads((tmp_path / "integrations-cpu-tiny.json").read_text())
    assert set(result["median_s"]) == {"mae", "mae+patch_mae", "hpm", "hpm+patch_mae"}
    md = tmp_path / "RESULTS.md"
    bench.main(["--report", "--out-dir", str(tmp_path), "--results-md", str(md)])
    text = md.read_text()
    assert "<!-- integrations:begin -->" in text and "| hpm+patch_mae |" in text and "x |" in text
