"""Write a PNG grid: input, chosen mask, reconstruction, predicted hardness and actual loss per image.

One row per image, six columns:

1. **input** - the image (eval transform: cover-resize + centre crop), un-normalised to [0, 1];
2. **mask** - HPM's selection at the run's final hard ratio (``hard_ratio_max`` for ``hpm``, 0 for
   ``mae`` / ``lossonly`` unless ``--hard-ratio``): the patches chosen as *hard* (highest teacher
   scores) tinted red, the randomly masked ones greyed, the visible ones untouched;
3. **reconstruction** - visible patches from the input, masked patches from the student's decoder
   (with ``norm_pix`` runs, each predicted patch is un-normalised with its target patch's mean and
   variance, as MAE's visualisation does);
4. **teacher hardness** - the EMA teacher's predicted per-patch loss on the full image, what HPM
   selects by (``hpm`` only; blank otherwise), colour-mapped per image (viridis-like: dark = easy,
   yellow = hard);
5. **student hardness** - the same query to the student's own loss predictor (``hpm`` and
   ``lossonly``; blank for ``mae``). After a short run the teacher, an EMA with decay 0.999 or
   more per step, is still mostly its random initialisation, while the student's predictor has
   learnt: this column shows what the teacher will come to predict;
6. **loss** - the student's actual per-patch reconstruction loss (``patch_mse_loss``) at the masked
   patches, same colour map per image; visible patches (no loss) are flat dark grey.

The summary gives, for each hardness column, its Spearman correlation with the actual loss over
the pictured masked patches (``spearman_teacher``, ``spearman_student``; ``spearman`` is the
selecting scorer's: the teacher's, else the student's). ``hardness_spearman`` measures the same on
any batch (the demo: 256 held-out images), with the position-only baseline (``position_prior``).

Small images are upscaled (nearest) so each tile is at least ~112 pixels on its short side.
Drawn with PIL only. Prints the PNG path.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import hpm_kernels as hk

from . import schedule
from .data import build_dataset, normalisation
from .export import Run, add_checkpoint_arguments, checkpoint_path, load_run
from .train import spearman

log = logging.getLogger("hpm_pretrain.visualize")

COLUMNS = ("input", "mask", "reconstruction", "teacher hardness", "student hardness", "loss (actual)")
PAD = 4  # pixels between tiles and around the grid
HEADER = 16  # height of the column-title strip
MIN_TILE = 112  # upscale tiles so their short side is at least this
BACKGROUND = (255, 255, 255)
BLANK = (40, 40, 40)  # patches with no value (visible patches in the loss map)
HARD_TINT, RANDOM_TINT = np.array([1.0, 0.1, 0.1]), np.array([0.5, 0.5, 0.5])

# viridis at 9 evenly spaced points
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float64,
)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape) -> RGB uint8 (..., 3), viridis-like (linear between 9 anchors)."""
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64)), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(x).astype(int).clip(0, len(_VIRIDIS) - 2)
    t = (x - lo)[..., None]
    return np.rint(_VIRIDIS[lo] * (1 - t) + _VIRIDIS[lo + 1] * t).astype(np.uint8)


def tile_scale(img_size: tuple[int, int]) -> int:
    return max(1, math.ceil(MIN_TILE / min(img_size)))


