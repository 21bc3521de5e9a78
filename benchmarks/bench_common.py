"""Shared pieces of the pytest-benchmark suite: settings, shape sets, op definitions, timing.

Environment knobs (all optional; every value used is written into the JSON's machine_info):

``HPM_BENCH_QUICK=1``      smoke mode: tiny N, few rounds, micro trainer; numbers mean nothing.
``HPM_BENCH_DEVICE``       ``cpu`` or ``cuda`` (default: cuda when a GPU is visible).
``HPM_BENCH_SHAPES``       comma list of shape-set names (default: all four).
``HPM_BENCH_DTYPES``       comma list of ``fp32``/``bf16`` (default: fp32, plus bf16 where the device
                           computes in it natively: CUDA with bf16 support, or a CPU with
                           avx512_bf16/amx_bf16).
``HPM_BENCH_COMPILE``      shape sets that time ``torch.compile(reference)``: ``all``, ``none`` or a
                           comma list (default: ``all`` on CUDA; ``vitb16_224`` on CPU, where each
                           compile costs 5-20 s of the ~10-minute budget).
``HPM_BENCH_N_DIV``        CPU batch divisor for the op benchmarks (default 8; quick 64).
``HPM_BENCH_THREADS``      torch threads on CPU (default 2; benchmarks/README.md, How we measure).
``HPM_BENCH_TRAINER_ROUNDS`` / ``HPM_BENCH_TRAINER_WARMUP``   timed / warm-up steps per trainer variant.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import baselines
import numpy as np
import torch

import hpm_kernels as hk
from hpm_kernels import reference
from hpm_kernels.backends import BackendUnavailableError, resolve
from hpm_pretrain.machine import cpu_model

MASK_RATIO = 0.75
HARD_RATIO = 0.5
EPS = 1e-6
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# -- settings -----------------------------------------------------------------------------------
def _env_list(name: str) -> list[str] | None:
    v = os.environ.get(name, "").strip()
    return [s.strip() for s in v.split(",") if s.strip()] if v else None


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclasses.dataclass(frozen=True)
class ShapeSet:
    name: str
    desc: str
    img: int
    patch: int
    dim: int  # encoder width: the D of gather_tokens
    n_full: int  # the batch size (GPU)
    chans: int = 3

    @property
    def L(self) -> int:
        return (self.img // self.patch) ** 2

    @property
    def K(self) -> int:
        return hk.mask_counts(self.L, MASK_RATIO, HARD_RATIO)[0]

    @property
    def M(self) -> int:
        return self.L - self.K

    @property
    def num_hard(self) -> int:
        return hk.mask_counts(self.L, MASK_RATIO, HARD_RATIO)[1]

    @property
    def P(self) -> int:
        return self.patch * self.patch * self.chans


SHAPES = {
    s.name: s
    for s in (
        ShapeSet("vitb16_224", "ViT-B/16 224 px (L = 196, M = 147, P = 768, D = 768)", 224, 16, 768, 256),
        # The issue gives no batch for ViT-L; 128 keeps it from being a copy of the ViT-B set.
        ShapeSet("vitl16_224", "ViT-L/16 224 px (L = 196, M = 147, P = 768, D = 1024)", 224, 16, 1024, 128),
        ShapeSet("vittiny_32", "ViT-Tiny 32 px p = 4 (L = 64, M = 48, P = 48, D = 192)", 32, 4, 192, 1024),
        ShapeSet("vitb16_384", "384 px p = 16 (L = 576, M = 432, P = 768, D = 768)", 384, 16, 768, 64),
    )
}


@dataclasses.dataclass(frozen=True)
class Settings:
    quick: bool
    device: torch.device
    threads: int | None
    n_div: int
    shapes: tuple[str, ...]
    dtypes: tuple[str, ...]
    dtype_note: str
    compile_shapes: tuple[str, ...]
    op_budget_s: float  # measured time per op benchmark (rounds x iterations)
    min_rounds: int
    max_rounds: int
    min_round_s: float  # iterations per round are raised until a round lasts this long
    copy_numel: int
    trainer_rounds: int
    trainer_warmup: int
    breakdown_steps: int  # GPU only: extra synchronised steps for the per-part breakdown

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def n_for(self, shape: ShapeSet, op: str) -> tuple[int, str]:
        """Batch size of an op benchmark and a note saying how it relates to the issue's N."""
        if self.is_cuda and not self.quick:
            return shape.n_full, "full N"
        if op == "select_patches" and not self.quick:
            # cheap at full size, and the CPU target is stated at N = 256
            return shape.n_full, "full N (cheap; the CPU target is stated at N = 256)"
        n = max(1, shape.n_full // self.n_div)
        return n, f"N/{self.n_div} on {'a quick run' if self.quick else 'CPU'} (issue: N = {shape.n_full})"


@functools.cache
def settings() -> Settings:
    quick = os.environ.get("HPM_BENCH_QUICK", "0") not in ("", "0")
    dev_name = os.environ.get("HPM_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev_name)
    cuda = device.type == "cuda"
    dtypes = _env_list("HPM_BENCH_DTYPES")
    if dtypes:
        bad = [d for d in dtypes if d not in DTYPES]
        if bad:
            raise ValueError(f"HPM_BENCH_DTYPES: unknown {bad}; choose from {sorted(DTYPES)}")
        note = "HPM_BENCH_DTYPES"
    elif cuda:
        dtypes = ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
        note = "fp32 and bf16" if "bf16" in dtypes else "this GPU has no bf16"
    elif cpu_has_native_bf16():
        dtypes, note = ["fp32", "bf16"], "CPU with native bf16"
    else:
        dtypes = ["fp32"]
        note = "bf16 skipped: this CPU has no native bf16 (no avx512_bf16/amx_bf16) and the trainer runs fp32 on CPU"
    shapes = _env_list("HPM_BENCH_SHAPES") or list(SHAPES)
    bad = [s for s in shapes if s not in SHAPES]
    if bad:
        raise ValueError(f"HPM_BENCH_SHAPES: unknown {bad}; choose from {sorted(SHAPES)}")
    comp = _env_list("HPM_BENCH_COMPILE") or (["all"] if cuda else ["vitb16_224"])
    compile_shapes = tuple(SHAPES) if comp == ["all"] else () if comp == ["none"] else tuple(comp)
    threads = int(os.environ.get("HPM_BENCH_THREADS", "2")) if not cuda else None
    if quick:
        return Settings(
            quick=True,
            device=device,
            threads=threads,
            n_div=int(os.environ.get("HPM_BENCH_N_DIV", "64")),
            shapes=tuple(shapes),
            dtypes=tuple(dtypes),
            dtype_note=note,
            compile_shapes=compile_shapes,
            op_budget_s=0.01,
            min_rounds=2,
            max_rounds=5,
            min_round_s=0.0,
            copy_numel=1 << 20,
            trainer_rounds=int(os.environ.get("HPM_BENCH_TRAINER_ROUNDS", "2")),
            trainer_warmup=int(os.environ.get("HPM_BENCH_TRAINER_WARMUP", "1")),
            breakdown_steps=2,
        )
    return Settings(
        quick=False,
        device=device,
        threads=threads,
        n_div=int(os.environ.get("HPM_BENCH_N_DIV", "8")),
        shapes=tuple(shapes),
        dtypes=tuple(dtypes),
        dtype_note=note,
        compile_shapes=compile_shapes,
        op_budget_s=0.5 if cuda else 0.25,
        min_rounds=5,
        max_rounds=2000,
        min_round_s=1e-3 if cuda else 2e-4,
        copy_numel=(1 << 28) if cuda else (1 << 25),
        trainer_rounds=int(os.environ.get("HPM_BENCH_TRAINER_ROUNDS", "30" if cuda else "20")),
        trainer_warmup=int(os.environ.get("HPM_BENCH_TRAINER_WARMUP", "5" if cuda else "1")),
        breakdown_steps=10,
    )


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def versions() -> dict[str, str]:
    out = dict(torch=torch.__version__, python=platform.python_version(), numpy=np.__version__, hpm_kernels=hk.__version__)
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "not installed"
    return out


def command_line(args: list[str] | tuple[str, ...]) -> str:
    """The command as typed (best effort): the benchmark env knobs, then pytest and its arguments."""
    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("HPM_BENCH_", "HPM_KERNELS_")))
    exe = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "pytest"
    prog = "python -m pytest" if exe in ("__main__.py", "pytest.py") else exe
    return " ".join(x for x in (env, prog, *args) if x)


