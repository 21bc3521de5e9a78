"""HPM / MAE / loss-only pretraining: the official recipe on hpm_kernels' ops, resumable.

One optimizer step (SPEC §1): the EMA teacher scores every patch of the full image (HPM only),
``select_patches`` masks the hardest ``hard_ratio`` of the masked set and fills the rest at
random, the student reconstructs the masked patches (``patch_mse_loss``) and, for HPM and
loss-only, learns to rank its own per-patch losses (``pairwise_ranking_loss``). Then AdamW, then
the teacher's EMA update.

A run is a pure function of its config: model init, data order, augmentation (seeded per
(epoch, image)) and mask noise all derive from ``seed``, and checkpoints hold every piece of
state, so ``--resume`` continues the same run and gives the same losses.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

import hpm_kernels as hk

from . import checkpoint as ckpt
from . import schedule
from .data import DataConfig, build_dataset, collate_skip_corrupt, in_memory_images, normalisation
from .model import HPMViT, model_config, param_groups

log = logging.getLogger("hpm_pretrain.train")

METHODS = ("hpm", "mae", "lossonly")
AUGMENTATIONS = ("auto", "batched", "per-item")
# Config fields that may change on --resume without making it a different run.
RESUMABLE_FIELDS = {
    "resume",
    "stop_after",
    "num_workers",
    "log_every",
    "ckpt_every",
    "tensorboard",
    "progress",
    "device",
    "compile",
}
ARCHITECTURE_FIELDS = ("embed_dim", "depth", "num_heads", "decoder_embed_dim", "decoder_depth", "decoder_num_heads")


@dataclasses.dataclass
class PretrainConfig:
    out_dir: str = "runs/hpm"
    # data
    data: str = "elpv"
    data_path: str | None = None
    img_size: int = 224
    img_width: int | None = None  # None: square
    in_chans: int = 3
    limit: int | None = None
    # model
    preset: str = "base"
    patch_size: int = 16
    # Architecture overrides of the preset (None: the preset's value).
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    predictor_depth: int | None = None
    predictor_head: str = "patch"
    predictor_stop_grad: bool = False  # ablation: the loss-prediction objective does not train the encoder
    # method
    method: str = "hpm"
    pred_loss: str = "relative"
    mask_ratio: float = 0.75
    hard_ratio_max: float = 0.5
    norm_pix: bool = False  # the official HPM scripts leave it off
    ops: str = "fused"
    # optimisation
    epochs: int = 200
    batch_size: int = 64  # per process
    accum_steps: int = 1
    blr: float = 1.5e-4
    lr: float | None = None  # absolute lr; None: blr * effective_batch / 256
    min_lr: float = 0.0
    warmup_epochs: float = 40
    weight_decay: float = 0.05
    clip_grad: float | None = None
    ema_start: float = 0.999
    ema_end: float = 0.9999
    ema_ramp_epochs: int = 100
    seed: int = 0
    # run control
    resume: bool = False
    stop_after: int | None = None  # stop (with a checkpoint) after this many optimizer steps in total
    ckpt_every: int = 0  # optimizer steps between checkpoints (0: epoch ends only)
    log_every: int = 10  # optimizer steps between metric lines
    augmentation: str = "auto"  # see AUGMENTATIONS and data_pipeline()
    num_workers: int | None = None  # None: chosen for the device (default_num_workers)
    device: str = "auto"
    compile: bool = False
    tensorboard: bool = False
    progress: bool = True

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {self.method!r}")
        if self.pred_loss not in ("relative", "absolute"):
            raise ValueError(f"`pred_loss` must be 'relative' or 'absolute', got {self.pred_loss!r}")
        if self.ops not in ("fused", "reference"):
            raise ValueError(f"`ops` must be 'fused' or 'reference', got {self.ops!r}")
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"`mask_ratio` must be in (0, 1), got {self.mask_ratio}")
        if not 0 <= self.hard_ratio_max <= 1:
            raise ValueError(f"`hard_ratio_max` must be in [0, 1], got {self.hard_ratio_max}")
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"`augmentation` must be one of {AUGMENTATIONS}, got {self.augmentation!r}")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", *ARCHITECTURE_FIELDS):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        if self.predictor_depth is not None and self.predictor_depth < 0:
            raise ValueError(
                f"`predictor_depth` must be >= 0 (0: a head on the reconstruction decoder), got {self.predictor_depth}"
            )
        if self.predictor_stop_grad and self.method == "mae":
            raise ValueError("`predictor_stop_grad` needs a loss predictor (method hpm or lossonly), got method 'mae'")
        if self.num_workers is not None and self.num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {self.num_workers}")

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.img_size, self.img_width or self.img_size


# -- data order ---------------------------------------------------------------------------------
class EpochOrder(Sampler):
    """This rank's items of one epoch, from batch ``start`` on: a permutation seeded by
    (seed, epoch), cut into global batches of ``batch_size * world`` (the tail is dropped), each
    split across ranks. Yields ``(epoch, index)`` so augmentation can be seeded per item."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int, rank: int, world: int):
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.rank, self.world = rank, world

    def steps(self) -> int:
        return self.n // (self.batch_size * self.world)

    def batch_indices(self) -> torch.Tensor:
        """This rank's image indices of the remaining batches: (steps - start, batch_size) int64."""
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        steps = self.steps()
        return order[: steps * self.batch_size * self.world].view(steps, self.world, self.batch_size)[self.start :, self.rank]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, int(i)) for i in self.batch_indices().reshape(-1)])

    def __len__(self) -> int:
        return (self.steps() - self.start) * self.batch_size


