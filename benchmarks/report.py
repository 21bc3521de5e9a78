"""Turn pytest-benchmark JSON from this suite into markdown tables (benchmarks/RESULTS.md).

    pytest benchmarks/ --benchmark-only --benchmark-json=benchmarks/results/cpu.json
    python benchmarks/report.py benchmarks/results/cpu.json [more.json ...] --out benchmarks/RESULTS.md

One section per JSON file: the machine (CPU model / GPU name), torch/triton versions, date and
the exact command (from machine_info["hpm"], written by benchmarks/conftest.py); the issue's
targets as a checklist with the measured value and PASS/MISS; per shape set and op the median
time of every variant, its speed-up over the baseline and over ``reference`` (ratio of medians
measured in the same run: > 1 means faster), GB/s over the minimal bytes and % of the copy
bandwidth measured in the same run; peak memory; and the end-to-end training step (ms/step,
images/s, HPM/MAE, fused/reference and same-math vs official-structure ratios, per-part
breakdown). Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

OP_ORDER = ("patchify", "patchify_full", "gather_tokens", "patch_mse_loss", "select_patches", "pairwise_ranking_loss")
SHAPE_ORDER = ("vitb16_224", "vitl16_224", "vittiny_32", "vitb16_384")
KIND_ORDER = {"reference": 0, "compile": 1, "backend": 2, "baseline": 3}
TRAINER_VARIANTS = ("hpm/fused", "hpm/reference", "mae/fused", "mae/reference", "official/hpm")
PARTS = ("teacher", "selection", "student forward", "losses", "backward + optimizer", "EMA")
# O(N·M) memory, as the targets read it: at most this many float32 values per (image, masked
# patch) above the inputs, plus a slack for RSS/allocator granularity.
ONM_FLOATS = 64
ONM_SLACK = {"cpu": 4 << 20, "cuda": 1 << 20}


# -- loading ------------------------------------------------------------------------------------
class Run:
    """One pytest-benchmark JSON file, its rows split by kind."""

    def __init__(self, path: Path, data: dict):
        self.path = path
        self.data = data
        mi = data.get("machine_info", {})
        self.meta = mi.get("hpm", {})
        self.machine = mi
        self.ops: dict[tuple, dict[str, dict]] = defaultdict(dict)  # (shape, dtype, op, pass) -> variant -> row
        self.copy: dict[str, dict] = {}
        self.memory: list[dict] = []
        self.trainer: dict[str, dict[str, dict]] = defaultdict(dict)  # config -> variant -> row
        for b in data.get("benchmarks", []):
            e = dict(b.get("extra_info", {}))
            st = b.get("stats", {})
            e.update(
                median_s=st.get("median"), min_s=st.get("min"), max_s=st.get("max"), rounds=st.get("rounds"), name=b.get("name")
            )
            kind = e.get("kind")
            if kind == "op":
                self.ops[(e["shape"], e["dtype"], e["op"], e["pass"])][e["variant"]] = e
            elif kind == "copy":
                self.copy[e["variant"]] = e
            elif kind == "memory":
                self.memory.append(e)
            elif kind == "trainer":
                self.trainer[e["config"]][e["variant"]] = e
        self.device = self.meta.get("device") or next(
            (r.get("device") for rows in self.ops.values() for r in rows.values()), "cpu"
        )

    @property
    def copy_gbs(self) -> float | None:
        row = self.copy.get("copy_") or next(iter(self.copy.values()), None)
        return gbs(row) if row else None


def gbs(row: dict) -> float:
    return row["min_bytes"] / row["median_s"] / 1e9 if row.get("median_s") else float("nan")


# -- formatting ---------------------------------------------------------------------------------
def fmt_ms(s: float | None) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "—"
    ms = s * 1e3
    return f"{ms:.4f}" if ms < 0.01 else f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_x(r: float | None) -> str:
    if r is None or math.isnan(r):
        return "—"
    return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def fmt_num(v: float | None, digits: int = 1) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def mib(b: float) -> str:
    return f"{b / 2**20:.2f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def ratio(a: dict | None, b: dict | None) -> float | None:
    """a's median over b's: how many times faster b is than a."""
    if not a or not b or not a.get("median_s") or not b.get("median_s"):
        return None
    return a["median_s"] / b["median_s"]


def variant_sort_key(row: dict) -> tuple:
    return (KIND_ORDER.get(row.get("variant_kind"), 9), row["variant"])


def baseline_of(rows: dict[str, dict]) -> dict | None:
    return next((r for r in rows.values() if r.get("variant_kind") == "baseline"), None)


def default_of(rows: dict[str, dict]) -> dict | None:
    return next((r for r in rows.values() if r.get("is_default")), None)


# -- sections -----------------------------------------------------------------------------------
def header_section(run: Run) -> list[str]:
    m = run.meta
    mi = run.machine
    cpu = m.get("cpu_model") or (mi.get("cpu") or {}).get("brand_raw") or mi.get("processor") or "?"
    lines = [f"## {run.path.name}: {m.get('device_name', cpu)} ({run.device})", ""]
    if m.get("quick"):
        lines += [
            "**QUICK RUN (HPM_BENCH_QUICK=1): a smoke test with tiny shapes and rounds; these numbers are not results.**",
            "",
        ]
    backends = ", ".join(
        f"{b['name']} " + ("available" if b["available"] else f"unavailable ({b.get('reason')})") for b in m.get("backends", [])
    )
    rows = [
        ["machine", f"CPU: {cpu}, {m.get('threads', '?')} torch threads; GPU: {m.get('gpu') or 'none'}"],
        [
            "versions",
            f"torch {m.get('torch', '?')}, triton {m.get('triton', '?')}, python {m.get('python', mi.get('python_version', '?'))}, "
            f"numpy {m.get('numpy', '?')}, hpm_kernels {m.get('hpm_kernels', '?')}",
        ],
        ["date", m.get("date") or run.data.get("datetime", "?")],
        ["command", f"`{m.get('command', '?')}`"],
        ["backends", backends or "?"],
        ["dtypes", f"{', '.join(m.get('dtypes', []))} ({m.get('dtype_note', '')})"],
        ["torch.compile timed on", ", ".join(m.get("compile_shapes", [])) or "no shape set"],
    ]
    if m.get("n_div"):
        rows.append(
            [
                "batch",
                f"op benchmarks use the issue's N / {m['n_div']} (column N); select_patches keeps the full N on a non-quick CPU run",
            ]
        )
    commit = run.data.get("commit_info", {})
    if commit.get("id"):
        rows.append(["commit", f"{commit['id'][:12]}{' (dirty tree)' if commit.get('dirty') else ''}"])
    cg = run.copy_gbs
    if cg:
        parts = [
            f"{v}: {gbs(r):.1f} GB/s ({r['numel'] * 4 / 2**20:.0f} MiB float32, read + write)"
            for v, r in sorted(run.copy.items())
        ]
        rows.append(["copy bandwidth", "; ".join(parts) + " — `copy_` is the 100% of the % of copy column"])
    return [*lines, *table(["", ""], rows), ""]


def ops_section(run: Run) -> list[str]:
    if not run.ops:
        return []
    lines = [
        "### Ops",
        "",
        "Median per call. *vs baseline* and *vs reference*: the baseline's (or reference's) median over this row's, "
        "measured in the same run (> 1 = this row is faster). GB/s: the minimal bytes the op must move (each input "
        "read once, each output written once) over the median; % of copy: that over the copy bandwidth above. "
        "*(auto)* marks the backend `auto` picks for these inputs. fwd: the forward as a training step runs it "
        "(autograd recording); fwd+bwd adds `torch.autograd.grad`.",
        "",
    ]
    copy = run.copy_gbs
    shapes = sorted({k[0] for k in run.ops}, key=lambda s: (SHAPE_ORDER.index(s) if s in SHAPE_ORDER else 99, s))
    for shape in shapes:
        keys = sorted(
            (k for k in run.ops if k[0] == shape),
            key=lambda k: (OP_ORDER.index(k[2]) if k[2] in OP_ORDER else 99, k[3], k[1]),
        )
        desc = next(iter(run.ops[keys[0]].values())).get("shape_desc", shape)
        lines += [f"#### {desc}", ""]
        rows = []
        for key in keys:
            variants = run.ops[key]
            base, ref = baseline_of(variants), variants.get("reference")
            for r in sorted(variants.values(), key=variant_sort_key):
                g = gbs(r)
                rows.append(
                    [
                        key[2],
                        key[3],
                        key[1],
                        str(r.get("N", "?")),
                        r["variant"] + (" *(auto)*" if r.get("is_default") else ""),
                        fmt_ms(r["median_s"]),
                        fmt_x(ratio(base, r)) if base and r is not base else "—",
                        fmt_x(ratio(ref, r)) if ref and r is not ref else "—",
                        fmt_num(g, 2),
                        fmt_num(100 * g / copy if copy else None),
                    ]
                )
        lines += table(
            ["op", "pass", "dtype", "N", "variant", "median ms", "vs baseline", "vs reference", "GB/s", "% of copy"], rows
        )
        lines.append("")
    return lines


def onm_bound(row: dict, device: str) -> float:
    return ONM_FLOATS * row["NM"] * 4 + ONM_SLACK.get(device, 1 << 20)


def memory_section(run: Run) -> list[str]:
    if not run.memory:
        return []
    lines = [
        "### Peak memory (fwd+bwd, float32)",
        "",
        f"Peak bytes above the inputs. O(N·M) bound: {ONM_FLOATS}·N·M float32 + "
        f"{ONM_SLACK.get(run.device, 1 << 20) >> 20} MiB slack (RSS / allocator granularity). Scale: the size of one "
        "N·M² float32 tensor (ranking loss) or of pred, N·M·P float32 (patch_mse_loss).",
        "",
    ]
    rows = []
    by_case = defaultdict(list)
    for r in run.memory:
        by_case[r["case"]].append(r)
    for case, rs in by_case.items():
        base = next((r for r in rs if r["variant"].startswith("baseline")), None)
        ranking = rs[0]["op"] == "pairwise_ranking_loss"
        for r in sorted(rs, key=lambda r: (r["variant"].startswith("baseline"), r["variant"])):
            if ranking:
                within = "yes" if r["peak_bytes"] <= onm_bound(r, run.device) else "no"
                scale = f"N·M² = {mib(r['NMM'] * 4)}"
            else:
                within = "—"
                scale = f"N·M·P = {mib(r['NM'] * r['P'] * 4)}" if r.get("P") else "—"
            rows.append(
                [
                    case,
                    str(r["N"]),
                    str(r["M"]),
                    r["variant"] + (" *(auto)*" if r.get("is_default") else ""),
                    mib(r["peak_bytes"]),
                    fmt_x(base["peak_bytes"] / r["peak_bytes"]) if base and r is not base and r["peak_bytes"] > 0 else "—",
                    within,
                    scale,
                ]
            )
    lines += table(
        ["case", "N", "M", "variant", "peak MiB", "baseline ÷ this", "ranking loss within O(N·M) bound", "scale (float32 MiB)"],
        rows,
    )
    method = run.memory[0].get("method", "")
    return [*lines, "", f"Method: {method}.", ""]


def trainer_section(run: Run) -> list[str]:
    if not run.trainer:
        return []
    lines = ["### End-to-end training step", ""]
    for variants in run.trainer.values():
        any_row = next(iter(variants.values()))
        ac = f", autocast {any_row['autocast']}" if any_row.get("autocast") else ""
        lines += [
            f"#### {any_row['label']} ({any_row['L']} patches, hard ratio {any_row['hard_ratio']} for HPM{ac})",
            "",
            f"Median of {any_row['rounds']} steps after {any_row['warmup_rounds']} warm-up steps (pytest-benchmark pedantic); "
            "each variant's steps run as one block, variants one after another in one process.",
            "",
        ]
        order = [v for v in TRAINER_VARIANTS if v in variants] + [v for v in variants if v not in TRAINER_VARIANTS]
        rows = [
            [
                v,
                fmt_ms(variants[v]["median_s"]),
                f"{fmt_ms(variants[v]['min_s'])}–{fmt_ms(variants[v]['max_s'])}",
                fmt_num(variants[v]["batch"] / variants[v]["median_s"]),
            ]
            for v in order
        ]
        lines += table(["variant", "ms/step", "min–max ms", "images/s"], rows)
        g = variants.get
        facts = [
            ("HPM/MAE step time, --ops fused", _r(g("hpm/fused"), g("mae/fused"))),
            ("HPM/MAE step time, --ops reference", _r(g("hpm/reference"), g("mae/reference"))),
            ("fused speed-up over reference, HPM (reference ÷ fused)", _r(g("hpm/reference"), g("hpm/fused"))),
            ("fused speed-up over reference, MAE (reference ÷ fused)", _r(g("mae/reference"), g("mae/fused"))),
            ("same-math speed-up: official-structure ÷ HPM fused", _r(g("official/hpm"), g("hpm/fused"))),
            ("official-structure ÷ HPM reference", _r(g("official/hpm"), g("hpm/reference"))),
        ]
        lines += [""] + [f"- {name}: **{fmt_num(v, 2)}**" for name, v in facts if v is not None] + [""]
        parts = [p for p in PARTS if any(p in variants[v].get("breakdown_ms", {}) for v in order)]
        if parts:
            rows = [[p] + [fmt_num(variants[v].get("breakdown_ms", {}).get(p)) for v in order] for p in parts]
            rows.append(["sum of parts"] + [fmt_num(variants[v].get("parts_sum_ms")) for v in order])
            rows.append(["timed step (median)"] + [fmt_num(variants[v]["median_s"] * 1e3) for v in order])
            lines += table(["part (median ms)", *order], rows)
            lines += ["", f"Breakdown from {any_row.get('breakdown_source', '?')}.", ""]
    return lines


def _r(a: dict | None, b: dict | None) -> float | None:
    return ratio(a, b)


# -- targets ------------------------------------------------------------------------------------
def _op_rows(run: Run, shape: str, dtype: str, op: str, pass_: str) -> dict[str, dict]:
    return run.ops.get((shape, dtype, op, pass_), {})


def _speedup_target(run, name, shape, dtype, op, pass_, against, goal):
    rows = _op_rows(run, shape, dtype, op, pass_)
    cand = default_of(rows)
    other = baseline_of(rows) if against == "baseline" else rows.get(against)
    if not cand or not other:
        return [name, "not measured in this run", f"≥ {goal}x", "—"]
    r = ratio(other, cand)
    return [name, f"{fmt_x(r)} ({cand['variant']} vs {other['variant']}, N = {cand.get('N')})", f"≥ {goal}x", _pf(r >= goal)]


def _copy_targets(run, shape, dtype, goal):
    out = []
    copy = run.copy_gbs
    for op in OP_ORDER:
        for pass_ in ("fwd", "fwd+bwd"):
            # select_patches takes float32 scores whatever the run's dtype
            cand = default_of(_op_rows(run, shape, "float32" if op == "select_patches" else dtype, op, pass_))
            if cand is None:
                continue
            pct = 100 * gbs(cand) / copy if copy else float("nan")
            out.append(
                [
                    f"{op} {pass_} at ≥ {goal}% of copy bandwidth",
                    f"{pct:.1f}% ({cand['variant']})",
                    f"≥ {goal}%",
                    _pf(pct >= goal),
                ]
            )
    if not out:
        out.append([f"each op at ≥ {goal}% of copy bandwidth", "not measured in this run", f"≥ {goal}%", "—"])
    return out


def _memory_target(run, name):
    rows = [r for r in run.memory if r["op"] == "pairwise_ranking_loss"]
    cand = next((r for r in rows if r.get("is_default")), None)
    if cand is None:
        return [name, "not measured in this run", "O(N·M)", "—"]
    base = next((r for r in rows if r["variant"].startswith("baseline")), None)
    bound = onm_bound(cand, run.device)
    extra = f"; baseline {mib(base['peak_bytes'])} MiB" if base else ""
    return [
        name,
        f"{mib(cand['peak_bytes'])} MiB ({cand['variant']}, N = {cand['N']}, M = {cand['M']}; bound {mib(bound)} MiB{extra})",
        "O(N·M)",
        _pf(cand["peak_bytes"] <= bound),
    ]


def _trainer_target(run, name, preset, img, goal):
    for variants in run.trainer.values():
        any_row = next(iter(variants.values()))
        if any_row.get("preset") == preset and any_row.get("img") == img:
            r = ratio(variants.get("official/hpm"), variants.get("hpm/fused"))
            if r is None:
                break
            return [name, f"{fmt_x(r)} ({any_row['label']})", f"≥ {goal}x", _pf(r >= goal)]
    return [name, "not measured in this run", f"≥ {goal}x", "—"]


def _pf(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


def targets(run: Run) -> list[list[str]]:
    if run.device == "cuda":
        s, d = "vitb16_224", "bfloat16"
        return [
            *_copy_targets(run, s, d, 85),
            _speedup_target(run, "patch_mse_loss fwd+bwd ≥ 2x torch.compile(reference) (ViT-B/16, bf16)", s, d, "patch_mse_loss", "fwd+bwd", "compile(reference)", 2),
            _speedup_target(run, "select_patches ≥ 100x the per-sample loop (ViT-B/16, N = 256)", s, "float32", "select_patches", "fwd", "baseline", 100),
            ["select_patches in ≤ 2 launches", "not measured by this suite (a profiler question)", "≤ 2", "—"],
            _speedup_target(run, "ranking loss fwd+bwd ≥ 5x eager N×M×M (ViT-B/16, bf16)", s, d, "pairwise_ranking_loss", "fwd+bwd", "baseline", 5),
            _memory_target(run, "ranking loss peak memory O(N·M) at M = 432"),
            _trainer_target(run, "same-math HPM step ≥ 1.3x the official-structure step (ViT-B/16)", "base", 224, 1.3),
        ]  # fmt: skip
    s, d = "vitb16_224", "float32"
    return [
        _speedup_target(run, "select_patches ≥ 20x the per-sample loop (N = 256, L = 196)", s, d, "select_patches", "fwd", "baseline", 20),
        _speedup_target(run, "patch_mse_loss fwd+bwd ≥ 4x the eager formula (ViT-B/16)", s, d, "patch_mse_loss", "fwd+bwd", "baseline", 4),
        _speedup_target(run, "ranking loss fwd+bwd ≥ 5x eager N×M×M (ViT-B/16, M = 147)", s, d, "pairwise_ranking_loss", "fwd+bwd", "baseline", 5),
        _speedup_target(run, "ranking loss fwd+bwd ≥ 5x eager N×M×M (384 px, M = 432)", "vitb16_384", d, "pairwise_ranking_loss", "fwd+bwd", "baseline", 5),
        _memory_target(run, "ranking loss peak memory O(N·M) at M = 432"),
        _trainer_target(run, "same-math HPM step ≥ 1.25x the official-structure step (tiny 224 px)", "tiny", 224, 1.25),
    ]  # fmt: skip


def targets_section(run: Run) -> list[str]:
    rows = targets(run)
    if not (run.ops or run.memory or run.trainer):
        return []
    which = "GPU" if run.device == "cuda" else "CPU"
    lines = [
        f"### Targets ({which}; issue 6{', with issue 3' if which == 'GPU' else ''})",
        "",
        "Measured with the backend `auto` picks (marked *(auto)* below). Benchmarks, not tests.",
        "",
    ]
    lines += table(["target", "measured", "goal", "result"], rows)
    misses = [r[0] for r in rows if r[3] == "**MISS**"]
    lines += ["", f"Misses: {'; '.join(misses)}." if misses else "Misses: none among the measured targets.", ""]
    return lines


# -- document -----------------------------------------------------------------------------------
def render(runs: list[Run], command: str, now: str | None = None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        "<!-- Generated by benchmarks/report.py from pytest-benchmark JSON; do not edit by hand. -->",
        "# Benchmark results",
        "",
        f"Generated {now} by `{command}` from {', '.join(f'`{r.path}`' for r in runs)}. "
        "Each section below gives the machine, versions, date and exact command of its run. "
        "Method and how to rerun: benchmarks/README.md (How we measure, Run).",
        "",
    ]
    for run in runs:
        lines += header_section(run)
        lines += targets_section(run)
        lines += ops_section(run)
        lines += memory_section(run)
        lines += trainer_section(run)
    return "\n".join(lines).rstrip() + "\n"


SECTION = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)


def write_section(path: Path, name: str, lines: list[str]) -> str:
    """Put ``lines`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path`` (replacing
    that section, or appended). Such sections come from other scripts (time_to_accuracy.py,
    trainer_step.py); :func:`main` keeps them when it regenerates the rest of the file."""
    block = "\n".join([f"<!-- {name}:begin -->", *lines, f"<!-- {name}:end -->"])
    text = path.read_text() if path.exists() else ""
    old = next((m for m in SECTION.finditer(text) if m.group(1) == name), None)
    text = text[: old.start()] + block + text[old.end() :] if old else text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
    return block


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", type=Path, help="pytest-benchmark JSON files (--benchmark-json)")
    ap.add_argument("--out", type=Path, help="markdown output (default: stdout)")
    args = ap.parse_args(argv)
    runs = [Run(p, json.loads(p.read_text())) for p in args.json]
    command = "python benchmarks/report.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = render(runs, command)
    if args.out and args.out.exists():  # keep the sections other scripts write
        kept = [m.group(0) for m in SECTION.finditer(args.out.read_text())]
        text = text + "".join("\n" + k + "\n" for k in kept)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
