"""Same-run step timing for the step scripts (trainer_step.py, integrations_step.py): variants
interleaved A B C A B C ..., so that a machine's drift hits every variant alike (the method in
benchmarks/README.md)."""

from __future__ import annotations

import dataclasses
import datetime
import statistics
import sys
import time
from collections.abc import Callable

import torch

from hpm_pretrain.machine import cpu_model


def interleave(steps: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device) -> dict:
    """Run every step ``warmup + repeats`` times, one of each in turn; median / min / max seconds
    of the last ``repeats`` (a CUDA step ends when the device is done)."""
    times: dict[str, list[float]] = {v: [] for v in steps}
    for i in range(warmup + repeats):
        for v, step in steps.items():
            t0 = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times[v].append(time.perf_counter() - t0)
    return dict(
        median_s={v: statistics.median(t) for v, t in times.items()},
        min_s={v: min(t) for v, t in times.items()},
        max_s={v: max(t) for v, t in times.items()},
    )


def record(shape_name: str, shape, timings: dict, repeats: int, warmup: int, device: torch.device, script: str) -> dict:
    """The JSON a step script writes: timings plus what, where, when and the command."""
    return dict(
        shape=shape_name,
        shape_info=dataclasses.asdict(shape),
        **timings,
        repeats=repeats,
        warmup=warmup,
        machine=torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_model()}, {torch.get_num_threads()} threads",
        torch=torch.__version__,
        date=str(datetime.date.today()),
        command=" ".join([f"python {script}", *sys.argv[1:]]),
    )
