"""Peak memory of one forward+backward per variant, above its inputs.

GPU: in the benchmark process, ``torch.cuda.max_memory_allocated()`` during the call minus
``torch.cuda.memory_allocated()`` just before it (inputs allocated, the variant warmed up).

CPU: torch's CPU allocations are invisible to tracemalloc, so each variant runs in a child
process and its peak RSS is read there. Importing torch and hpm_kernels alone peaks at several
hundred MB, above what most calls add, so neither the child's lifetime ``ru_maxrss`` nor the
parent's ``RUSAGE_CHILDREN`` (the maximum over every child it ever waited for) can show an
O(N·M) call. Instead the child imports, allocates the inputs, runs the variant once on a batch
of one (library code, thread pools and allocator caches loaded), then resets its
peak-RSS mark (``echo 5 > /proc/self/clear_refs``), notes its RSS (the baseline: inputs
allocated, nothing else running), makes the measured call and reads the peak back
(``VmHWM``): peak above inputs = VmHWM − that RSS. Where /proc/self/clear_refs cannot be
written, it falls back to the growth of ``ru_maxrss`` across the call (``method`` says which).

The cases: ``pairwise_ranking_loss`` at 384 px (M = 432, N = 64) — the issue's O(N·M) versus the
baseline's O(N·M²) — and ``patch_mse_loss`` at ViT-B/16 224 px (the op batch N of this run).
``torch.compile`` variants are not measured (a compile in a child costs seconds per case).

    python benchmarks/peak_memory.py --child CASE VARIANT --n N   (what the parent runs)
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path

import bench_common as bc
import torch

from hpm_kernels import BackendUnavailableError

CASES = {
    # name: (op, shape set, N on a full run or None for the op suite's N)
    "pairwise_ranking_loss@M=432": ("pairwise_ranking_loss", "vitb16_384", 64),
    "patch_mse_loss@vitb16_224": ("patch_mse_loss", "vitb16_224", None),
}
VARIANTS = ("reference", "triton", "cpu", "cuda", "baseline")


def cases(s: bc.Settings) -> list[tuple[str, str]]:
    return [(c, v) for c in CASES for v in VARIANTS]


def case_n(case: str, s: bc.Settings) -> int:
    op, shape, n = CASES[case]
    if n is None or s.quick:
        return s.n_for(bc.SHAPES[shape], op)[0]
    return n


def variant_name(op: bc.OpDef, variant: str) -> str:
    return next(iter(op.baselines)) if variant == "baseline" else variant


def skip_reason(case: str, variant: str, s: bc.Settings) -> str | None:
    op_name, shape, _ = CASES[case]
    op = bc.OPS[op_name]
    return bc.skip_reason(op, variant_name(op, variant), bc.SHAPES[shape], "fp32", s)


def _inputs(case: str, n: int, device: torch.device) -> dict:
    op_name, shape, _ = CASES[case]
    gen = torch.Generator(device=device).manual_seed(0)
    return bc.OPS[op_name].make(bc.SHAPES[shape], n, torch.float32, device, gen)


def _info(case: str, variant: str, n: int) -> dict:
    op_name, shape_name, _ = CASES[case]
    op, shape = bc.OPS[op_name], bc.SHAPES[shape_name]
    M = shape.M
    return dict(
        case=case,
        op=op_name,
        variant=variant_name(op, variant),
        shape=shape_name,
        dtype="float32",
        **{"pass": "fwd+bwd"},
        N=n,
        M=M,
        P=shape.P,
        NM=n * M,
        NMM=n * M * M,
    )


def measure(case: str, variant: str, s: bc.Settings) -> dict:
    n = case_n(case, s)
    info = _info(case, variant, n)
    op_name, shape, _ = CASES[case]
    info["default_backend"] = bc.default_backend(bc.OPS[op_name], _inputs(case, 1, s.device), bc.SHAPES[shape], s.device)
    info["is_default"] = info["variant"] == info["default_backend"]
    if s.is_cuda:
        return {**info, **_measure_cuda(case, variant, n, s.device)}
    out = _run_child(case, variant, n, s.threads or 2)
    if "skip" in out:
        return out
    return {**info, **out}


def _measure_cuda(case: str, variant: str, n: int, device: torch.device) -> dict:
    op = bc.OPS[CASES[case][0]]
    x = _inputs(case, n, device)
    fn = bc.variant_call(op, variant_name(op, variant), x, "fwd+bwd")
    try:
        fn()
    except BackendUnavailableError as e:
        return dict(skip=str(e))
    torch.cuda.synchronize()
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return dict(
        method="torch.cuda.max_memory_allocated() during the call minus memory_allocated() before it",
        peak_bytes=torch.cuda.max_memory_allocated() - before,
        inputs_bytes=_nbytes(x),
    )


def _nbytes(x: dict) -> int:
    return sum(t.numel() * t.element_size() for t in x.values() if isinstance(t, torch.Tensor))


def _run_child(case: str, variant: str, n: int, threads: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, variant, "--n", str(n), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"peak-memory child failed ({' '.join(cmd)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _child(case: str, variant: str, n: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    op = bc.OPS[CASES[case][0]]
    device = torch.device("cpu")
    x = _inputs(case, n, device)
    name = variant_name(op, variant)
    if bc.skip_reason(op, name, bc.SHAPES[CASES[case][1]], "fp32", bc.settings()) is not None:
        return dict(skip=f"variant {variant!r} does not run here")
    try:  # warm-up on a batch of one: library code, thread pools and allocator caches loaded
        bc.variant_call(op, name, _inputs(case, 1, device), "fwd+bwd")()
    except BackendUnavailableError as e:
        return dict(skip=str(e))
    fn = bc.variant_call(op, name, x, "fwd+bwd")
    gc.collect()
    if _reset_peak_rss():
        before = _status_kb("VmRSS")
        fn()
        peak = _status_kb("VmHWM")
        method = "child process: VmHWM during the call (mark reset just before) minus VmRSS before it"
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "child process: growth of ru_maxrss across the call (no /proc/self/clear_refs; a lower bound)"
    return dict(
        method=method, peak_bytes=max(0, peak - before) * 1024, rss_before_kb=before, peak_rss_kb=peak, inputs_bytes=_nbytes(x)
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=2, metavar=("CASE", "VARIANT"), required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    print(json.dumps(_child(*args.child, args.n, args.threads)))


if __name__ == "__main__":
    main()
