"""Small models written to the MAE and the official-HPM method contracts, in plain PyTorch, for
``patch_mae`` tests and the example. Each method does what the reference one is documented to do:

* ``TinyMAE``: MAE's ``MaskedAutoencoderViT`` interface. ``random_masking`` shuffles by
  ``torch.rand`` noise, keeps the lowest-noise ``int(L (1 - r))`` tokens in noise order and
  returns a float mask (1 = masked) and ``ids_restore``; ``forward_decoder`` unshuffles with it and
  predicts every patch; ``forward_loss`` averages the per-patch MSE over the masked patches,
  with ``norm_pix_loss`` normalising each target patch by its mean and unbiased variance.
* ``TinyHPM``: the official HPM interface: boolean masks (True = masked) consumed by boolean
  indexing, visible then mask tokens in raster order, a second (loss-prediction) decoder,
  ``forward_loss`` -> ``{"mean", "matrix"}``, ``generate_mask`` looping over images, and the N x M
  x M pairwise ``forward_learning_loss``.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn


def _blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
    return nn.ModuleList(Block(dim, heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth))


class _TinyBase(nn.Module):
    """What both interfaces share: the layers, ``patchify`` / ``unpatchify`` (MAE's (i, j, c) order)."""

    def __init__(self, img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=16,
                 decoder_depth=1, decoder_num_heads=2, norm_pix_loss=False):  # fmt: skip
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        L = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, L + 1, embed_dim) * 0.1, requires_grad=False)
        self.blocks = _blocks(embed_dim, depth, num_heads)
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, decoder_embed_dim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(torch.randn(1, L + 1, decoder_embed_dim) * 0.1, requires_grad=False)
        self.decoder_blocks = _blocks(decoder_embed_dim, decoder_depth, decoder_num_heads)
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        self.norm_pix_loss = norm_pix_loss

    def patchify(self, imgs):
        p = self.patch_embed.patch_size[0]
        N, C, H, W = imgs.shape
        x = imgs.reshape(N, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # n h w i j c
        return x.reshape(N, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x):
        p = self.patch_embed.patch_size[0]
        h = w = int(x.shape[1] ** 0.5)
        C = x.shape[2] // (p * p)
        x = x.reshape(x.shape[0], h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], C, h * p, w * p)


class TinyMAE(_TinyBase):
    def random_masking(self, x, mask_ratio):
        N, L, D = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(N, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
        mask = torch.ones(N, L, device=x.device)
        mask[:, :len_keep] = 0
        return x_masked, torch.gather(mask, 1, ids_restore), ids_restore

    def forward_encoder(self, x, mask_ratio):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        x, mask, ids_restore = self.random_masking(x, mask_ratio)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x, ids_restore):
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.expand(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], -1)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
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