def machine_info() -> dict:
    s = settings()
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=s.device.type,
        device_name=device_name(s.device),
        cpu_model=cpu_model(),
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        threads=torch.get_num_threads(),
        quick=s.quick,
        n_div=None if s.is_cuda and not s.quick else s.n_div,
        shapes=list(s.shapes),
        dtypes=list(s.dtypes),
        dtype_note=s.dtype_note,
        compile_shapes=list(s.compile_shapes),
        backends=[dict(name=b.name, available=b.available, reason=b.reason) for b in hk.available_backends()],
        **versions(),
    )
    return info


# -- timing -------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cuda_timer() -> float:
    """perf_counter after the GPU has finished: pytest-benchmark reads it around each round."""
    torch.cuda.synchronize()
    return time.perf_counter()


def run_benchmark(benchmark, fn: Callable[[], object], s: Settings, *, warm: bool = True) -> float:
    """Time ``fn`` with pytest-benchmark in pedantic mode, rounds and iterations chosen here.

    One call first (load, compile, allocator warm-up; ``warm=False`` when the caller did it),
    then a second to size the rounds: iterations per round until a round lasts ``min_round_s``,
    rounds until ``op_budget_s`` (between ``min_rounds`` and ``max_rounds``). On CUDA the timer
    synchronises, so a round is its calls plus one synchronisation. Returns the first call's s.
    """
    t0 = time.perf_counter()
    if warm:
        fn()
        sync(s.device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    fn()
    sync(s.device)
    t = max(time.perf_counter() - t0, 1e-7)
    iterations = max(1, math.ceil(s.min_round_s / t)) if t < s.min_round_s else 1
    rounds = int(min(s.max_rounds, max(s.min_rounds, math.ceil(s.op_budget_s / (t * iterations)))))
    if s.is_cuda:
        benchmark._timer = cuda_timer  # pytest-benchmark has no public per-test timer setting
    benchmark.extra_info.update(rounds_chosen=rounds, iterations=iterations)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    return first


# -- ops ----------------------------------------------------------------------------------------
PASSES = ("fwd", "fwd+bwd")


@dataclasses.dataclass
class OpDef:
    """One op of the suite: its inputs, its calls per variant, and the bytes it must move.

    ``library(x)`` calls the public hpm_kernels op (run under ``with hk.backend(name)``);
    ``ref(x, f)`` calls ``f``, the hpm_kernels.reference function or its torch.compile;
    ``baselines`` call benchmarks/baselines.py. ``grad(out, x)`` gives autograd.grad's
    (outputs, inputs, grad_outputs) for the fwd+bwd pass.
    """

    name: str
    kernel: str  # backend kernel name (hpm_kernels.backends.resolve)
    ref_fn: Callable
    make: Callable[[ShapeSet, int, torch.dtype, torch.device, torch.Generator], dict]
    library: Callable[[dict], object]
    ref: Callable[[dict, Callable], object]
    baselines: dict[str, Callable[[dict], object]]
    grad: Callable[[object, dict], tuple] | None
    min_bytes: Callable[[dict, str], int]
    row: Callable[[ShapeSet], int]
    fixed_dtype: torch.dtype | None = None  # select_patches: float32 scores, as the trainer passes them
    float_inputs: tuple[str, ...] = ()
    note: str = ""


def _es(t: torch.Tensor) -> int:
    return t.element_size()


def _selection(shape: ShapeSet, N: int, device, gen) -> hk.Selection:
    scores = torch.randn(N, shape.L, generator=gen, device=device)
    noise = torch.rand(N, shape.L, generator=gen, device=device)
    return hk.select_patches(scores, noise, MASK_RATIO, HARD_RATIO, backend="reference")


def _randn(gen, device, dtype, *shape, grad=False) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, device=device).to(dtype).requires_grad_(grad)