class SeededItems(Dataset):
    """Runs the wrapped dataset's augmentation under a torch seed derived from (seed, epoch,
    index): the same image gets the same crop whatever the worker count or resume point."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + epoch * 10_000_019 + index) % (2**63))
            return self.dataset[index]


def default_num_workers(device: torch.device) -> int:
    """DataLoader workers for the per-item path. On CPU none: the model needs every core, and
    workers would take them (on 2 cores a worker slows the step more than it hides). On CUDA
    up to 8 per process, leaving a core to the training process."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return max(0, min(8, per_process - 1))


class BatchedAugmentation:
    """MAE's augmentation for a whole batch in one ``hk.random_resized_crop`` call, for datasets
    held in memory: the uint8 images stay on the training device, each batch is read by index.
    Crop boxes and flips come from a counter-based generator keyed by (seed, epoch, image index),
    so an image's crop does not depend on the batch it lands in or on the resume point."""

    def __init__(self, images: torch.Tensor, size: tuple[int, int], mean, std, seed: int, device: torch.device):
        self.images = images.to(device)
        self.size, self.mean, self.std, self.seed = size, list(mean), list(std), seed

    def epoch(self, sampler: EpochOrder) -> Iterator[tuple[torch.Tensor, int]]:
        for index in sampler.batch_indices():  # on the host: no device read to draw the boxes
            yield hk.random_resized_crop(self.images, index, self.seed, sampler.epoch, self.size, self.mean, self.std), 0


def data_pipeline(cfg: PretrainConfig, dataset: Dataset, device: torch.device) -> BatchedAugmentation | None:
    """The batched augmentation when ``cfg.augmentation`` is "batched", or "auto" on Fashion-MNIST
    (in memory) when no crop is downscaled; None: the per-item DataLoader path (torchvision on PIL
    images, per-item seeding). "auto" keeps the per-item path wherever crops shrink (ELPV's 300 px
    cells to 64 px, folders of large images): PIL's bicubic antialiases when downscaling and the
    op's plain bicubic does not, and what that does to accuracy is not measured yet. "batched"
    takes any dataset whose images decode to one size (ELPV after one decode of every cell)."""
    if cfg.augmentation == "per-item" or (cfg.augmentation == "auto" and cfg.data != "fashion-mnist"):
        return None
    images = in_memory_images(dataset)
    if images is None:
        if cfg.augmentation == "auto":
            return None
        raise ValueError(
            "--augmentation batched needs a dataset whose images all have one size and decode "
            f"(fashion-mnist, elpv, or a folder of same-size images); {cfg.data!r} does not: use per-item or auto"
        )
    if cfg.augmentation == "auto" and (images.shape[2] > cfg.image_shape[0] or images.shape[3] > cfg.image_shape[1]):
        return None
    dcfg = train_data_config(cfg)
    mean, std = normalisation(dcfg)
    return BatchedAugmentation(images, cfg.image_shape, mean, std, cfg.seed, device)


