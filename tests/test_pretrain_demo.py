"""`make demo` end to end on a slice of ELPV (the real demo trains on all of it)."""

from __future__ import annotations

import pytest

pytest.importorskip("elpv_dataset", reason="the demo's data: pip install elpv-dataset")


def test_demo_runs_and_writes_the_hardness_png(tmp_path, capsys):
    from hpm_pretrain import demo

    assert demo.main(["--out-dir", str(tmp_path), "--epochs", "2", "--limit", "256"]) == 0
    out = capsys.readouterr().out
    assert "images/s" in out and "Spearman" in out and str(tmp_path) in out
    # both pictured hardness maps, each with its held-out Spearman; the teacher's EMA scaled to the run
    for line in (
        "EMA teacher (what HPM selects by)",
        "student's predictor",
        "position only (baseline)",
        "--teacher-ema run-length",
    ):
        assert line in out
    rho = [float(x.split()[-4]) for x in out.splitlines() if "(pictured cells:" in x]
    assert len(rho) == 2 and all(-1 <= r <= 1 for r in rho)
    assert (tmp_path / "visualize.png").stat().st_size > 0
    assert (tmp_path / "checkpoint.pt").exists()
