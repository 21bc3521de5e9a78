"""benchmarks/report.py on a small hand-written pytest-benchmark JSON: tables, ratios, targets.

Times here are invented; the test checks the arithmetic and layout of the report, never speed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import report

COMMAND = "python -m pytest benchmarks/ --benchmark-only --benchmark-json=x.json"


def bench(name: str, median_s: float, **extra) -> dict:
    """One pytest-benchmark entry with the fields report.py reads."""
    return {
        "group": None,
        "name": name,
        "fullname": f"benchmarks/test_x.py::{name}",
        "params": {},
        "param": name,
        "extra_info": extra,
        "options": {"timer": "perf_counter"},
        "stats": {
            "min": median_s * 0.9,
            "max": median_s * 1.2,
            "mean": median_s,
            "median": median_s,
            "rounds": 20,
            "iterations": 1,
        },
    }


def op(op_name, variant, kind, median_s, *, pass_="fwd", default=False, shape="vitb16_224", min_bytes=1_000_000, N=256):
    return bench(
        f"test_op[{shape}-{op_name}-{pass_}-{variant}]",
        median_s,
        kind="op",
        op=op_name,
        variant=variant,
        variant_kind=kind,
        is_default=default,
        shape=shape,
        shape_desc="ViT-B/16 224 px (test)",
        dtype="float32",
        **{"pass": pass_},
        N=N,
        min_bytes=min_bytes,
        device="cpu",
    )


def trainer(variant, median_s, breakdown):
    return bench(
        f"test_trainer_step[tiny_224_b16-{variant}]",
        median_s,
        kind="trainer",
        config="tiny_224_b16",
        label="tiny 224 px p = 16, batch 16",
        preset="tiny",
        img=224,
        patch=16,
        batch=16,
        L=196,
        variant=variant,
        hard_ratio=0.5,
        autocast=None,
        rounds=20,
        warmup_rounds=2,
        breakdown_ms=breakdown,
        breakdown_source="the timed steps",
        parts_sum_ms=sum(breakdown.values()),
        device="cpu",
    )


def memory(variant, peak_bytes, default=False):
    return bench(
        f"test_peak_memory[{variant}]",
        0.0,
        kind="memory",
        case="pairwise_ranking_loss@M=432",
        op="pairwise_ranking_loss",
        variant=variant,
        is_default=default,
        N=64,
        M=432,
        NM=64 * 432,
        NMM=64 * 432 * 432,
        peak_bytes=peak_bytes,
        method="child process RSS",
        device="cpu",
    )


@pytest.fixture
def synthetic(tmp_path) -> Path:
    parts = {"teacher": 40.0, "selection": 1.0, "student forward": 20.0, "losses": 4.0, "backward + optimizer": 30.0, "EMA": 5.0}
    data = {
        "machine_info": {
            "node": "box",
            "python_version": "3.11.7",
            "hpm": {
                "date": "2026-11-27T12:00:00+00:00",
                "device": "cpu",
                "device_name": "Test CPU 9000",
                "cpu_model": "Test CPU 9000",
                "gpu": None,
                "threads": 2,
                "quick": False,
                "n_div": 8,
                "dtypes": ["fp32"],
                "dtype_note": "test",
                "compile_shapes": ["vitb16_224"],
                "backends": [{"name": "cpu", "available": True, "reason": None}],
                "torch": "9.9.9",
                "triton": "8.8.8",
                "python": "3.11.7",
                "numpy": "2.0",
                "hpm_kernels": "0.1.0",
                "command": COMMAND,
            },
        },
        "commit_info": {"id": "0123456789abcdef", "dirty": True},
        "datetime": "2026-11-27T12:00:00",
        "version": "5.3.1",
        "benchmarks": [
            # 2e9 bytes in 0.1 s: 20 GB/s
            bench("test_copy_bandwidth[copy_]", 0.1, kind="copy", variant="copy_", min_bytes=2_000_000_000, numel=250_000_000),
            op("select_patches", "reference", "reference", 1e-3),
            op("select_patches", "cpu", "backend", 0.2e-3, default=True),  # 1e6 B / 0.2 ms = 5 GB/s = 25% of copy
            op("select_patches", "baseline: per-sample loop + host sync", "baseline", 10e-3),
            op("patch_mse_loss", "reference", "reference", 6e-3, pass_="fwd+bwd"),
            op("patch_mse_loss", "compile(reference)", "compile", 4e-3, pass_="fwd+bwd"),
            op("patch_mse_loss", "cpu", "backend", 3e-3, pass_="fwd+bwd", default=True),
            op("patch_mse_loss", "baseline: einsum + gather + norm + MSE", "baseline", 9e-3, pass_="fwd+bwd"),  # 3x: MISS
            memory("reference", 80 << 20),
            memory("cpu", 64 << 10, default=True),
            memory("baseline: eager N×M×M", 480 << 20),
            trainer("hpm/fused", 0.100, parts),
            trainer("hpm/reference", 0.120, parts),
            trainer("mae/fused", 0.050, {k: v for k, v in parts.items() if k not in ("teacher", "EMA")}),
            trainer("mae/reference", 0.060, parts),
            trainer("official/hpm", 0.150, parts),
        ],
    }
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(data))
    return path


def _row(text: str, *cells: str) -> str:
    """The first table row that contains every cell."""
    for line in text.splitlines():
        if line.startswith("|") and all(f"| {c} |" in line for c in cells):
            return line
    raise AssertionError(f"no row with {cells} in:\n{text}")


def test_report_tables_and_ratios(synthetic, tmp_path):
    out = tmp_path / "RESULTS.md"
    assert report.main([str(synthetic), "--out", str(out)]) == 0
    text = out.read_text()
    # header: machine, versions, date, command, generated-by note
    assert "Test CPU 9000" in text and "torch 9.9.9" in text and "triton 8.8.8" in text
    assert "2026-11-27T12:00:00+00:00" in text and f"`{COMMAND}`" in text
    assert "do not edit by hand" in text and "0123456789ab (dirty tree)" in text
    assert "copy_: 20.0 GB/s" in text
    # op rows: median ms, vs baseline, vs reference, GB/s, % of copy
    row = _row(text, "select_patches", "cpu *(auto)*")
    assert "| 0.200 | 50.0x | 5.00x | 5.00 | 25.0 |" in row
    row = _row(text, "select_patches", "baseline: per-sample loop + host sync")
    assert "| 10.00 | — | 0.10x |" in row
    assert "| 4.00 | 2.25x | 1.50x |" in _row(text, "patch_mse_loss", "compile(reference)")
    # targets checklist: PASS and MISS with the measured values
    assert "50.0x (cpu vs baseline: per-sample loop + host sync, N = 256) | ≥ 20x | PASS |" in _row(
        text, "select_patches ≥ 20x the per-sample loop (N = 256, L = 196)"
    )
    assert "3.00x" in _row(text, "patch_mse_loss fwd+bwd ≥ 4x the eager formula (ViT-B/16)")
    assert "**MISS**" in _row(text, "patch_mse_loss fwd+bwd ≥ 4x the eager formula (ViT-B/16)")
    assert "PASS" in _row(text, "ranking loss peak memory O(N·M) at M = 432")
    assert "1.50x (tiny 224 px p = 16, batch 16) | ≥ 1.25x | PASS |" in _row(
        text, "same-math HPM step ≥ 1.25x the official-structure step (tiny 224 px)"
    )
    assert "not measured in this run" in _row(text, "ranking loss fwd+bwd ≥ 5x eager N×M×M (ViT-B/16, M = 147)")
    assert "Misses: patch_mse_loss fwd+bwd ≥ 4x the eager formula (ViT-B/16)." in text
    # peak memory: MiB, baseline ÷ this, bound check
    assert "| 80.00 | 6.00x | no | N·M² = 45.56 |" in _row(text, "pairwise_ranking_loss@M=432", "reference")
    assert "| 0.06 | 7680x | yes |" in _row(text, "pairwise_ranking_loss@M=432", "cpu *(auto)*")
    # end to end: ms/step, images/s, ratios, breakdown
    assert "| 100 | 90.00–120 | 160.0 |" in _row(text, "hpm/fused")
    assert "HPM/MAE step time, --ops fused: **2.00**" in text
    assert "fused speed-up over reference, HPM (reference ÷ fused): **1.20**" in text
    assert "same-math speed-up: official-structure ÷ HPM fused: **1.50**" in text
    header = _row(text, "part (median ms)")
    assert header.split("|")[2:7] == [" hpm/fused ", " hpm/reference ", " mae/fused ", " mae/reference ", " official/hpm "]
    assert _row(text, "teacher").split("|")[4].strip() == "—"  # MAE has no teacher part
    assert "| sum of parts | 100.0 |" in text


def test_report_gpu_targets_and_stdout(synthetic, capsys):
    data = json.loads(synthetic.read_text())
    data["machine_info"]["hpm"]["device"] = "cuda"
    for b in data["benchmarks"]:
        b["extra_info"]["device"] = "cuda"
        if b["extra_info"].get("op") == "patch_mse_loss":
            b["extra_info"]["dtype"] = "bfloat16"
    synthetic.write_text(json.dumps(data))
    assert report.main([str(synthetic)]) == 0
    text = capsys.readouterr().out
    assert "### Targets (GPU" in text
    # the default row moves 1e6 B in 3 ms: 0.33 GB/s, 1.7% of the 20 GB/s copy
    assert "**MISS**" in _row(text, "patch_mse_loss fwd+bwd at ≥ 85% of copy bandwidth")
    assert "1.33x" in _row(text, "patch_mse_loss fwd+bwd ≥ 2x torch.compile(reference) (ViT-B/16, bf16)")
    assert "not measured by this suite" in _row(text, "select_patches in ≤ 2 launches")
    assert "not measured in this run" in _row(text, "same-math HPM step ≥ 1.3x the official-structure step (ViT-B/16)")


def test_sections_of_other_scripts_survive_a_regenerated_report(synthetic, tmp_path):
    out = tmp_path / "RESULTS.md"
    report.write_section(out, "tta", ["## TTA", "row 1"])
    report.write_section(out, "step-ratio", ["## steps"])
    report.write_section(out, "tta", ["## TTA", "row 2"])  # replaced in place, not appended
    text = out.read_text()
    assert text.count("<!-- tta:begin -->") == 1 and "row 2" in text and "row 1" not in text
    assert report.main([str(synthetic), "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith("<!-- Generated by benchmarks/report.py") and "row 2" in text and "## steps" in text


def _tta_run(setting: str, seed: int, knn: float, train_s: float) -> dict:
    return dict(
        setting=setting,
        what=f"{setting} (test)",
        seed=seed,
        points=[dict(epoch=4, train_s=train_s, knn=knn, linear=0.8, eval_s=1.0)],
        train_s=train_s,
        steps=312,
        machine="test machine, 2 threads",
        torch="x",
        date="2026-12-02",
        command="time_to_accuracy.py",
    )


def test_time_to_accuracy_report_says_met_and_missed(tmp_path):
    import time_to_accuracy as tta

    runs = tmp_path / "tta"
    runs.mkdir()
    for seed, knn in ((0, 0.80), (1, 0.79)):
        (runs / f"mae-s{seed}.json").write_text(json.dumps(_tta_run("mae", seed, knn, 300.0 + seed)))
    (runs / "hpm-s0.json").write_text(json.dumps(_tta_run("hpm", 0, 0.80, 500.0)))
    md = tmp_path / "RESULTS.md"
    tta.write_report(runs, md, target=79.0, budget=370.0)
    rows = [line for line in md.read_text().splitlines() if line.startswith("| mae") or line.startswith("| hpm")]
    assert rows[0].startswith("| mae: mae (test) | 2 | 4 | 300.5 ± 0.7 |") and rows[0].endswith(
        "| 79.5 ± 0.7 | 80.0 ± 0.0 | MET |"
    )
    assert rows[1].endswith("| missed |")  # 80 % but after 500 s
    assert (tmp_path / "results" / "tta.png").stat().st_size > 0


def test_trainer_step_report_gives_ratios_to_the_official_step():
    import trainer_step

    run = dict(
        shape="tta_32_b256",
        shape_info={},
        median_s={"official/hpm": 3.0, "hpm": 2.0},
        min_s={"official/hpm": 2.9, "hpm": 1.9},
        max_s={"official/hpm": 3.1, "hpm": 2.1},
        first_step_s={"official/hpm": 3.5, "hpm": 2.5},
        repeats=10,
        warmup=2,
        machine="test",
        torch="x",
        date="d",
        command="c",
    )
    lines = trainer_step.report_lines([run])
    assert (
        "| hpm | 2.000 | 1.900-2.100 | 1.50x | 2.5 |" in lines and "| official/hpm | 3.000 | 2.900-3.100 | 1.00x | 3.5 |" in lines
    )