# -- the step -----------------------------------------------------------------------------------
def absolute_pred_loss(pred: torch.Tensor, per_patch: torch.Tensor) -> torch.Tensor:
    """Ablation: per-patch losses z-scored per image (unbiased variance, eps 1e-6), then MSE."""
    l = per_patch.detach().float()
    z = (l - l.mean(1, keepdim=True)) / (l.var(1, keepdim=True) + 1e-6).sqrt()
    return (pred.float() - z).square().mean()


def spearman(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over images of the Spearman rank correlation between two (N, M) score sets."""
    if pred.shape[1] < 2:
        return float("nan")
    rp = pred.float().argsort(1).argsort(1).float()
    rt = target.float().argsort(1).argsort(1).float()
    rp, rt = rp - rp.mean(1, keepdim=True), rt - rt.mean(1, keepdim=True)
    r = (rp * rt).sum(1) / (rp.norm(dim=1) * rt.norm(dim=1)).clamp_min(1e-12)
    return float(r.mean())


@dataclasses.dataclass
class StepOutput:
    loss: torch.Tensor
    loss_rec: torch.Tensor
    loss_pred: torch.Tensor | None
    pred_scores: torch.Tensor | None
    per_patch: torch.Tensor


def forward_step(
    model, teacher: HPMViT | None, imgs: torch.Tensor, noise: torch.Tensor, cfg: PretrainConfig, hard_ratio: float
) -> StepOutput:
    """Teacher scores -> mask selection -> student -> losses (everything before backward)."""
    core: HPMViT = model.module if isinstance(model, DistributedDataParallel) else model
    ops, p = core.ops, core.cfg.patch_size
    _, num_hard = hk.mask_counts(core.cfg.num_patches, cfg.mask_ratio, hard_ratio)
    # With no hard patch the selection ignores the scores (it is MAE's random masking), so the
    # teacher's pass would be wasted: skip it.
    if teacher is not None and num_hard > 0:
        with torch.inference_mode():
            scores = teacher.hardness(imgs).float()
    else:
        scores = noise
    sel = ops.select_patches(scores, noise, cfg.mask_ratio, hard_ratio)
    pixels, pred_scores = model(imgs, sel)
    loss_rec, per_patch = ops.patch_mse_loss(pixels, imgs, p, sel.ids_mask, cfg.norm_pix)
    loss_pred = None
    if pred_scores is not None:
        if cfg.pred_loss == "relative":
            loss_pred = ops.ranking_loss(pred_scores, per_patch.detach())
        else:
            loss_pred = absolute_pred_loss(pred_scores, per_patch)
    loss = loss_rec if loss_pred is None else loss_rec + loss_pred
    return StepOutput(loss, loss_rec, loss_pred, pred_scores, per_patch)


class FiniteLossWatch:
    """Checks that every loss is finite without reading it on the host each step: the check
    accumulates on the device and :meth:`raise_if_bad` (one sync) runs where the loop reads
    the host anyway (metric lines) and before every checkpoint, so a bad step never reaches one."""

    def __init__(self, device: torch.device):
        self.ok = torch.ones((), dtype=torch.bool, device=device)
        self.first_bad = torch.zeros(2, dtype=torch.float64, device=device)  # (loss, global batch)

    def add(self, loss: torch.Tensor, global_batch: int) -> None:
        loss = loss.detach().double()
        bad = self.ok & ~torch.isfinite(loss)
        self.first_bad = torch.where(bad, torch.stack([loss, torch.full_like(loss, global_batch)]), self.first_bad)
        self.ok &= ~bad

    def raise_if_bad(self, batches_per_epoch: int, opt_step: int, ckpt_path: Path) -> None:
        if bool(self.ok):
            return
        value, where = self.first_bad.tolist()
        epoch, batch = divmod(int(where), batches_per_epoch)
        raise FloatingPointError(
            f"loss is {value} at epoch {epoch}, batch {batch} (found by optimizer step {opt_step}): stopping. "
            f"The last good checkpoint is {ckpt_path} (untouched)."
        )


def compile_models(student: HPMViT, teacher: HPMViT | None, backend: str = "inductor", fullgraph: bool = False) -> None:
    """torch.compile the student's forward and the teacher's hardness pass, in place (parameter
    names and checkpoints unchanged). The hpm ops are custom ops with fake kernels, so each
    compiles to one graph (the tests check it with ``fullgraph=True``)."""
    student.compile(backend=backend, fullgraph=fullgraph)
    if teacher is not None:
        teacher.hardness = torch.compile(teacher.hardness, backend=backend, fullgraph=fullgraph)


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, decay: float) -> None:
    t = [p for p in teacher.parameters()]
    s = [p.detach() for p in student.parameters()]
    torch._foreach_lerp_(t, s, 1.0 - decay)


# -- the run ------------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int, int]:
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: PretrainConfig, local_rank: int) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


class MetricsLog:
    """JSONL lines (and optionally TensorBoard scalars) from rank 0."""

    def __init__(self, out_dir: Path, enabled: bool, tensorboard: bool):
        self.path = out_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ValueError(f"--tensorboard needs the tensorboard package (pip install tensorboard): {e}") from None
            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, float) and math.isfinite(v):
                    self.writer.add_scalar(k, v, row["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines a crashed run wrote after its last checkpoint."""
        if not self.enabled or not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(r + "\n" for r in rows))


