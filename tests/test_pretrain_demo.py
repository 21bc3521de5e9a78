"""`make demo` end to end on a slice of ELPV (the real demo trains on all of it)."""

from __future__ import annotations

import pytest

pytest.importorskip("elpv_dataset", reason="the demo's data: pip install elpv-dataset")


def test_demo_runs_and_writes_the_hardness_png(tmp_path, capsys):
    from hpm_pretrain import demo

    assert demo.main(["--out-dir", str(tmp_path), "--epochs", "2", "--limit", "256"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "Spearman" in out and str(tmp_path) in out
    assert (tmp_path / "visualize.png").stat().st_size > 0
    assert (tmp_path / "checkpoint.pt").exists()
