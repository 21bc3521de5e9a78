"""Time every op on a CUDA GPU: reference eager, torch.compile(reference), Triton, CUDA C++, and baselines.

    python benchmarks/gpu_ops.py [--dtype bf16] [--n 256] [--json OUT.json]

ViT-B/16 at 224 px (L = 196, P = 768, mask ratio 0.75, hard ratio 0.5) by default. Medians from
``triton.testing.do_bench`` on random data; achieved GB/s against the fewest bytes each op must
move, and that as a fraction of a device-to-device copy measured in the same run. The table is
printed last. No test asserts on these numbers. Rows of variant "cuda" (the CUDA C++ kernels of
csrc/cuda) are timed beside "triton" whenever that backend is available; otherwise (no extension
built, or --smoke on CPU) they are left out and the reason is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines

import hpm_kernels as hk
from hpm_kernels import reference

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


SMOKE = False  # --smoke: CPU tensors through TRITON_INTERPRET=1, tiny shapes, one call per timing


def bench(fn: Callable[[], object]) -> float:
    """Median milliseconds."""
    if SMOKE:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def cuda_unavailable() -> str | None:
    """Why the "cuda" backend is not timed in this run, or None."""
    if SMOKE:
        return "--smoke runs on CPU tensors"
    info = next((b for b in hk.available_backends() if b.name == "cuda"), None)
    if info is None:
        return "backend 'cuda' is not registered"
    return None if info.available else str(info.reason)


def compile_(fn: Callable) -> Callable:
    return fn if SMOKE else torch.compile(fn)


def copy_bandwidth(device) -> float:
    """GB/s of a 1 GiB device-to-device copy, counting bytes read plus bytes written."""
    src = torch.randn((1 << 16) if SMOKE else (256 << 20), device=device)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def run(args) -> list[dict]:
    dev = torch.device("cpu" if SMOKE else "cuda")
    dt = DTYPES[args.dtype]
    es = torch.empty((), dtype=dt).element_size()
    N, C, H, W, p = args.n, 3, args.img, args.img, args.patch
    L, P = (H // p) * (W // p), p * p * C
    len_keep, num_hard = hk.mask_counts(L, args.mask_ratio, args.hard_ratio)
    M, D = L - len_keep, args.dim
    g = torch.Generator(device=dev).manual_seed(0)

    def randn(*shape, dtype=dt):
        return torch.randn(*shape, generator=g, device=dev, dtype=torch.float32).to(dtype)

    if SMOKE and dt == torch.bfloat16:
        sys.exit("--smoke runs through the Triton interpreter, which has no bfloat16: use --dtype fp32 or fp16")

    imgs = randn(N, C, H, W)
    scores = randn(N, L, dtype=torch.float32)
    noise = torch.rand(N, L, generator=g, device=dev)
    sel = hk.select_patches(scores, noise, args.mask_ratio, args.hard_ratio)
    pred = randn(N, M, P).requires_grad_()
    x = randn(N, L, D).requires_grad_()
    s_pred = randn(N, M).requires_grad_()
    s_target = torch.rand(N, M, generator=g, device=dev)
    copy_gbs = copy_bandwidth(dev)
    rows: list[dict] = []
    timed = ["triton"] if cuda_unavailable() else ["triton", "cuda"]

    def record(op, variant, ms, nbytes, note=""):
        gbs = nbytes / ms / 1e6 if nbytes else float("nan")
        rows.append(dict(op=op, variant=variant, ms=ms, min_bytes=nbytes, gbs=gbs, pct_copy=100 * gbs / copy_gbs, note=note))

    def variants(op: str, eager: Callable, compiled_body: Callable, nbytes: int):
        with hk.backend("reference"):
            record(op, "reference", bench(eager), nbytes)
        t0 = time.perf_counter()
        compiled = compile_(compiled_body)
        compiled()
        record(op, "compile(reference)", bench(compiled), nbytes, f"compile {time.perf_counter() - t0:.0f}s")
        for name in timed:
            with hk.backend(name):
                record(op, name, bench(eager), nbytes)

    # --- patchify with the fused gather of the visible patches
    nb = 2 * N * len_keep * P * es + N * len_keep * 8
    variants(
        "patchify(ids_keep) fwd",
        lambda: hk.patchify(imgs, p, sel.ids_keep),
        lambda: reference.patchify(imgs, p, sel.ids_keep),
        nb,
    )
    grad_vis = randn(N, len_keep, P)
    x_img = imgs.clone().requires_grad_()
    nb_bwd = nb + N * len_keep * P * es + N * C * H * W * es
    variants(
        "patchify(ids_keep) fwd+bwd",
        lambda: torch.autograd.grad(hk.patchify(x_img, p, sel.ids_keep), x_img, grad_vis),
        lambda: torch.autograd.grad(reference.patchify(x_img, p, sel.ids_keep), x_img, grad_vis),
        nb_bwd,
    )
    variants("patchify fwd", lambda: hk.patchify(imgs, p), lambda: reference.patchify(imgs, p, None), 2 * N * L * P * es)

    # --- per-patch MSE with norm-pix target (gradients by autograd.grad: nothing accumulates)
    nb_fwd = 2 * N * M * P * es + N * M * (8 + 4)
    nb_fb = nb_fwd + 3 * N * M * P * es
    variants(
        "patch_mse_loss fwd+bwd",
        lambda: torch.autograd.grad(hk.patch_mse_loss(pred, imgs, p, sel.ids_mask)[0], pred),
        lambda: torch.autograd.grad(reference.patch_mse_loss(pred, imgs, p, sel.ids_mask, True, 1e-6)[0], pred),
        nb_fb,
    )
    record(
        "patch_mse_loss fwd+bwd",
        "baseline eager (einsum+gather+norm+MSE)",
        bench(lambda: torch.autograd.grad(baselines.patch_mse_loss_eager(pred, imgs, p, sel.ids_mask)[0], pred)),
        nb_fb,
    )
    for name in timed:
        with hk.backend(name):
            record("patch_mse_loss fwd", name, bench(lambda: hk.patch_mse_loss(pred.detach(), imgs, p, sel.ids_mask)), nb_fwd)

    # --- selection
    nb_sel = 2 * N * L * 4 + N * (len_keep + M + L) * 8 + N * L
    variants(
        "select_patches",
        lambda: hk.select_patches(scores, noise, args.mask_ratio, args.hard_ratio),
        lambda: reference.select_patches(scores, noise, len_keep, num_hard),
        nb_sel,
    )
    rng = np.random.default_rng(0)
    record(
        "select_patches",
        "baseline per-sample loop + host sync",
        bench(lambda: baselines.select_per_sample_loop(scores, args.mask_ratio, args.hard_ratio, rng)),
        nb_sel,
    )

    # --- token gather (encoder input / decoder position embeddings)
    grad_tok = randn(N, len_keep, D)
    variants(
        "gather_tokens fwd+bwd",
        lambda: torch.autograd.grad(hk.gather_tokens(x, sel.ids_keep), x, grad_tok),
        lambda: torch.autograd.grad(reference.gather_tokens(x, sel.ids_keep), x, grad_tok),
        3 * N * len_keep * D * es + N * L * D * es + N * len_keep * 8,
    )

    # --- ranking loss (compute-bound: N*M*M pairs; bytes are O(N*M))
    nb_rank = N * M * (es + 4) + N * M * es
    variants(
        "pairwise_ranking_loss fwd+bwd",
        lambda: torch.autograd.grad(hk.pairwise_ranking_loss(s_pred, s_target), s_pred),
        lambda: torch.autograd.grad(reference.pairwise_ranking_loss(s_pred, s_target, 1e-6), s_pred),
        nb_rank,
    )
    record(
        "pairwise_ranking_loss fwd+bwd",
        "baseline eager N*M*M",
        bench(lambda: torch.autograd.grad(baselines.ranking_loss_eager(s_pred, s_target), s_pred)),
        nb_rank,
    )

    def ranking_on(name: str) -> Callable:
        return lambda: torch.autograd.grad(hk.pairwise_ranking_loss(s_pred, s_target, backend=name), s_pred)

    for name, fn in [
        *[(b, ranking_on(b)) for b in timed],
        ("baseline eager N*M*M", lambda: torch.autograd.grad(baselines.ranking_loss_eager(s_pred, s_target), s_pred)),
    ]:
        if SMOKE:
            fn()
            continue
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        record("pairwise_ranking_loss peak memory", name, float("nan"), 0, f"{peak:.1f} MiB above inputs")
    return [dict(r, copy_gbs=copy_gbs) for r in rows]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--patch", type=int, default=16)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--hard-ratio", type=float, default=0.5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--smoke", action="store_true", help="exercise the code on CPU (TRITON_INTERPRET=1); times mean nothing")
    args = ap.parse_args(argv)
    global SMOKE
    SMOKE = args.smoke
    if not SMOKE and not torch.cuda.is_available():
        sys.exit("gpu_ops.py needs a CUDA GPU (or --smoke)")
    meta = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        gpu="none (smoke run)" if SMOKE else torch.cuda.get_device_name(),
        torch=torch.__version__,
        triton=triton.__version__,
        python=platform.python_version(),
        command=" ".join(sys.argv),
        shape=f"N={args.n} img={args.img} p={args.patch} dim={args.dim} dtype={args.dtype}",
        cuda_backend=cuda_unavailable() or "timed",
    )
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print("\n" + "  ".join(f"{k}={v}" for k, v in meta.items()))
    print(f"device-to-device copy: {rows[0]['copy_gbs']:.0f} GB/s")
    if cuda_unavailable():
        print(f"cuda backend: not timed ({cuda_unavailable()})")
    print(f"{'op':34s} {'variant':40s} {'ms':>9s} {'GB/s':>7s} {'%copy':>6s} {'x vs triton':>11s}  note")
    triton_ms = {r["op"]: r["ms"] for r in rows if r["variant"] == "triton"}
    for r in rows:
        ratio = r["ms"] / triton_ms[r["op"]] if r["op"] in triton_ms else float("nan")
        print(f"{r['op']:34s} {r['variant']:40s} {r['ms']:9.4f} {r['gbs']:7.0f} {r['pct_copy']:6.1f} {ratio:11.2f}  {r['note']}")


if __name__ == "__main__":
    main()