def grid_size(num_images: int, img_size: tuple[int, int], scale: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of the PNG for ``num_images`` rows of ``img_size`` (H, W) tiles."""
    s = scale or tile_scale(img_size)
    h, w = img_size[0] * s, img_size[1] * s
    return len(COLUMNS) * w + (len(COLUMNS) + 1) * PAD, HEADER + num_images * h + (num_images + 1) * PAD


def _to_rgb01(imgs: torch.Tensor, mean, std) -> np.ndarray:
    """Normalised (N, C, H, W) -> (N, H, W, 3) float in [0, 1]."""
    m = torch.tensor(mean, dtype=imgs.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=imgs.dtype).view(1, -1, 1, 1)
    x = (imgs * s + m).clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.permute(0, 2, 3, 1).numpy()


def _patch_map(values: np.ndarray, grid: tuple[int, int], p: int) -> np.ndarray:
    """(N, L) per-patch values -> (N, H, W) by nearest upsampling."""
    h, w = grid
    return values.reshape(-1, h, w).repeat(p, axis=1).repeat(p, axis=2)


def _normalise_rows(values: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Per-image min-max scaling to [0, 1] over the ``valid`` entries."""
    out = np.zeros_like(values, dtype=np.float64)
    for n in range(values.shape[0]):
        v = values[n] if valid is None else values[n][valid[n]]
        if v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        out[n] = (values[n] - lo) / (hi - lo) if hi > lo else 0.5
    return out


def denormalise_patches(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Predictions of norm_pix targets -> pixels: ``pred * sqrt(var + eps) + mean`` with each target
    patch's mean and unbiased variance (the inverse of patch_mse_loss's target normalisation)."""
    return pred * (target.var(dim=-1, keepdim=True) + eps).sqrt() + target.mean(dim=-1, keepdim=True)


@torch.no_grad()
def _hardness_maps(run: Run, imgs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Full-image predicted hardness (N, L) of the teacher and of the student's predictor, where present."""
    maps = {}
    if run.teacher is not None:
        maps["teacher"] = run.teacher.hardness(imgs).float()
    if run.model.cfg.predictor:
        maps["student"] = run.model.hardness(imgs).float()
    return maps


@torch.no_grad()
def hardness_spearman(run: Run, imgs: torch.Tensor, noise: torch.Tensor) -> dict[str, float]:
    """Spearman correlation with the student's actual per-patch loss at the patches masked by
    ``noise`` (random masking), over the batch, of: each full-image hardness map (``teacher``,
    ``student``), the student's predictor queried as it is trained (``masked``: mask tokens at the
    masked positions; models with a predictor) and the position-only prior (``position``)."""
    device = next(run.model.parameters()).device
    imgs, noise = imgs.to(device), noise.to(device)
    model, cfg = run.model, run.cfg
    sel = model.ops.select_patches(noise, noise, cfg.mask_ratio, 0.0)
    pixels, masked_scores = model(imgs, sel)
    _, per_patch = model.ops.patch_mse_loss(pixels, imgs, model.cfg.patch_size, sel.ids_mask, cfg.norm_pix)
    rho = {who: spearman(scores.gather(1, sel.ids_mask), per_patch) for who, scores in _hardness_maps(run, imgs).items()}
    rho["position"] = spearman(position_prior(per_patch.float(), sel.ids_mask, model.cfg.num_patches), per_patch)
    if masked_scores is not None:
        rho["masked"] = spearman(masked_scores, per_patch)
    return rho


def position_prior(per_patch: torch.Tensor, ids_mask: torch.Tensor, num_patches: int) -> torch.Tensor:
    """The baseline a hardness predictor must beat: for each image's masked patches (N, M), the mean
    loss at the same patch position over the *other* images where it was masked (leave-one-out;
    0 where no other image masked it). Loss at cell edges and corners is high on average, so a
    predictor can rank well by position alone."""
    N = per_patch.shape[0]
    sums = torch.zeros(N, num_patches, dtype=per_patch.dtype, device=per_patch.device).scatter_(1, ids_mask, per_patch)
    counts = torch.zeros_like(sums).scatter_(1, ids_mask, 1.0)
    others_sum = (sums.sum(0, keepdim=True) - sums).gather(1, ids_mask)
    others_count = (counts.sum(0, keepdim=True) - counts).gather(1, ids_mask)
    return torch.where(others_count > 0, others_sum / others_count.clamp_min(1), torch.zeros_like(others_sum))


def render(run: Run, imgs: torch.Tensor, noise: torch.Tensor, hard_ratio: float) -> tuple[list[np.ndarray], dict]:
    """The six panels for a batch of normalised images: a list of (N, H, W, 3) uint8 arrays, and
    a summary (selection counts, Spearman between each predicted hardness and the actual loss)."""
    model, cfg = run.model, run.cfg
    mc = model.cfg
    p, grid, (H, W) = mc.patch_size, mc.grid, mc.img_size
    device = next(model.parameters()).device
    imgs, noise = imgs.to(device), noise.to(device)
    N, L = imgs.shape[0], mc.num_patches
    maps = _hardness_maps(run, imgs)
    scores_from = "teacher" if "teacher" in maps else ("student predictor" if "student" in maps else None)
    scores = maps.get("teacher", maps.get("student"))
    _, num_hard = hk.mask_counts(L, cfg.mask_ratio, hard_ratio)
    if scores is None:
        num_hard = 0
    sel = model.ops.select_patches(scores if num_hard > 0 else noise, noise, cfg.mask_ratio, hard_ratio if num_hard else 0.0)
    pixels, _ = model(imgs, sel)
    _, per_patch = model.ops.patch_mse_loss(pixels, imgs, p, sel.ids_mask, cfg.norm_pix)

    # reconstruction: visible patches from the input, predicted ones at the masked positions
    target = hk.patchify(imgs.float(), p)  # (N, L, P)
    index = sel.ids_mask.unsqueeze(-1).expand(-1, -1, target.shape[-1])
    pred = pixels.float()
    if cfg.norm_pix:
        pred = denormalise_patches(pred, target.gather(1, index))
    patches = target.scatter(1, index, pred)
    recon = hk.unpatchify(patches, p, H, W)

    mean, std = normalisation(run.data_config())
    inp = _to_rgb01(imgs.float().cpu(), mean, std)
    rec = _to_rgb01(recon.cpu(), mean, std)

    masked = sel.mask.cpu().numpy()  # (N, L) True = masked
    hard = np.zeros((N, L), dtype=bool)
    if num_hard > 0:
        top = torch.sort(torch.nan_to_num(scores, nan=-math.inf), dim=1, descending=True, stable=True).indices[:, :num_hard]
        hard[np.arange(N)[:, None], top.cpu().numpy()] = True
    hard_px = _patch_map(hard, grid, p)[..., None]
    rand_px = _patch_map(masked & ~hard, grid, p)[..., None]
    over = np.where(hard_px, 0.45 * inp + 0.55 * HARD_TINT, inp)
    over = np.where(rand_px, 0.25 * inp + 0.75 * RANDOM_TINT, over)

    def hardness_panel(who: str) -> np.ndarray:
        if who not in maps:
            return np.full((N, H, W, 3), BLANK, dtype=np.uint8)
        return colormap(_patch_map(_normalise_rows(maps[who].cpu().double().numpy()), grid, p))

    loss = np.zeros((N, L))
    loss[np.arange(N)[:, None], sel.ids_mask.cpu().numpy()] = per_patch.float().cpu().numpy()
    loss_rgb = colormap(_patch_map(_normalise_rows(loss, masked), grid, p))
    loss_rgb = np.where(_patch_map(masked, grid, p)[..., None], loss_rgb, np.array(BLANK, dtype=np.uint8))

    def u8(x):
        return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)

    rho = {who: spearman(m.gather(1, sel.ids_mask), per_patch) for who, m in maps.items()}
    summary = dict(
        images=N,
        hard_ratio=hard_ratio if num_hard else 0.0,
        num_masked=int(sel.ids_mask.shape[1]),
        num_hard=int(num_hard),
        scores_from=scores_from,
        spearman=rho.get("teacher", rho.get("student")),
        spearman_teacher=rho.get("teacher"),
        spearman_student=rho.get("student"),
        mean_loss=float(per_patch.float().mean()),
    )
    return [u8(inp), u8(over), u8(rec), hardness_panel("teacher"), hardness_panel("student"), loss_rgb], summary


