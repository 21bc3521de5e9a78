"""MAE ViT with HPM's loss predictor, built on hpm_kernels' ops.

Shapes: images (N, C, H, W); patch size p; L = (H/p)*(W/p) patches of P = p*p*C values;
K visible and M = L - K masked patches per image. The encoder embeds only the visible patches:
``Linear(P, D)`` fed by ``patchify(imgs, p, ids_keep)``, so masked patches are never embedded.
Both decoders read ``[cls, visible tokens (raster order), mask tokens (raster order)]`` and share
``decoder_embed``, ``mask_token`` and the fixed 2-D sin-cos position embeddings (SPEC §1).
Blocks are timm's, so the encoder exports to timm's ``VisionTransformer`` unchanged.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .ops import Ops, Selection, make_ops


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    predictor: bool = True  # the loss-prediction decoder (HPM, lossonly); False for plain MAE
    # None: decoder_depth, the official shape. 0: no second decoder; the head reads the
    # reconstruction decoder's last hidden states (its own LayerNorm, then the head).
    predictor_depth: int | None = None
    predictor_head: str = "patch"  # "patch": a P-wide head then a mean (official); "scalar": 1-wide
    # Ablation: detach the predictor's input, so the loss-prediction objective trains the predictor
    # only and never reaches the encoder (nor the shared decoder embedding / reconstruction decoder).
    predictor_stop_grad: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        h, w = self.grid
        return h * w

    @property
    def patch_dim(self) -> int:
        return self.patch_size * self.patch_size * self.in_chans


PRESETS: dict[str, dict] = {
    # encoder (dim, depth, heads) / decoder (dim, depth, heads). base and large: MAE's and HPM's.
    "micro": dict(embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=4, decoder_num_heads=4),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_embed_dim=256, decoder_depth=4, decoder_num_heads=8),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16),
}


def model_config(preset: str, **overrides) -> ModelConfig:
    if preset not in PRESETS:
        raise ValueError(f"`preset` must be one of {sorted(PRESETS)}, got {preset!r}")
    cfg = ModelConfig(**{**PRESETS[preset], **overrides})
    H, W = cfg.img_size
    if H % cfg.patch_size or W % cfg.patch_size:
        raise ValueError(f"`patch_size` {cfg.patch_size} must divide the image size {cfg.img_size}")
    if cfg.predictor_depth is not None and cfg.predictor_depth < 0:
        raise ValueError(f"`predictor_depth` must be >= 0 (0: a head on the reconstruction decoder), got {cfg.predictor_depth}")
    if cfg.predictor_head not in ("patch", "scalar"):
        raise ValueError(f"`predictor_head` must be 'patch' or 'scalar', got {cfg.predictor_head!r}")
    return cfg


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos embedding, (1, [1 +] h*w, dim); rows then columns, raster order."""
    if dim % 4:
        raise ValueError(f"embedding dim must be divisible by 4 for 2-D sin-cos, got {dim}")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def embed_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([out.sin(), out.cos()], dim=1)

    gy, gx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    # MAE embeds the column coordinate in the first half and the row in the second.
    emb = torch.cat([embed_1d(gx), embed_1d(gy)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


def _blocks(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    return nn.ModuleList(
        Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth)
    )


class HPMViT(nn.Module):
    """Encoder + reconstruction decoder (+ loss-predictor decoder)."""

    def __init__(self, cfg: ModelConfig, ops: Ops | str = "fused"):
        super().__init__()
        self.cfg = cfg
        self.ops = make_ops(ops) if isinstance(ops, str) else ops
        D, Dd, P = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_dim
        # Encoder; names follow timm's VisionTransformer (see export.py).
        self.patch_embed = nn.Linear(P, D)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.register_buffer("pos_embed", sincos_pos_embed(D, cfg.grid, cls_token=True), persistent=False)
        self.blocks = _blocks(D, cfg.depth, cfg.num_heads, cfg.mlp_ratio)
        self.norm = nn.LayerNorm(D, eps=1e-6)
        # Shared decoder input.
        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, Dd))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(Dd, cfg.grid, cls_token=True), persistent=False)
        # Reconstruction decoder.
        self.decoder_blocks = _blocks(Dd, cfg.decoder_depth, cfg.decoder_num_heads, cfg.mlp_ratio)
        self.decoder_norm = nn.LayerNorm(Dd, eps=1e-6)
        self.decoder_pred = nn.Linear(Dd, P)
        # Loss predictor: same shape as the reconstruction decoder unless configured otherwise.
        if cfg.predictor:
            depth = self.predictor_depth
            self.predictor_blocks = _blocks(Dd, depth, cfg.decoder_num_heads, cfg.mlp_ratio)
            self.predictor_norm = nn.LayerNorm(Dd, eps=1e-6)
            self.predictor_head = nn.Linear(Dd, P if cfg.predictor_head == "patch" else 1)
        self._init_weights()

    @property
    def predictor_depth(self) -> int:
        """Blocks of the loss-prediction decoder; 0: the head shares the reconstruction decoder."""
        return self.cfg.decoder_depth if self.cfg.predictor_depth is None else self.cfg.predictor_depth

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """imgs (N, C, H, W), ids_keep (N, K) or None for every patch -> latent (N, 1 + K, D)."""
        p = self.cfg.patch_size
        x = self.patch_embed(self.ops.patchify(imgs, p, ids_keep))
        pos = self.pos_embed[:, 1:].to(x.dtype)
        x = x + (pos if ids_keep is None else self.ops.gather_tokens(pos, ids_keep))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1).to(x.dtype)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    # -- decoders --------------------------------------------------------------------------
    def decoder_input(self, latent: torch.Tensor, ids_keep: torch.Tensor | None, ids_mask: torch.Tensor | None) -> torch.Tensor:
        """[cls, visible (raster), mask tokens (raster)] + their position embeddings: (N, 1 + K + M, Dd)."""
        x = self.decoder_embed(latent)
        N = x.shape[0]
        pos = self.decoder_pos_embed.to(x.dtype)
        if ids_keep is None:  # the full image: every patch visible, in raster order
            return x + pos
        tokens = [x[:, :1] + pos[:, :1], x[:, 1:] + self.ops.gather_tokens(pos[:, 1:], ids_keep)]
        if ids_mask is not None and ids_mask.shape[1]:
            mask_tokens = self.mask_token.to(x.dtype).expand(N, ids_mask.shape[1], -1)
            tokens.append(mask_tokens + self.ops.gather_tokens(pos[:, 1:], ids_mask))
        return torch.cat(tokens, dim=1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder input (N, T, Dd) -> the reconstruction decoder's last hidden states (N, T, Dd)."""
        for blk in self.decoder_blocks:
            x = blk(x)
        return x

    def reconstruct(self, x: torch.Tensor, num_masked: int) -> torch.Tensor:
        """Decoder input (N, 1 + K + M, Dd) -> predicted pixels of the M masked patches (N, M, P)."""
        return self.pixels(self.decode(x), num_masked)

    def pixels(self, hidden: torch.Tensor, num_masked: int) -> torch.Tensor:
        """Reconstruction decoder states (N, 1 + K + M, Dd) -> pixels of the last M tokens (N, M, P)."""
        return self.decoder_pred(self.decoder_norm(hidden[:, hidden.shape[1] - num_masked :]))

    def predict_loss(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Predicted per-patch loss of the tokens from ``start`` on: (N, T). ``x`` is the decoder
        input, or with ``predictor_depth`` 0 the reconstruction decoder's hidden states."""
        for blk in self.predictor_blocks:
            x = blk(x)
        return self.predictor_head(self.predictor_norm(x[:, start:])).mean(-1)

    # -- the two passes of an HPM step -----------------------------------------------------
    def forward(self, imgs: torch.Tensor, sel: Selection) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Student: pixels (N, M, P) and, with a predictor, predicted losses (N, M) of the masked patches."""
        latent = self.encode(imgs, sel.ids_keep)
        x = self.decoder_input(latent, sel.ids_keep, sel.ids_mask)
        M = sel.ids_mask.shape[1]
        hidden = self.decode(x)
        pixels = self.pixels(hidden, M)
        scores = None
        if self.cfg.predictor:
            source = hidden if self.predictor_depth == 0 else x
            scores = self.predict_loss(source.detach() if self.cfg.predictor_stop_grad else source, x.shape[1] - M)
        return pixels, scores

    @torch.no_grad()
    def hardness(self, imgs: torch.Tensor) -> torch.Tensor:
        """Teacher: predicted loss of every patch of the full image (N, L), as the official code
        queries it (at visible positions; no mask token). Runs the encoder and the loss
        predictor only (with ``predictor_depth`` 0 the predictor is the reconstruction decoder)."""
        x = self.decoder_input(self.encode(imgs), None, None)
        return self.predict_loss(self.decode(x) if self.predictor_depth == 0 else x, 1)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay for norms, biases, tokens and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
