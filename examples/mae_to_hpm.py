"""From MAE code you already have to fused MAE, then to HPM, with hpm_kernels.

    python examples/mae_to_hpm.py                    # ViT-Tiny-like at 64 px, batch 32, CPU or GPU
    python examples/mae_to_hpm.py --steps 3 --img-size 16 --batch 4 --dim 32   # a smoke run

1. ``MAE`` below is written to the reference ``MaskedAutoencoderViT`` interface (patchify,
   random_masking, forward_encoder, forward_decoder, forward_loss), as most MAE code bases are.
   It trains a few steps as is.
2. ``patch_mae(model)``: one line; the same model now embeds only its visible patches and computes
   its loss with the fused ops (same masks, loss and gradients, to float rounding).
3. HPM on top, without touching the model's code: a loss-prediction head on the decoder's last
   hidden states, an EMA teacher, ``HardPatchSelector`` for the masks (``use_selection`` makes the
   model use them), ``PatchMSELoss`` for the per-patch losses and ``PairwiseRankingLoss`` for the
   ranking objective.

Prints the median step time of each phase. The images are random: this shows the API and the
speed of a step, not what HPM learns (for that, see docs/QUALITY.md).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn

import hpm_kernels as hk
from hpm_kernels.integrations import full_selection, patch_mae, use_selection


# -- 1. an MAE in the reference style ---------------------------------------------------------
class MAE(nn.Module):
    def __init__(self, img_size=64, patch_size=8, in_chans=3, dim=192, depth=6, heads=3, dec_dim=128, dec_depth=2):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, dim)
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim).normal_(std=0.02))
        self.pos_embed = nn.Parameter(torch.zeros(1, L + 1, dim).normal_(std=0.02), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.decoder_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim).normal_(std=0.02))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, L + 1, dec_dim).normal_(std=0.02), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dec_dim, 4, qkv_bias=True) for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch_size**2 * in_chans)
        self.norm_pix_loss = True

    def patchify(self, imgs):
        p, (N, C, H, W) = self.patch_embed.patch_size[0], imgs.shape
        x = imgs.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(N, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x):
        p, h = self.patch_embed.patch_size[0], int(x.shape[1] ** 0.5)
        C = x.shape[2] // (p * p)
        return x.reshape(-1, h, h, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(-1, C, h * p, h * p)

    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape
        keep = int(L * (1 - mask_ratio))
        ids_shuffle = torch.argsort(torch.rand(N, L, device=x.device), dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :keep] = 0
        return x, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, imgs, mask_ratio):
        x, mask, ids_restore = self.random_masking(self.patch_embed(imgs) + self.pos_embed[:, 1:], mask_ratio)
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)], 1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(-1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs, mask_ratio=0.75):
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


# -- 3. the HPM parts: a loss predictor on the decoder's hidden states, read by a hook -----------
class LossHead(nn.Module):
    """Predicted loss per patch (N, L) from the reconstruction decoder's normalised hidden states."""

    def __init__(self, model: MAE):
        super().__init__()
        self.proj = nn.Linear(model.decoder_norm.normalized_shape[0], 1)
        self.hidden = None
        model.decoder_norm.register_forward_hook(lambda mod, args, out: setattr(self, "hidden", out))

    def scores(self) -> torch.Tensor:
        return self.proj(self.hidden[:, 1:]).squeeze(-1)


def timed(step, steps: int, sync) -> float:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:] or times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dim", type=int, default=192, help="encoder width (decoder: 2/3 of it)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch.manual_seed(0)
    dim, dec = args.dim, max(16, (args.dim * 2 // 3) // 16 * 16)
    model = MAE(args.img_size, args.patch_size, 3, dim, 6 if dim >= 96 else 1, 3 if dim % 3 == 0 else 2, dec, 2).to(device)
    imgs = torch.randn(args.batch, 3, args.img_size, args.img_size, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1.5e-4, betas=(0.9, 0.95))

    def mae_step():
        loss, _, _ = model(imgs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {"mae, unpatched": timed(mae_step, args.steps, sync)}
    patch_mae(model)  # 2. the one line
    times["mae, patch_mae"] = timed(mae_step, args.steps, sync)

    # 3. HPM: a loss head, an EMA teacher, the selector and the two losses
    head = LossHead(model).to(device)
    teacher, teacher_head = copy.deepcopy(model).requires_grad_(False), copy.deepcopy(head).requires_grad_(False)
    teacher.decoder_norm._forward_hooks.clear()
    teacher.decoder_norm.register_forward_hook(lambda mod, a, out: setattr(teacher_head, "hidden", out))
    selector, mse, ranking = hk.nn.HardPatchSelector(0.75), hk.nn.PatchMSELoss(args.patch_size), hk.nn.PairwiseRankingLoss()
    opt = torch.optim.AdamW([*model.parameters(), *head.parameters()], lr=1.5e-4, betas=(0.9, 0.95))
    p, N, L = args.patch_size, args.batch, model.patch_embed.num_patches
    everything = full_selection(N, L, device)

    def hpm_step(epoch=3, epochs=4):
        with torch.no_grad(), use_selection(teacher, everything):  # the teacher scores every patch
            latent, _, ids_restore = teacher.forward_encoder(imgs, 0.75)
            teacher.forward_decoder(latent, ids_restore)
        sel = selector(teacher_head.scores(), hard_ratio=selector.hard_ratio(epoch, epochs))
        with use_selection(model, sel):  # the model's own forward, with HPM's masks
            loss_rec, pred, _ = model(imgs)
        _, per_patch = mse(hk.gather_tokens(pred, sel.ids_mask), imgs, sel.ids_mask)
        loss = loss_rec + ranking(hk.gather_tokens(head.scores()[..., None], sel.ids_mask)[..., 0], per_patch.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # EMA teacher (decay 0.999, the official start)
            for t, s in zip([*teacher.parameters(), *teacher_head.parameters()], [*model.parameters(), *head.parameters()]):
                t.lerp_(s, 1 - 0.999)

    times["hpm, patch_mae + hpm_kernels.nn"] = timed(hpm_step, args.steps, sync)
    base = times["mae, unpatched"]
    print(
        f"device {device}, batch {N}, {args.img_size} px, patch {p} (L = {L}), encoder {dim} wide; median of {args.steps} steps"
    )
    for name, t in times.items():
        print(f"  {name:34s} {1000 * t:8.1f} ms/step   ({base / t:.2f}x the unpatched MAE step)")
    return times


if __name__ == "__main__":
    main()