def _make_patchify(shape, N, dtype, device, gen):
    sel = _selection(shape, N, device, gen)
    imgs = _randn(gen, device, dtype, N, shape.chans, shape.img, shape.img, grad=True)
    return dict(imgs=imgs, ids=sel.ids_keep, p=shape.patch, gout=_randn(gen, device, dtype, N, shape.K, shape.P))


def _make_patchify_full(shape, N, dtype, device, gen):
    imgs = _randn(gen, device, dtype, N, shape.chans, shape.img, shape.img)
    return dict(imgs=imgs, p=shape.patch)


def _make_gather(shape, N, dtype, device, gen):
    sel = _selection(shape, N, device, gen)
    x = _randn(gen, device, dtype, N, shape.L, shape.dim, grad=True)
    return dict(x=x, ids=sel.ids_keep, gout=_randn(gen, device, dtype, N, shape.K, shape.dim))


def _make_mse(shape, N, dtype, device, gen):
    sel = _selection(shape, N, device, gen)
    imgs = _randn(gen, device, dtype, N, shape.chans, shape.img, shape.img)
    pred = _randn(gen, device, dtype, N, shape.M, shape.P, grad=True)
    return dict(pred=pred, imgs=imgs, ids=sel.ids_mask, p=shape.patch)


def _make_select(shape, N, dtype, device, gen):
    scores = torch.randn(N, shape.L, generator=gen, device=device)
    noise = torch.rand(N, shape.L, generator=gen, device=device)
    return dict(scores=scores, noise=noise, len_keep=shape.K, num_hard=shape.num_hard, rng=np.random.default_rng(0))


