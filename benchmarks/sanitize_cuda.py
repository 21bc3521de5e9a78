"""One small call of every CUDA C++ kernel (torch.ops.hpm_C on CUDA tensors), forward and backward,
for compute-sanitizer (benchmarks/gpu_check.sh runs it under memcheck and racecheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_cuda.py

Covers every launch path of csrc/cuda: float32, bfloat16, float16 and the mixed pairs that run
natively (bf16/fp16 against float32), patches in registers and the long-row loop (P > 4096),
each gather vector width (16/8/4/2 bytes), select_patches at 1, 49 and 4096 patches per row
(1 and 8 per thread), ranking rows that span several blocks and tiles, empty inputs. The values
are also checked against the reference, so the run fails on a wrong result as well as on a
sanitizer report. Prints one line per group and "sanitize_cuda: ok" at the end.
"""

from __future__ import annotations

import sys

import torch

import hpm_kernels as hk
from hpm_kernels import reference

ops = torch.ops.hpm_C
DEV = torch.device("cuda")
FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    tol = 1e-2 if got.dtype in (torch.bfloat16, torch.float16) else 1e-5
    torch.testing.assert_close(got, want.to(got.dtype), atol=tol, rtol=tol, msg=lambda m: f"{what}: {m}")


def patches(g: torch.Generator) -> None:
    for dtype in FLOATS:
        imgs = torch.randn(2, 3, 12, 20, generator=g, device=DEV).to(dtype)  # p = 4: L = 15, P = 48
        ids = torch.randint(0, 15, (2, 7), generator=g, device=DEV)
        for i in [None, ids]:
            out = ops.patchify(imgs, 4, i)
            assert torch.equal(out, reference.patchify(imgs, 4, i)), f"patchify {dtype} ids={i is not None}"
            back = ops.patchify_backward(out, 4, 12, 20, i)
            close(back, reference.patchify_backward(out, 4, 12, 20, i), f"patchify_backward {dtype}")
        full = ops.patchify(imgs.to(memory_format=torch.channels_last), 4, None)
        assert torch.equal(ops.unpatchify(full, 4, 12, 20), imgs), f"unpatchify {dtype}"
    print("patchify / unpatchify / patchify_backward: ok")


def gather(g: torch.Generator) -> None:
    # fp32 D = 8: 16-byte rows; D = 2: 8 bytes; D = 1: 4 bytes; fp16 D = 3: 2 bytes.
    for dtype, D in [(torch.float32, 8), (torch.float32, 2), (torch.float32, 1), (torch.float16, 3), (torch.bfloat16, 64)]:
        for x_batch in [3, 1]:
            x = torch.randn(x_batch, 11, D, generator=g, device=DEV).to(dtype)
            ids = torch.randint(0, 11, (3, 13), generator=g, device=DEV)
            out = ops.gather_tokens(x, ids)
            assert torch.equal(out, reference.gather_tokens(x, ids)), f"gather_tokens {dtype} D={D}"
            back = ops.gather_tokens_backward(out, ids, 11, x_batch)
            close(back, reference.gather_tokens_backward(out, ids, 11, x_batch), f"gather_tokens_backward {dtype}")
    print("gather_tokens / gather_tokens_backward: ok")


def mse(g: torch.Generator) -> None:
    # (C, H, W, p): P = 48 (32 threads per row, 8 rows per block), 768 (ViT), 4800 (> 4096: loop).
    cases = [(3, 12, 20, 4), (3, 32, 48, 16), (3, 40, 80, 40)]
    pairs = [(d, d) for d in FLOATS] + [(torch.bfloat16, torch.float32), (torch.float16, torch.float32)]
    for C, H, W, p in cases:
        L, P = (H // p) * (W // p), p * p * C
        for pred_dtype, img_dtype in pairs:
            imgs = torch.randn(2, C, H, W, generator=g, device=DEV).to(img_dtype)
            ids = torch.randint(0, L, (2, 5), generator=g, device=DEV)
            pred = torch.randn(2, 5, P, generator=g, device=DEV).to(pred_dtype)
            for norm_pix in [True, False]:
                loss, per_patch = ops.patch_mse_loss(pred, imgs, p, ids, norm_pix, 1e-6)
                want_loss, want_pp = reference.patch_mse_loss(pred, imgs, p, ids, norm_pix, 1e-6)
                close(per_patch, want_pp, f"patch_mse_loss per_patch P={P}")
                close(loss, want_loss, f"patch_mse_loss loss P={P}")
                grad_loss = torch.ones((), device=DEV)
                grad_pp = torch.rand(2, 5, generator=g, device=DEV)
                d = ops.patch_mse_loss_backward(grad_loss, grad_pp, pred, imgs, p, ids, norm_pix, 1e-6)
                want = reference.patch_mse_loss_backward(grad_loss, grad_pp, pred, imgs, p, ids, norm_pix, 1e-6)
                close(d, want, f"patch_mse_loss_backward P={P}")
    empty = ops.patch_mse_loss(pred[:, :0], imgs, p, ids[:, :0], True, 1e-6)
    assert empty[0].item() == 0.0 and empty[1].shape == (2, 0)
    print("patch_mse_loss / patch_mse_loss_backward: ok")


def select(g: torch.Generator) -> None:
    for N, L, len_keep, num_hard in [(2, 1, 0, 1), (3, 49, 12, 18), (2, 4096, 1024, 1536)]:
        for s_dtype, n_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16)]:
            scores = torch.randn(N, L, generator=g, device=DEV).to(s_dtype)
            noise = torch.rand(N, L, generator=g, device=DEV).to(n_dtype)
            got = ops.select_patches(scores, noise, len_keep, num_hard)
            want = reference.select_patches(scores, noise, len_keep, num_hard)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), f"select_patches L={L}"
    print("select_patches: ok")


def ranking(g: torch.Generator) -> None:
    for N, M in [(2, 7), (2, 147), (1, 300)]:
        for p_dtype, t_dtype in [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16)]:
            pred = torch.randn(N, M, generator=g, device=DEV).to(p_dtype)
            target = torch.rand(N, M, generator=g, device=DEV).to(t_dtype)
            close(ops.pairwise_ranking_loss(pred, target, 1e-6), reference.pairwise_ranking_loss(pred, target, 1e-6), "ranking")
            grad = torch.full((), float(M), device=DEV)
            d = ops.pairwise_ranking_loss_backward(grad, pred, target, 1e-6)
            close(d, reference.pairwise_ranking_loss_backward(grad, pred, target, 1e-6), "ranking backward")
    print("pairwise_ranking_loss / pairwise_ranking_loss_backward: ok")


def main() -> int:
    if not torch.cuda.is_available():
        print("sanitize_cuda: needs a CUDA GPU", file=sys.stderr)
        return 2
    missing = hk.compiled.load_error("_C") or hk.compiled.load_error("_C_cuda")
    if missing:
        print(f"sanitize_cuda: {missing}", file=sys.stderr)
        return 2
    g = torch.Generator(device=DEV).manual_seed(0)
    for group in [patches, gather, mse, select, ranking]:
        group(g)
    torch.cuda.synchronize()
    print("sanitize_cuda: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