class TinyHPM(_TinyBase):
    def __init__(self, *args, vis_mask_ratio=0.0, **kwargs):
        super().__init__(*args, **kwargs)
        D, P = self.decoder_embed.out_features, self.decoder_pred.out_features
        self.decoder_blocks_losspred = _blocks(D, len(self.decoder_blocks), self.decoder_blocks[0].attn.num_heads)
        self.decoder_norm_losspred = nn.LayerNorm(D)
        self.decoder_pred_losspred = nn.Linear(D, P)
        self.vis_mask_ratio = vis_mask_ratio

    def forward_encoder(self, x, mask):
        x = self.patch_embed(x) + self.pos_embed[:, 1:]
        N, _, D = x.shape
        x = x[~mask].reshape(N, -1, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(N, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_decoder(self, x, mask):
        x = self.decoder_embed(x)
        x_vis = x[:, 1:]
        N, _, D = x_vis.shape
        pos = self.decoder_pos_embed[:, 1:].expand(N, -1, -1)
        pos_vis, pos_mask = pos[~mask].reshape(N, -1, D), pos[mask].reshape(N, -1, D)
        x = torch.cat([x[:, :1] + self.decoder_pos_embed[:, :1], x_vis + pos_vis, self.mask_token + pos_mask], dim=1)
        loss_pred = x.clone()
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        for blk in self.decoder_blocks_losspred:
            loss_pred = blk(loss_pred)
        loss_pred = self.decoder_pred_losspred(self.decoder_norm_losspred(loss_pred))[:, 1:]
        return x, pos_mask.shape[1], loss_pred.mean(dim=-1)

    def forward_loss(self, imgs, pred, mask):
        target = self.patchify(imgs)
        N, _, P = target.shape
        target = target[mask].reshape(N, -1, P)
        if self.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        loss = (pred - target) ** 2
        return {"mean": loss.mean(), "matrix": loss.mean(-1)}

    def forward(self, imgs, mask):
        latent = self.forward_encoder(imgs, mask)
        pred, mask_num, loss_pred = self.forward_decoder(latent, mask)
        return {"pix_pred": pred, "mask": mask, "mask_num": mask_num, "features": latent, "loss_pred": loss_pred}

    @torch.no_grad()
    def generate_mask(self, loss_pred, mask_ratio=0.75, images=None, guide=True, epoch=0, total_epoch=200):
        N, L = loss_pred.shape
        len_keep = int(L * (1 - mask_ratio))
        ratio = 0.5 * (epoch + 1) / total_epoch if guide else 0.5
        num_hard = int((L - len_keep) * ratio)
        if num_hard <= 0:
            ids_shuffle = torch.argsort(torch.randn(N, L, device=loss_pred.device), dim=1)
        else:
            order = torch.argsort(loss_pred, dim=1)
            ids_shuffle = torch.zeros(N, L, dtype=torch.int64, device=loss_pred.device)
            for i in range(N):  # the official per-image loop, host round trip included
                hard = order[i, -num_hard:]
                rest = np.delete(np.arange(L), hard.cpu().numpy())
                np.random.shuffle(rest)
                ids_shuffle[i, -num_hard:] = hard
                ids_shuffle[i, : L - num_hard] = torch.from_numpy(rest).to(loss_pred.device)
        mask = torch.ones(N, L, device=loss_pred.device)
        mask[:, :len_keep] = 0
        return torch.gather(mask, 1, torch.argsort(ids_shuffle, dim=1))

    def forward_learning_loss(self, loss_pred, mask, loss_target, relative=False):
        if relative:
            pos = loss_target.unsqueeze(1) > loss_target.unsqueeze(2)
            neg = loss_target.unsqueeze(1) < loss_target.unsqueeze(2)
            d = loss_pred.unsqueeze(1) - loss_pred.unsqueeze(2)
            loss = -pos.int() * torch.log(torch.sigmoid(d) + 1e-6) - neg.int() * torch.log(1 - torch.sigmoid(d) + 1e-6)
            return loss.sum() / (pos | neg).sum()
        target = (loss_target - loss_target.mean(1, keepdim=True)) / (loss_target.var(1, keepdim=True) + 1e-6) ** 0.5
        return ((loss_pred - target) ** 2).mean()


def hpm_step(model: TinyHPM, teacher: TinyHPM, imgs, epoch=3, total_epoch=4, relative=True):
    """The official engine's step (teacher scores -> mask -> student -> both losses); returns the total loss."""
    with torch.no_grad():
        visible = torch.zeros(imgs.shape[0], model.patch_embed.num_patches, dtype=torch.bool)
        scores = teacher(imgs, visible)["loss_pred"]
    mask = teacher.generate_mask(scores, 0.75, guide=True, epoch=epoch, total_epoch=total_epoch).to(torch.bool)
    outs = model(imgs, mask)
    losses = model.forward_loss(imgs, outs["pix_pred"][:, -outs["mask_num"] :], outs["mask"])
    learn = model.forward_learning_loss(outs["loss_pred"][:, -outs["mask_num"] :], mask, losses["matrix"].detach(), relative)
    return losses["mean"] + learn, mask