def _make_rank(shape, N, dtype, device, gen):
    pred = _randn(gen, device, dtype, N, shape.M, grad=True)
    target = torch.rand(N, shape.M, generator=gen, device=device)  # a per-patch loss: float32, as the API returns it
    return dict(pred=pred, target=target)


def _loss_grad(out, x, wrt):
    loss = out[0] if isinstance(out, tuple) else out
    return (loss,), (x[wrt],), None


OPS: dict[str, OpDef] = {
    o.name: o
    for o in (
        OpDef(
            name="patchify",
            kernel="patchify",
            ref_fn=reference.patchify,
            make=_make_patchify,
            library=lambda x: hk.patchify(x["imgs"], x["p"], x["ids"]),
            ref=lambda x, f: f(x["imgs"], x["p"], x["ids"]),
            baselines={
                "baseline: einsum patchify + gather": lambda x: baselines.patchify_gather_eager(x["imgs"], x["p"], x["ids"])
            },
            grad=lambda out, x: ((out,), (x["imgs"],), (x["gout"],)),
            # fwd: the K chosen patches read, written once, ids read; bwd: grad read, the whole
            # image-shaped gradient written (zeros included)
            min_bytes=lambda x, ps: (
                2 * x["gout"].numel() * _es(x["imgs"])
                + x["ids"].numel() * 8
                + (x["gout"].numel() * _es(x["gout"]) + x["imgs"].numel() * _es(x["imgs"]) if ps == "fwd+bwd" else 0)
            ),
            row=lambda s: s.L,
            float_inputs=("imgs",),
            note="patchify(imgs, p, ids_keep): the student's visible patches",
        ),
        OpDef(
            name="patchify_full",
            kernel="patchify",
            ref_fn=reference.patchify,
            make=_make_patchify_full,
            library=lambda x: hk.patchify(x["imgs"], x["p"]),
            ref=lambda x, f: f(x["imgs"], x["p"], None),
            baselines={"baseline: einsum patchify": lambda x: baselines.patchify_gather_eager(x["imgs"], x["p"], None)},
            grad=None,
            min_bytes=lambda x, ps: 2 * x["imgs"].numel() * _es(x["imgs"]),
            row=lambda s: s.L,
            float_inputs=("imgs",),
            note="patchify(imgs, p): every patch, the teacher's input (no gradient)",
        ),
        OpDef(
            name="gather_tokens",
            kernel="gather_tokens",
            ref_fn=reference.gather_tokens,
            make=_make_gather,
            library=lambda x: hk.gather_tokens(x["x"], x["ids"]),
            ref=lambda x, f: f(x["x"], x["ids"]),
            baselines={"baseline: gather with repeated index": lambda x: baselines.gather_tokens_repeat(x["x"], x["ids"])},
            grad=lambda out, x: ((out,), (x["x"],), (x["gout"],)),
            min_bytes=lambda x, ps: (
                2 * x["gout"].numel() * _es(x["x"])
                + x["ids"].numel() * 8
                + (x["gout"].numel() * _es(x["gout"]) + x["x"].numel() * _es(x["x"]) if ps == "fwd+bwd" else 0)
            ),
            row=lambda s: s.L,
            float_inputs=("x",),
            note="gather_tokens(x (N, L, D), ids_keep)",
        ),
        OpDef(
            name="patch_mse_loss",
            kernel="patch_mse_loss",
            ref_fn=reference.patch_mse_loss,
            make=_make_mse,
            library=lambda x: hk.patch_mse_loss(x["pred"], x["imgs"], x["p"], x["ids"], True),
            ref=lambda x, f: f(x["pred"], x["imgs"], x["p"], x["ids"], True, EPS),
            baselines={
                "baseline: einsum + gather + norm + MSE": lambda x: baselines.patch_mse_loss_eager(
                    x["pred"], x["imgs"], x["p"], x["ids"], True
                )
            },
            grad=lambda out, x: _loss_grad(out, x, "pred"),
            # pred read, the M masked patches of imgs read, ids read; per_patch (fp32) and the
            # loss written; bwd: d pred written
            min_bytes=lambda x, ps: (
                x["pred"].numel() * (_es(x["pred"]) * (2 if ps == "fwd+bwd" else 1) + _es(x["imgs"]))
                + x["ids"].numel() * (8 + 4)
                + 4
            ),
            row=lambda s: s.M,
            float_inputs=("pred", "imgs"),
            note="patch_mse_loss(pred, imgs, p, ids_mask, norm_pix=True)",
        ),
        OpDef(
            name="select_patches",
            kernel="select_patches",
            ref_fn=reference.select_patches,
            make=_make_select,
            library=lambda x: hk.select_patches(x["scores"], x["noise"], MASK_RATIO, HARD_RATIO),
            ref=lambda x, f: f(x["scores"], x["noise"], x["len_keep"], x["num_hard"]),
            baselines={
                "baseline: per-sample loop + host sync": lambda x: baselines.select_per_sample_loop(
                    x["scores"], MASK_RATIO, HARD_RATIO, x["rng"]
                )
            },
            grad=None,
            min_bytes=lambda x, ps: (
                x["scores"].numel() * (4 + 4 + 8 + 8 + 1)
            ),  # scores, noise; ids_keep+ids_mask, ids_restore, mask
            row=lambda s: s.L,
            fixed_dtype=torch.float32,
            float_inputs=("scores", "noise"),
            note="select_patches(scores, noise, 0.75, 0.5); float32 scores as the trainer passes them",
        ),
        OpDef(
            name="pairwise_ranking_loss",
            kernel="pairwise_ranking_loss",
            ref_fn=reference.pairwise_ranking_loss,
            make=_make_rank,
            library=lambda x: hk.pairwise_ranking_loss(x["pred"], x["target"]),
            ref=lambda x, f: f(x["pred"], x["target"], EPS),
            baselines={"baseline: eager N×M×M": lambda x: baselines.ranking_loss_eager(x["pred"], x["target"])},
            grad=lambda out, x: _loss_grad(out, x, "pred"),
            min_bytes=lambda x, ps: (
                x["pred"].numel() * _es(x["pred"]) * (2 if ps == "fwd+bwd" else 1) + x["target"].numel() * 4 + 4
            ),
            row=lambda s: s.M,
            float_inputs=("pred", "target"),
            note="pairwise_ranking_loss(pred (N, M), float32 target); compute-bound: N·M² pairs",
        ),
    )
}


