"""Time the C++ CPU backend ("cpu") against the reference backend and the eager baselines, on CPU.

    python benchmarks/cpu_ops.py [--n 256] [--repeats 7] [--threads 2]

ViT-B/16 at 224 px by default: imgs (256, 3, 224, 224), p = 16, L = 196, mask ratio 0.75, hard
ratio 0.5 (len_keep = 49, 147 masked, 73 of them hard), ranking loss over M = 147. Each op's
variants run interleaved (A B C A B C ...) after a warm-up call, timed with time.perf_counter
around whole calls (forward + backward where it says so), and the median is reported with the
min-max; "cpu x" is that variant's median over the cpu backend's. Method: benchmarks/README.md.
Not run by the tests (tests/test_cpu_backend.py only smoke-tests it with --smoke).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import baselines

import hpm_kernels as hk
from hpm_pretrain.machine import cpu_model

TARGETS = {  # the targets: cpu speed-up over a baseline
    ("select_patches", "per-sample loop"): 20.0,
    ("patch_mse_loss fwd+bwd", "eager"): 4.0,
    ("pairwise_ranking_loss fwd+bwd", "eager"): 5.0,
}


def interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Milliseconds per call of each variant, the variants alternating within each round."""
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor | None = None) -> Callable[[], None]:
    """A call of fn on a fresh leaf copy of x, then backward (through fn's output)."""

    def run() -> None:
        leaf = x.detach().requires_grad_()
        out = fn(leaf)
        out.backward(grad) if grad is not None else out.backward()
        leaf.grad = None

    return run


