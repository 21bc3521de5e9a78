"""Evaluate frozen encoder features: kNN (k = 20, cosine) and a linear probe, on labelled data.

Fits on the train split, reports accuracy on the held-out test split of the run's data (or
``--data``): Fashion-MNIST (10 classes, its own test set), ELPV (defect probability >= 0.5 vs
clean; a fixed stratified 80/20 split) or a folder with one sub-folder per class (the same split).

Features: the mean of the patch tokens after the encoder's final norm (``--pool cls``: the class
token). MAE's objective never asks the class token for anything (the decoder may ignore it), so
a frozen MAE / HPM encoder's class token is a weak summary; mean pooling is what MAE-family
kNN / linear-probe numbers are usually reported with when no BatchNorm-trained head is used.

kNN: DINO's weighted vote: cosine similarity to the train features, the k = 20 most similar vote
for their class with weight ``exp(similarity / 0.07)`` (``--knn-temperature 0`` for a plain
majority vote; ties go to the lower class index).

Linear probe: multinomial logistic regression on features standardised with the train split's
mean / std, full-batch L-BFGS; its L2 weight is chosen among a small grid on a seeded 20 % hold-out
of the train split, then the probe is refitted on the whole train split.

Validation kNN (``knn_val_acc``): the same kNN on a seeded sixth of the train features, fitted on
the other five sixths; the score to choose hyper-parameters by, so that the test split is only
reported, never selected on.

Prints a JSON object with knn_acc, linear_acc, knn_val_acc, n_train, n_test (and the settings);
``--json`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .data import build_dataset, collate_skip_corrupt
from .export import add_checkpoint_arguments, checkpoint_path, load_run

log = logging.getLogger("hpm_pretrain.evaluate")

KNN_K = 20
KNN_TEMPERATURE = 0.07  # DINO's
PROBE_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3, 1e-2)
VAL_FRACTION = 1 / 6  # of the train features, for knn_val_acc (10,000 of Fashion-MNIST's 60,000)


# -- features -----------------------------------------------------------------------------------
@torch.no_grad()
def extract_features(
    model: torch.nn.Module, loader, device: str | torch.device, pool: str = "mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features of every image of ``loader``: (feats (N, D) float32, labels (N,) int64), on the CPU.

    ``model``: an ``HPMViT`` (its ``encode``) or anything with timm's ``forward_features`` (e.g.
    ``export.timm_encoder``). ``pool``: "mean" (patch tokens) or "cls". Batches are ``(imgs, labels,
    ...)``; empty batches (every file corrupt) are skipped. bf16 autocast on CUDA.
    """
    if pool not in ("mean", "cls"):
        raise ValueError(f"`pool` must be 'mean' or 'cls', got {pool!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    prefix = getattr(model, "num_prefix_tokens", 1)
    encode = model.encode if hasattr(model, "encode") else model.forward_features
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    feats, labels = [], []
    for batch in loader:
        imgs, lab = batch[0], batch[1]
        if imgs.shape[0] == 0:
            continue
        with autocast:
            tokens = encode(imgs.to(device, non_blocking=True))
        f = tokens[:, prefix:].float().mean(1) if pool == "mean" else tokens[:, 0].float()
        feats.append(f.cpu())
        labels.append(torch.as_tensor(lab, dtype=torch.int64).cpu())
    model.train(was_training)
    if not feats:
        raise ValueError("no image to extract features from")
    return torch.cat(feats), torch.cat(labels)


# -- kNN ----------------------------------------------------------------------------------------
@torch.no_grad()
def knn_predict(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int = KNN_K,
    temperature: float | None = KNN_TEMPERATURE,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> torch.Tensor:
    """Class predictions (M,) for test features by cosine kNN over (N, D) train features.

    ``temperature``: DINO's weighted vote, each of the k neighbours adds ``exp(cos / T)`` to its
    class; ``None`` or 0: a plain majority vote. k is capped at N. Ties go to the lower class.
    """
    if train_feats.shape[0] == 0:
        raise ValueError("kNN needs at least one train feature")
    k = min(k, train_feats.shape[0])
    C = int(num_classes if num_classes is not None else int(train_labels.max()) + 1)
    train = F.normalize(train_feats.float(), dim=1)
    labels = train_labels.long()
    out = []
    for start in range(0, test_feats.shape[0], chunk):
        q = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim, idx = (q @ train.T).topk(k, dim=1)
        weight = (sim / temperature).exp() if temperature else torch.ones_like(sim)
        votes = torch.zeros(q.shape[0], C, dtype=weight.dtype).scatter_add_(1, labels[idx], weight)
        out.append(votes.argmax(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def knn_accuracy(train_feats, train_labels, test_feats, test_labels, k=KNN_K, temperature=KNN_TEMPERATURE) -> float:
    C = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    pred = knn_predict(train_feats, train_labels, test_feats, k, temperature, C)
    return float((pred == test_labels).float().mean())


def knn_validation_accuracy(
    feats: torch.Tensor,
    labels: torch.Tensor,
    fraction: float = VAL_FRACTION,
    seed: int = 0,
    k: int = KNN_K,
    temperature: float | None = KNN_TEMPERATURE,
) -> float | None:
    """kNN accuracy on a seeded ``fraction`` of the train features, fitted on the rest: a score for
    choosing hyper-parameters (e.g. the learning rate) without looking at the test split. None when
    the split leaves either side empty."""
    n = feats.shape[0]
    n_val = round(fraction * n)
    if n_val < 1 or n - n_val < 1:
        return None
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, fit = perm[:n_val], perm[n_val:]
    return knn_accuracy(feats[fit], labels[fit], feats[val], labels[val], k, temperature)


# -- linear probe -------------------------------------------------------------------------------
def fit_logistic(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, max_iter: int = 300
) -> torch.nn.Linear:
    """Multinomial logistic regression (CE + weight_decay/2 * ||W||^2) by full-batch L-BFGS, float64."""
    x, y = feats.double(), labels.long()
    head = torch.nn.Linear(x.shape[1], num_classes).double()
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return head


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    weight_decays: tuple[float, ...] = PROBE_WEIGHT_DECAYS,
    seed: int = 0,
    max_iter: int = 300,
) -> tuple[float, float]:
    """Test accuracy of a logistic-regression probe on standardised features, and the chosen L2 weight
    (picked on a seeded 20 % hold-out of the train split when there is more than one candidate)."""
    C = int(max(int(train_labels.max()), int(test_labels.max()))) + 1
    mean = train_feats.double().mean(0)
    std = train_feats.double().std(0, unbiased=False).clamp_min(1e-6)
    xtr, xte = (train_feats.double() - mean) / std, (test_feats.double() - mean) / std
    ytr, yte = train_labels.long(), test_labels.long()
    wd = weight_decays[0]
    n = xtr.shape[0]
    n_val = round(0.2 * n)
    if len(weight_decays) > 1 and n_val >= 1 and n - n_val >= 1:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        xfit, yfit, xval, yval = xtr[perm[n_val:]], ytr[perm[n_val:]], xtr[perm[:n_val]], ytr[perm[:n_val]]
        scores = []
        for cand in weight_decays:
            head = fit_logistic(xfit, yfit, C, cand, max_iter)
            with torch.no_grad():
                scores.append(float((head(xval).argmax(1) == yval).double().mean()))
        wd = weight_decays[max(range(len(scores)), key=lambda i: (scores[i], weight_decays[i]))]  # ties: stronger L2
    head = fit_logistic(xtr, ytr, C, wd, max_iter)
    with torch.no_grad():
        acc = float((head(xte).argmax(1) == yte).double().mean())
    return acc, wd


# -- the command --------------------------------------------------------------------------------
def evaluate(
    checkpoint: str | Path,
    teacher: bool = False,
    data: str | None = None,
    data_path: str | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    batch_size: int = 128,
    num_workers: int = 2,
    pool: str = "mean",
    k: int = KNN_K,
    knn_temperature: float | None = KNN_TEMPERATURE,
    device: str = "auto",
    linear: bool = True,
) -> dict:
    """kNN and linear-probe accuracy of a run's frozen encoder (the student, or the EMA teacher).

    ``limit_train``: None = the run's ``limit``; ``limit_test``: None = the whole test split; 0 = no limit.
    ``linear=False`` skips the probe (``linear_acc`` None): kNN only, much cheaper."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else torch.device(device)
    run = load_run(checkpoint, device=dev)
    if teacher and run.teacher is None:
        raise ValueError(f"{run.path} has no EMA teacher (method {run.cfg.method!r}; only hpm keeps one)")
    encoder = run.teacher if teacher else run.model
    splits = {}
    for split, limit in (("train", limit_train), ("test", 0 if limit_test is None else limit_test)):
        dcfg = run.data_config(split=split, augment=False, source=data, path=data_path, limit=limit)
        ds = build_dataset(dcfg)
        loader = DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_skip_corrupt,
            pin_memory=dev.type == "cuda",
        )
        feats, labels = extract_features(encoder, loader, dev, pool)
        if (labels < 0).any():
            raise ValueError(
                f"eval needs labelled data, but {dcfg.source} {dcfg.path or ''} has no labels (a flat folder): "
                "use --data fashion-mnist | elpv, or a folder with one sub-folder per class"
            )
        splits[split] = (feats, labels)
        log.info("%s split: %d images, features %s", split, len(labels), tuple(feats.shape))
    (ftr, ytr), (fte, yte) = splits["train"], splits["test"]
    knn_acc = knn_accuracy(ftr, ytr, fte, yte, k, knn_temperature)
    knn_val_acc = knn_validation_accuracy(ftr, ytr, VAL_FRACTION, 0, k, knn_temperature)
    linear_acc, wd = linear_probe(ftr, ytr, fte, yte) if linear else (None, None)
    num_classes = int(max(int(ytr.max()), int(yte.max()))) + 1
    return dict(
        knn_acc=knn_acc,
        linear_acc=linear_acc,
        knn_val_acc=knn_val_acc,
        n_train=len(ytr),
        n_test=len(yte),
        num_classes=num_classes,
        majority_acc=float(torch.bincount(yte, minlength=num_classes).max() / len(yte)),
        k=min(k, len(ytr)),
        knn_vote=f"weighted exp(cos/{knn_temperature}) (DINO)" if knn_temperature else "majority",
        probe="logistic regression, L-BFGS, standardised features",
        probe_weight_decay=wd,
        features=f"{pool} ({'patch tokens' if pool == 'mean' else 'class token'}) after the final norm",
        encoder="teacher" if teacher else "student",
        checkpoint=str(run.path),
        data=data or run.cfg.data,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_arguments(parser)
    parser.add_argument("--teacher", action="store_true", help="evaluate the EMA teacher's encoder instead of the student's")
    parser.add_argument("--data", default=None, help="fashion-mnist | elpv | folder with class sub-folders (default: the run's)")
    parser.add_argument("--data-path", default=None, help="data path (default: the run's)")
    parser.add_argument("--limit-train", type=int, default=None, help="first N train images (default: the run's --limit; 0: all)")
    parser.add_argument("--limit-test", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--batch-size", type=int, default=128, help="feature-extraction batch size (default: 128)")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loader workers (default: 2)")
    parser.add_argument("--pool", choices=("mean", "cls"), default="mean", help="feature: mean of patch tokens (default) or cls")
    parser.add_argument("--k", type=int, default=KNN_K, help=f"kNN neighbours (default: {KNN_K})")
    parser.add_argument(
        "--knn-temperature",
        type=float,
        default=KNN_TEMPERATURE,
        help=f"kNN vote weight exp(cos / T) (default: {KNN_TEMPERATURE}, DINO's); 0: plain majority",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    result = evaluate(
        checkpoint_path(args),
        teacher=args.teacher,
        data=args.data,
        data_path=args.data_path,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        pool=args.pool,
        k=args.k,
        knn_temperature=args.knn_temperature or None,
    )
    text = json.dumps(result, indent=1)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0