def op_passes(op: OpDef) -> tuple[str, ...]:
    return PASSES if op.grad is not None else ("fwd",)


def variants_for(op: OpDef) -> list[str]:
    """Every variant name the suite parametrises (unavailable ones are skipped with the reason)."""
    return ["reference", "compile(reference)", "triton", "cpu", "cuda", *op.baselines]


@functools.cache
def compiled(op_name: str) -> Callable:
    """torch.compile of the op's reference function; static shapes, one compile per shape/dtype."""
    cfg = torch._dynamo.config
    for knob in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, knob):
            setattr(cfg, knob, max(getattr(cfg, knob), 512))
    return torch.compile(OPS[op_name].ref_fn, dynamic=False)


def default_backend(op: OpDef, x: dict, shape: ShapeSet, device: torch.device) -> str | None:
    """The backend "auto" picks for these inputs (what a user of the op gets)."""
    dtypes = [x[k].dtype for k in op.float_inputs]
    try:
        return resolve(op.kernel, "auto", device, dtypes, op.row(shape))
    except BackendUnavailableError:
        return None


def variant_call(op: OpDef, variant: str, x: dict, pass_: str) -> Callable[[], object]:
    """A zero-argument callable that runs one variant of one op for one pass on inputs ``x``."""
    if variant == "compile(reference)":
        f = compiled(op.name)

        def fwd():
            return op.ref(x, f)
    elif variant.startswith("baseline"):
        b = op.baselines[variant]

        def fwd():
            return b(x)
    else:

        def fwd():
            with hk.backend(variant):
                return op.library(x)

    if pass_ == "fwd":
        return fwd

    def fwd_bwd():
        outs, ins, gouts = op.grad(fwd(), x)
        return torch.autograd.grad(outs, ins, gouts)

    return fwd_bwd