def compose(panels: list[np.ndarray], scale: int) -> Image.Image:
    """Lay panels (each (N, H, W, 3) uint8) out as a grid with column titles."""
    N, H, W, _ = panels[0].shape
    h, w = H * scale, W * scale
    width, height = grid_size(N, (H, W), scale)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(COLUMNS):
        x0 = PAD + c * (w + PAD)
        draw.text((x0 + 1, 2), title, fill=(0, 0, 0))
        for n in range(N):
            tile = panels[c][n].repeat(scale, axis=0).repeat(scale, axis=1)
            canvas.paste(Image.fromarray(tile), (x0, HEADER + PAD + n * (h + PAD)))
    return canvas


def pick_images(dataset, num_images: int, seed: int) -> torch.Tensor:
    """Up to ``num_images`` readable images of ``dataset``, chosen at random with ``seed``."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = []
    for i in order:
        item = dataset[i]
        if item is not None:
            chosen.append((i, item[0]))
        if len(chosen) == num_images:
            break
    if not chosen:
        raise ValueError("no readable image to visualise")
    chosen.sort(key=lambda t: t[0])
    return torch.stack([x for _, x in chosen])


def visualize(
    checkpoint: str | Path,
    out: str | Path | None = None,
    num_images: int = 8,
    seed: int = 0,
    data: str | None = None,
    data_path: str | None = None,
    limit: int | None = None,
    split: str = "train",
    hard_ratio: float | None = None,
    device: str = "auto",
    scale: int | None = None,
) -> tuple[Path, dict]:
    """Render the grid for ``num_images`` images of the run's data (or ``data``); returns (PNG path, summary)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    run = load_run(checkpoint, device=dev)
    cfg = run.cfg
    dcfg = run.data_config(split=split, augment=False, source=data, path=data_path, limit=limit)
    dataset = build_dataset(dcfg)
    imgs = pick_images(dataset, num_images, seed)
    noise = torch.rand(imgs.shape[0], run.model.cfg.num_patches, generator=torch.Generator().manual_seed(seed))
    if hard_ratio is None:  # the run's final easy-to-hard ratio
        hard_ratio = schedule.hard_ratio(cfg.method, cfg.epochs - 1, cfg.epochs, cfg.hard_ratio_max)
    if not 0 <= hard_ratio <= 1:
        raise ValueError(f"`hard_ratio` must be in [0, 1], got {hard_ratio}")
    panels, summary = render(run, imgs, noise, hard_ratio)
    image = compose(panels, scale or tile_scale(run.model.cfg.img_size))
    out = Path(out) if out is not None else run.run_dir / "visualize.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, format="PNG")
    summary.update(png=str(out), checkpoint=str(run.path), data=dcfg.source, split=split)
    log.info("wrote %s: %s", out, summary)
    return out, summary


# -- CLI ----------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", default=None, help="folder | fashion-mnist | elpv (default: the run's)")
    parser.add_argument("--data-path", default=None, help="data path (default: the run's)")
    parser.add_argument(
        "--limit", type=int, default=None, help="use the first N images of the split (default: the run's; 0: all)"
    )
    parser.add_argument("--split", choices=("train", "test"), default="train", help="dataset split (default: train)")
    parser.add_argument("--num-images", type=int, default=8, help="rows of the grid (default: 8)")
    parser.add_argument(
        "--hard-ratio", type=float, default=None, help="fraction of masked patches chosen as hard (default: the run's final)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image choice and mask noise (default: 0)")
    parser.add_argument("--scale", type=int, default=None, help="integer upscaling of tiles (default: short side >= 112 px)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default: <run dir>/visualize.png)")


def run(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}")
    out, _ = visualize(
        checkpoint_path(args),
        args.out,
        num_images=args.num_images,
        seed=args.seed,
        data=args.data,
        data_path=args.data_path,
        limit=args.limit,
        split=args.split,
        hard_ratio=args.hard_ratio,
        device=args.device,
        scale=args.scale,
    )
    print(out)
    return 0