def train_data_config(cfg: PretrainConfig) -> DataConfig:
    """The training split as ``pretrain`` reads it (MAE augmentation on)."""
    return DataConfig(cfg.data, cfg.data_path, cfg.image_shape, cfg.in_chans, "train", True, cfg.limit)


def optimizer_steps_per_epoch(cfg: PretrainConfig) -> int:
    """Optimizer steps per epoch of ``pretrain`` in one process (the batch tail is dropped)."""
    return len(build_dataset(train_data_config(cfg))) // cfg.batch_size // cfg.accum_steps


def build_model(cfg: PretrainConfig, ops: str | None = None) -> HPMViT:
    """The student architecture of a run (random init from the current torch seed)."""
    mcfg = model_config(
        cfg.preset,
        img_size=cfg.image_shape,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        predictor=cfg.method != "mae",
        predictor_depth=cfg.predictor_depth,
        predictor_head=cfg.predictor_head,
        predictor_stop_grad=cfg.predictor_stop_grad,
        **{k: getattr(cfg, k) for k in ARCHITECTURE_FIELDS if getattr(cfg, k) is not None},
    )
    return HPMViT(mcfg, ops or cfg.ops)


def pretrain(cfg: PretrainConfig, on_epoch_end: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) pretraining; returns a summary with the last metrics, the output paths and
    ``train_seconds`` (wall time of this call: data, model, compile, steps and checkpoints).

    ``on_epoch_end(info)``, if given, runs on every process after each epoch's checkpoint with
    ``info = {epoch, opt_step, checkpoint, train_seconds}``; its own time is not counted in
    ``train_seconds`` (benchmarks/time_to_accuracy.py evaluates the encoder there)."""
    started = time.perf_counter()
    paused = 0.0
    cfg.validate()
    rank, world, local_rank = _dist_env()
    distributed = world > 1
    device = _device(cfg, local_rank)
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir = Path(cfg.out_dir)
    is_main = rank == 0
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    dataset = build_dataset(train_data_config(cfg))
    batched = data_pipeline(cfg, dataset, device)
    num_workers = default_num_workers(device) if cfg.num_workers is None else cfg.num_workers
    steps_per_epoch = len(dataset) // (cfg.batch_size * world)
    if steps_per_epoch < cfg.accum_steps:
        raise ValueError(
            f"{len(dataset)} images make {steps_per_epoch} batches of {cfg.batch_size} x {world} processes per epoch; "
            f"need at least accum_steps = {cfg.accum_steps}: lower --batch-size"
        )
    opt_steps_per_epoch = steps_per_epoch // cfg.accum_steps

    torch.manual_seed(cfg.seed)
    student = build_model(cfg).to(device)
    teacher = None
    if cfg.method == "hpm":
        teacher = copy.deepcopy(student).requires_grad_(False)
    if cfg.compile:
        compile_models(student, teacher)
    effective_batch = cfg.batch_size * cfg.accum_steps * world
    peak_lr = cfg.lr if cfg.lr is not None else schedule.base_lr(cfg.blr, effective_batch)
    optimizer = torch.optim.AdamW(param_groups(student, cfg.weight_decay), lr=peak_lr, betas=(0.9, 0.95))
    model = (
        DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None) if distributed else student
    )
    noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + rank)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda" and torch.cuda.is_bf16_supported()
        else contextlib.nullcontext()
    )

    pos = dict(epoch=0, batch=0, opt_step=0)
    ckpt_path = out_dir / ckpt.CHECKPOINT
    metrics = MetricsLog(out_dir, is_main, cfg.tensorboard)
    if cfg.resume:
        state = ckpt.load(ckpt_path, map_location=device)
        _check_same_run(state["config"], cfg)
        if len(state["rng"]) != world:
            raise ValueError(f"--resume needs the same number of processes: the checkpoint has {len(state['rng'])}, now {world}")
        student.load_state_dict(state["model"])
        if teacher is not None:
            teacher.load_state_dict(state["teacher"])
        optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"][rank], noise_gen)
        pos = state["position"]
        metrics.truncate_after(pos["opt_step"])
        log.info(
            "resumed from %s at epoch %d, batch %d, optimizer step %d", ckpt_path, pos["epoch"], pos["batch"], pos["opt_step"]
        )
    elif is_main:
        (out_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
        metrics.path.unlink(missing_ok=True)

    watch = FiniteLossWatch(device)

    def save() -> None:
        watch.raise_if_bad(steps_per_epoch, pos["opt_step"], ckpt_path)
        rngs = [None] * world
        mine = ckpt.rng_state(noise_gen)
        if distributed:
            dist.all_gather_object(rngs, mine)
        else:
            rngs = [mine]
        if is_main:
            state = dict(
                config=dataclasses.asdict(cfg),
                model=student.state_dict(),
                teacher=None if teacher is None else teacher.state_dict(),
                optimizer=optimizer.state_dict(),
                scaler=None,  # bf16 autocast needs no loss scaling
                position=dict(pos),
                rng=rngs,
            )
            ckpt.save_atomic(state, ckpt_path)

    summary: dict = dict(out_dir=str(out_dir), checkpoint=str(ckpt_path), metrics=str(metrics.path))
    last: dict = {}
    stop = False
    while pos["epoch"] < cfg.epochs and not stop:
        epoch = pos["epoch"]
        hard = schedule.hard_ratio(cfg.method, epoch, cfg.epochs, cfg.hard_ratio_max)
        decay = schedule.ema_decay(epoch, cfg.ema_start, cfg.ema_end, cfg.ema_ramp_epochs)
        start_batch = pos["batch"]
        sampler = EpochOrder(len(dataset), cfg.batch_size, cfg.seed, epoch, start_batch, rank, world)
        if batched is not None:
            loader = batched.epoch(sampler)
        else:
            loader = (
                (imgs, n_skipped)
                for imgs, _, _, n_skipped in DataLoader(
                    SeededItems(dataset, cfg.seed),
                    batch_size=cfg.batch_size,
                    sampler=sampler,
                    num_workers=num_workers,
                    collate_fn=collate_skip_corrupt,
                    drop_last=True,
                    pin_memory=device.type == "cuda",
                )
            )
        optimizer.zero_grad(set_to_none=True)
        skipped = 0
        window_images, window_start = 0, time.perf_counter()
        bar = _progress(cfg, is_main, opt_steps_per_epoch, pos["opt_step"] - epoch * opt_steps_per_epoch, epoch)
        out = None
        for imgs, n_skipped in loader:
            batch = pos["batch"]
            skipped += n_skipped
            if batch % cfg.accum_steps == 0:
                lr = schedule.learning_rate(peak_lr, cfg.min_lr, epoch + batch / steps_per_epoch, cfg.warmup_epochs, cfg.epochs)
                for group in optimizer.param_groups:
                    group["lr"] = lr
            if imgs.shape[0]:  # a batch whose every image was corrupt still advances the position
                imgs = imgs.to(device, non_blocking=True)
                noise = torch.rand(imgs.shape[0], student.cfg.num_patches, generator=noise_gen, device=device)
                with autocast:
                    out = forward_step(model, teacher, imgs, noise, cfg, hard)
                watch.add(out.loss, epoch * steps_per_epoch + batch)
                (out.loss / cfg.accum_steps).backward()
            pos["batch"] = batch + 1
            window_images += imgs.shape[0] * world
            if pos["batch"] % cfg.accum_steps:
                continue
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if teacher is not None:
                ema_update(teacher, student, decay)
            pos["opt_step"] += 1
            if bar is not None:
                bar.update(1)
            if pos["opt_step"] % cfg.log_every == 0 and out is not None:
                watch.raise_if_bad(steps_per_epoch, pos["opt_step"], ckpt_path)
                elapsed = time.perf_counter() - window_start
                loss_value = float(out.loss.detach())
                last = dict(
                    step=pos["opt_step"],
                    epoch=epoch,
                    loss=loss_value,
                    loss_rec=float(out.loss_rec.detach()),
                    loss_pred=None if out.loss_pred is None else float(out.loss_pred.detach()),
                    lr=lr,
                    hard_ratio=hard,
                    ema_decay=decay if teacher is not None else None,
                    spearman=None if out.pred_scores is None else spearman(out.pred_scores.detach(), out.per_patch.detach()),
                    images_per_s=window_images / elapsed if elapsed > 0 else None,
                    skipped_images=skipped,
                )
                metrics.write(last)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", img_s=f"{last['images_per_s']:.1f}")
                window_images, window_start = 0, time.perf_counter()
            if cfg.stop_after is not None and pos["opt_step"] >= cfg.stop_after:
                stop = True
                break
            if cfg.ckpt_every and pos["opt_step"] % cfg.ckpt_every == 0:
                save()
        if bar is not None:
            bar.close()
        if not stop:
            pos = dict(epoch=epoch + 1, batch=0, opt_step=pos["opt_step"])
        save()
        if on_epoch_end is not None and not stop:
            hook_start = time.perf_counter()
            on_epoch_end(
                dict(
                    epoch=epoch, opt_step=pos["opt_step"], checkpoint=str(ckpt_path), train_seconds=hook_start - started - paused
                )
            )
            paused += time.perf_counter() - hook_start
    summary.update(last=last, position=dict(pos), train_seconds=time.perf_counter() - started - paused)
    if distributed:
        dist.barrier()
    return summary


def _progress(cfg: PretrainConfig, is_main: bool, total: int, done: int, epoch: int):
    if not (cfg.progress and is_main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True)


def _check_same_run(saved: dict, cfg: PretrainConfig) -> None:
    now = dataclasses.asdict(cfg)
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in RESUMABLE_FIELDS and saved.get(k) != v}
    if diff:
        listed = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(f"--resume must continue the same run; these settings differ from the checkpoint: {listed}")
