"""Compile every Triton kernel for an H100 (sm_90) without a GPU, through the real launchers.

Run as a script with TRITON_INTERPRET unset (tests/test_triton_compiles_for_gpu.py does):
each launch ``kernel[grid](...)`` is intercepted, its signature read off the actual arguments
(tensor dtypes, integer 1s specialised as constants as Triton does on a GPU, constexprs) and
compiled with ``triton.compile`` for the target instead of being run. This catches code that
the interpreter accepts but the GPU compiler rejects. Prints one line per compiled variant and
a final ``compiled N variants of K kernels``.
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTR = {
    torch.float32: "*fp32",
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.uint8: "*u8",
    torch.int8: "*i8",
    torch.bool: "*i1",
}
compiled: dict[str, set] = {}


def _compile(self: JITFunction, *args, grid, warmup, **kwargs):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip(self.arg_names, args)) | kwargs
    signature, constexprs = {}, {}
    for i, name in enumerate(self.arg_names):
        v = values[name]
        if self.params[i].is_constexpr:
            signature[name], constexprs[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name] = PTR[v.dtype]
        elif isinstance(v, bool) or (isinstance(v, int) and v == 1):
            signature[name], constexprs[name] = "constexpr", v  # Triton specialises 1 (and bools)
        elif isinstance(v, int):
            signature[name] = "i32" if -(2**31) <= v < 2**31 else "i64"
        elif isinstance(v, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"{self.__name__}: cannot type argument {name}={v!r}")
    key = (tuple(sorted(signature.items())), tuple(sorted(constexprs.items())), tuple(sorted(options.items())))
    seen = compiled.setdefault(self.__name__, set())
    if key in seen:
        return None
    triton.compile(ASTSource(self, signature, constexprs), target=TARGET, options=options)
    seen.add(key)
    print(f"ok {self.__name__} {options} {constexprs}", flush=True)
    return None


JITFunction.run = _compile

from hpm_kernels.triton_kernels import (  # noqa: E402
    gather_tokens,
    patch_mse_loss,
    patchify,
    ranking_loss,
    resized_crop,
    select_patches,
)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        # ViT-B/16 shapes (P = 768), a grey p = 4 shape, and an image-side dtype that differs.
        for N, C, S, p in ((2, 3, 224, 16), (3, 1, 32, 4)):
            L, P = (S // p) ** 2, p * p * C
            imgs = torch.randn(N, C, S, S, generator=g).to(dt)
            ids = torch.randint(0, L, (N, L // 2), generator=g)
            out = patchify.patchify(imgs, p, ids)
            patchify.patchify(imgs, p, None)
            patchify.unpatchify(patchify.patchify(imgs, p, None), p, S, S)
            patchify.patchify_backward(out, p, S, S, ids)
            x = torch.randn(1, L, 64, generator=g).to(dt)
            gather_tokens.gather_tokens(x, ids)
            gather_tokens.gather_tokens_backward(torch.randn(N, L // 2, 64).to(dt), ids, L, 1)
            for norm in (True, False):
                pred = torch.randn(N, L // 2, P, generator=g).to(dt)
                loss, pp = patch_mse_loss.patch_mse_loss(pred, imgs.float(), p, ids, norm, 1e-6)
                patch_mse_loss.patch_mse_loss_backward(loss, pp, pred, imgs, p, ids, norm, 1e-6)
            scores = torch.randn(N, L, generator=g).to(dt)
            select_patches.select_patches(scores, torch.rand(N, L, generator=g), L // 4, L // 4)
            s = torch.randn(N, L // 2, generator=g).to(dt)
            t = torch.rand(N, L // 2, generator=g)
            ranking_loss.pairwise_ranking_loss(s, t, 1e-6)
            ranking_loss.pairwise_ranking_loss_backward(torch.ones(()), s, t, 1e-6)
    # The chunked patch_mse_loss path (P > one block), and select_patches' widest row.
    big = torch.randn(1, 3, 80, 80, generator=g)
    ids = torch.randint(0, 4, (1, 2), generator=g)
    pred = torch.randn(1, 2, 4800, generator=g)
    loss, pp = patch_mse_loss.patch_mse_loss(pred, big, 40, ids, True, 1e-6)
    patch_mse_loss.patch_mse_loss_backward(loss, pp, pred, big, 40, ids, True, 1e-6)
    select_patches.select_patches(torch.randn(1, 4096), torch.rand(1, 4096), 1024, 1536)
    # resized_crop: uint8 and float images, bicubic and bilinear, grey and RGB, a sliced image batch.
    for dt in (torch.uint8, torch.float32, torch.float16, torch.bfloat16):
        for C in (1, 3):
            imgs = (torch.rand(8, C, 28, 30, generator=g) * 255).to(dt)[:, :, :, 1:]
            index = torch.randint(0, 8, (4,), generator=g)
            boxes = torch.tensor([[0, 0, 28, 29], [3, 2, 10, 12], [0, 5, 1, 1], [7, 0, 20, 29]])
            flip = torch.tensor([True, False, True, False])
            for bicubic in (True, False):
                resized_crop.resized_crop(imgs, index, boxes, flip, 32, 32, [0.5] * C, [0.25] * C, bicubic)
    total = sum(len(v) for v in compiled.values())
    print(f"compiled {total} variants of {len(compiled)} kernels: {sorted(compiled)}")


if __name__ == "__main__":
    sys.exit(main())
