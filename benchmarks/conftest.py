"""pytest-benchmark suite of hpm_kernels: `pytest benchmarks/ --benchmark-only`.

Never part of `make test` (pyproject's testpaths = ["tests"]). Knobs: see bench_common.py.
Writes the machine, versions, date, settings and the exact command into the JSON's machine_info
under "hpm", which benchmarks/report.py reads.
"""

from __future__ import annotations

import bench_common
import torch

_COMMAND: list[str] = []


def pytest_configure(config) -> None:
    s = bench_common.settings()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    _COMMAND[:] = [bench_common.command_line(config.invocation_params.args)]


def pytest_report_header(config) -> list[str]:
    s = bench_common.settings()
    info = bench_common.machine_info()
    lines = [
        f"hpm bench: device {s.device} ({info['device_name']}), torch threads {info['threads']}, "
        f"torch {info['torch']}, triton {info['triton']}",
        f"hpm bench: shapes {list(s.shapes)}, dtypes {list(s.dtypes)} ({s.dtype_note}), torch.compile on {list(s.compile_shapes)}",
    ]
    if not s.is_cuda or s.quick:
        lines.append(f"hpm bench: op batch N = issue's N / {s.n_div} (select_patches keeps the full N on a non-quick CPU run)")
    if s.quick:
        lines.append("hpm bench: QUICK run (HPM_BENCH_QUICK=1): a smoke test of the suite; the numbers mean nothing")
    return lines


def pytest_benchmark_update_machine_info(config, machine_info) -> None:
    machine_info["hpm"] = dict(bench_common.machine_info(), command=_COMMAND[0] if _COMMAND else None)