def rotating(calls: list[Callable[[], object]]) -> Callable[[], object]:
    """Cycle through calls on different input sets (keeps small GPU inputs out of L2)."""
    if len(calls) == 1:
        return calls[0]
    state = [0]

    def call():
        i = state[0]
        state[0] = (i + 1) % len(calls)
        return calls[i]()

    return call


def input_sets(op: OpDef, shape: ShapeSet, N: int, dtype: torch.dtype, s: Settings, seed: int) -> list[dict]:
    """One input set on CPU; on CUDA enough sets to cover twice the L2 cache (at most 8)."""
    gen = torch.Generator(device=s.device).manual_seed(seed)
    first = op.make(shape, N, dtype, s.device, gen)
    if not s.is_cuda:
        return [first]
    nbytes = sum(t.numel() * t.element_size() for t in first.values() if isinstance(t, torch.Tensor))
    l2 = getattr(torch.cuda.get_device_properties(s.device), "L2_cache_size", 50 << 20)
    count = int(min(8, max(1, math.ceil(2 * l2 / max(nbytes, 1)))))
    return [first] + [op.make(shape, N, dtype, s.device, gen) for _ in range(count - 1)]


def skip_reason(op: OpDef, variant: str, shape: ShapeSet, dtype_name: str, s: Settings) -> str | None:
    """Why a (variant, shape, dtype) cell is not timed here, or None. Backend refusals are found
    by running the variant once (BackendUnavailableError carries the reason)."""
    if variant == "triton" and not s.is_cuda:
        return "Triton on CPU tensors is the interpreter (a correctness mode, not a speed path)"
    if variant in ("triton", "cpu", "cuda"):
        info = {b.name: b for b in hk.available_backends()}.get(variant)
        if info is None:
            return f"backend {variant!r} is not registered"
        if not info.available:
            return f"backend {variant!r} unavailable: {info.reason}"
        if info.devices is not None and s.device.type not in info.devices:
            return f"backend {variant!r} runs on {list(info.devices)} tensors; this run uses {s.device.type}"
    if variant == "compile(reference)" and shape.name not in s.compile_shapes:
        return f"torch.compile is timed on {list(s.compile_shapes) or 'no'} shape sets here (HPM_BENCH_COMPILE=all for every set)"
    return None
