"""Every op x variant x shape set x dtype x pass, the copy bandwidth, and peak memory.

    pytest benchmarks/test_bench_ops.py --benchmark-only --benchmark-json=benchmarks/results/ops.json

Variants: ``reference`` (the public op on backend "reference": vectorised PyTorch behind the
custom op), ``compile(reference)`` (torch.compile of the hpm_kernels.reference function, static
shapes; the first call, which compiles, is not timed), the backends ``triton``, ``cpu`` and
``cuda`` (skipped with the reason where unavailable), and the baselines of benchmarks/baselines.py.
Passes: ``fwd`` is the forward as a training step runs it (inputs require grad, autograd records);
``fwd+bwd`` adds ``torch.autograd.grad``. Each benchmark's extra_info carries what report.py
needs: op, variant, shape set, dtype, pass, N, minimal bytes moved, device.
"""

from __future__ import annotations

import time

import bench_common as bc
import peak_memory
import pytest
import torch

from hpm_kernels import BackendUnavailableError

S = bc.settings()


def _op_cases():
    cases = []
    for shape in S.shapes:
        for dtype in S.dtypes:
            for op in bc.OPS.values():
                label = dtype
                if op.fixed_dtype is not None:  # one dtype whatever the run's: time it once, with the first
                    if dtype != S.dtypes[0]:
                        continue
                    label = next(k for k, v in bc.DTYPES.items() if v == op.fixed_dtype)
                for pass_ in bc.op_passes(op):
                    for variant in bc.variants_for(op):
                        cases.append(
                            pytest.param(op.name, variant, shape, label, pass_, id=f"{shape}-{label}-{op.name}-{pass_}-{variant}")
                        )
    return cases


@pytest.mark.parametrize(("op_name", "variant", "shape_name", "dtype_name", "pass_"), _op_cases())
def test_op(benchmark, op_name, variant, shape_name, dtype_name, pass_):
    op, shape = bc.OPS[op_name], bc.SHAPES[shape_name]
    why = bc.skip_reason(op, variant, shape, dtype_name, S)
    if why:
        pytest.skip(why)
    dtype = op.fixed_dtype or bc.DTYPES[dtype_name]
    N, n_note = S.n_for(shape, op_name)
    sets = bc.input_sets(op, shape, N, dtype, S, seed=1234)
    fn = bc.rotating([bc.variant_call(op, variant, x, pass_) for x in sets])
    t0 = time.perf_counter()
    try:
        fn()  # first call: load, compile (torch.compile), and backend refusals surface here
        bc.sync(S.device)
    except BackendUnavailableError as e:
        pytest.skip(str(e))
    first_call_s = time.perf_counter() - t0
    x = sets[0]
    default = bc.default_backend(op, x, shape, S.device)
    benchmark.group = f"{shape_name} {dtype_name} {op_name} {pass_}"
    benchmark.extra_info.update(
        kind="op",
        op=op_name,
        variant=variant,
        variant_kind=(
            "baseline"
            if variant.startswith("baseline")
            else "compile"
            if variant.startswith("compile")
            else "reference"
            if variant == "reference"
            else "backend"
        ),
        is_default=variant == default,
        default_backend=default,
        shape=shape_name,
        shape_desc=shape.desc,
        dtype=str(dtype).removeprefix("torch."),
        dtype_set=dtype_name,
        **{"pass": pass_},
        N=N,
        N_issue=shape.n_full,
        N_note=n_note,
        L=shape.L,
        K=shape.K,
        M=shape.M,
        P=shape.P,
        D=shape.dim,
        min_bytes=op.min_bytes(x, pass_),
        input_sets=len(sets),
        device=S.device.type,
        device_name=bc.device_name(S.device),
        note=op.note,
    )
    benchmark.extra_info["first_call_s"] = first_call_s
    bc.run_benchmark(benchmark, fn, S, warm=False)


@pytest.mark.parametrize("method", ["copy_", "clone"])
def test_copy_bandwidth(benchmark, method):
    """A large device copy: the bandwidth the ops' GB/s are compared with (bytes read + written)."""
    src = torch.randn(S.copy_numel, device=S.device)
    dst = torch.empty_like(src)
    fn = (lambda: dst.copy_(src)) if method == "copy_" else src.clone
    benchmark.group = "copy bandwidth"
    benchmark.extra_info.update(
        kind="copy",
        variant=method,
        min_bytes=2 * src.numel() * src.element_size(),
        numel=src.numel(),
        device=S.device.type,
        device_name=bc.device_name(S.device),
    )
    bc.run_benchmark(benchmark, fn, S)


@pytest.mark.parametrize(("case", "variant"), peak_memory.cases(S))
def test_peak_memory(benchmark, case, variant):
    """Peak memory of one fwd+bwd above its inputs (GPU: max_memory_allocated; CPU: a child's
    peak RSS). The time recorded for this benchmark is the measurement's, not the op's."""
    why = peak_memory.skip_reason(case, variant, S)
    if why:
        pytest.skip(why)
    result = peak_memory.measure(case, variant, S)
    if "skip" in result:
        pytest.skip(result["skip"])
    benchmark.group = "peak memory"
    benchmark.extra_info.update(kind="memory", device=S.device.type, device_name=bc.device_name(S.device), **result)
    # the measurement ran above (a child process on CPU); this only files its extra_info
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