def cases(n: int, smoke: bool) -> list[tuple[str, dict[str, Callable[[], object]], str]]:
    gen = torch.Generator().manual_seed(0)
    img, p, dim = (16, 4, 8) if smoke else (224, 16, 768)
    L = (img // p) ** 2
    imgs = torch.randn(n, 3, img, img, generator=gen)
    scores = torch.randn(n, L, generator=gen)
    noise = torch.rand(n, L, generator=gen)
    sel = hk.select_patches(scores, noise, 0.75, 0.5, backend="reference")
    ids_keep, ids_mask = sel.ids_keep, sel.ids_mask
    K, P = ids_mask.shape[1], p * p * 3
    pred = torch.randn(n, K, P, generator=gen)
    s_pred, s_target = torch.randn(n, K, generator=gen), torch.rand(n, K, generator=gen)
    rng = np.random.default_rng(0)
    out = []

    out.append(
        (
            "select_patches",
            {
                "cpu": lambda: hk.select_patches(scores, noise, 0.75, 0.5, backend="cpu"),
                "reference": lambda: hk.select_patches(scores, noise, 0.75, 0.5, backend="reference"),
                "per-sample loop": lambda: baselines.select_per_sample_loop(scores, 0.75, 0.5, rng),
            },
            f"scores/noise ({n}, {L}), mask 0.75, hard 0.5",
        )
    )

    def mse(backend):
        return fwd_bwd(lambda x: hk.patch_mse_loss(x, imgs, p, ids_mask, True, backend=backend)[0], pred)

    out.append(
        (
            "patch_mse_loss fwd+bwd",
            {
                "cpu": mse("cpu"),
                "reference": mse("reference"),
                "eager": fwd_bwd(lambda x: baselines.patch_mse_loss_eager(x, imgs, p, ids_mask, True)[0], pred),
            },
            f"pred ({n}, {K}, {P}) float32, imgs ({n}, 3, {img}, {img}), norm_pix",
        )
    )

    def rank(backend):
        return fwd_bwd(lambda x: hk.pairwise_ranking_loss(x, s_target, backend=backend), s_pred)

    out.append(
        (
            "pairwise_ranking_loss fwd+bwd",
            {
                "cpu": rank("cpu"),
                "reference": rank("reference"),
                "eager": fwd_bwd(lambda x: baselines.ranking_loss_eager(x, s_target), s_pred),
            },
            f"pred/target ({n}, {K})",
        )
    )

    g_full = torch.randn(n, L, P, generator=gen)
    g_keep = torch.randn(n, ids_keep.shape[1], P, generator=gen)
    for label, ids, grad in [("patchify fwd+bwd (all patches)", None, g_full), ("patchify fwd+bwd (ids_keep)", ids_keep, g_keep)]:
        out.append(
            (
                label,
                {b: fwd_bwd(lambda x, b=b, ids=ids: hk.patchify(x, p, ids, backend=b), imgs, grad) for b in ["cpu", "reference"]},
                f"imgs ({n}, 3, {img}, {img}), ids {None if ids is None else tuple(ids.shape)}",
            )
        )
    out.append(
        (
            "unpatchify",
            {b: (lambda b=b: hk.unpatchify(g_full, p, img, img, backend=b)) for b in ["cpu", "reference"]},
            f"patches ({n}, {L}, {P})",
        )
    )
    pos = torch.randn(1, L, dim, generator=gen)
    tokens = torch.randn(n, L, dim, generator=gen)
    g_tok = torch.randn(n, K, dim, generator=gen)
    for label, x in [("gather_tokens fwd+bwd (x batch 1)", pos), ("gather_tokens fwd+bwd (x batch N)", tokens)]:
        out.append(
            (
                label,
                {b: fwd_bwd(lambda x, b=b: hk.gather_tokens(x, ids_mask, backend=b), x, g_tok) for b in ["cpu", "reference"]},
                f"x {tuple(x.shape)}, ids ({n}, {K})",
            )
        )
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="batch size N (default 256)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per op (default 7)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only the ops whose name has one")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 1 round: checks the code paths only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 1
    if not any(b.name == "cpu" and b.available for b in hk.available_backends()):
        sys.exit("the cpu backend is unavailable: " + next(str(b.reason) for b in hk.available_backends() if b.name == "cpu"))
    torch.set_num_threads(args.threads)
    command = "python " + " ".join(
        [sys.argv[0] if argv is None else "benchmarks/cpu_ops.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(f"# hpm_kernels cpu backend benchmark, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"# command: {command}")
    print(f"# machine: {cpu_model()}, torch.set_num_threads({args.threads}); torch {torch.__version__}")
    print(
        f"# N = {args.n}; medians over {args.repeats} interleaved rounds ({5 * args.repeats} for select_patches)"
        " after a warm-up, time.perf_counter"
    )
    rows = []
    t_start = time.perf_counter()
    only = [w for w in args.only.split(",") if w]
    for op, variants, shape in cases(args.n, args.smoke):
        if only and not any(w in op for w in only):
            continue
        # Cheap ops get more rounds (the spread of a ~ms call on a shared machine is wide).
        times = interleaved(variants, args.repeats if op != "select_patches" or args.smoke else 5 * args.repeats)
        cpu_ms = statistics.median(times["cpu"])
        for name, ts in times.items():
            med = statistics.median(ts)
            target = TARGETS.get((op, name))
            rows.append(
                {
                    "op": op,
                    "variant": name,
                    "median_ms": med,
                    "min_ms": min(ts),
                    "max_ms": max(ts),
                    "cpu_speedup": med / cpu_ms,
                    "target": target,
                    "shape": shape,
                }
            )
    print(f"# total {time.perf_counter() - t_start:.0f} s\n")
    print(f"| {'op':<34} | {'variant':<16} | {'median ms':>10} | {'min-max ms':>17} | {'cpu x':>7} | target |")
    print(f"|{'-' * 36}|{'-' * 18}|{'-' * 12}:|{'-' * 19}:|{'-' * 9}:|--------|")
    for r in rows:
        target = "" if r["target"] is None else f">= {r['target']:g}x" + (" ok" if r["cpu_speedup"] >= r["target"] else " MISSED")
        spread = f"{r['min_ms']:.2f}-{r['max_ms']:.2f}"
        print(
            f"| {r['op']:<34} | {r['variant']:<16} | {r['median_ms']:>10.2f} | {spread:>17} | {r['cpu_speedup']:>6.2f}x | {target} |"
        )
    print("\nshapes: " + "; ".join(sorted({f"{r['op']}: {r['shape']}" for r in rows})))
    print("cpu x = the variant's median / the cpu backend's median (above 1: the cpu backend is faster)")
    return rows


if __name__ == "__main__":
    main()
