"""Tests of hpm_pretrain.evaluate: kNN, the linear probe, feature extraction and the eval command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hpm_pretrain import checkpoint as ckpt
from hpm_pretrain import cli
from hpm_pretrain.evaluate import extract_features, knn_accuracy, knn_predict, linear_probe
from hpm_pretrain.train import PretrainConfig, build_model

# -- kNN on hand-made features ----------------------------------------------------------------------


def test_knn_cosine_ignores_norm_and_recovers_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 8) * 5
    ytr = torch.arange(4).repeat_interleave(30)
    xtr = centres[ytr] + 0.5 * torch.randn(120, 8, generator=g)
    xtr = xtr * torch.rand(120, 1, generator=g).mul(10).add(0.1)  # cosine: any positive scale per row
    yte = torch.arange(4).repeat(5)
    xte = (centres[yte] + 0.5 * torch.randn(20, 8, generator=g)) * 100
    for temperature in (0.07, None):
        assert torch.equal(knn_predict(xtr, ytr, xte, k=20, temperature=temperature), yte)
    assert knn_accuracy(xtr, ytr, xte, yte) == 1.0


def test_knn_weighted_vote_differs_from_majority():
    # one class-0 neighbour almost identical to the query, two class-1 neighbours at cos 0.5
    xtr = torch.tensor([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    ytr = torch.tensor([0, 1, 1])
    q = torch.tensor([[0.999, 0.04]])
    assert knn_predict(xtr, ytr, q, k=3, temperature=0.07).item() == 0  # exp(~1/0.07) >> 2 exp(~0.5/0.07)
    assert knn_predict(xtr, ytr, q, k=3, temperature=None).item() == 1  # 2 votes to 1
    assert knn_predict(xtr, ytr, q, k=1, temperature=None).item() == 0


def test_knn_k_capped_ties_and_chunks():
    xtr = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ytr = torch.tensor([1, 0])
    q = torch.tensor([[1.0, 1.0]])  # equidistant: the tie goes to the lower class
    assert knn_predict(xtr, ytr, q, k=20, temperature=None).item() == 0
    assert knn_predict(xtr, ytr, q, k=20, temperature=0.07).item() == 0
    g = torch.Generator().manual_seed(1)
    a, b, c = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g), torch.randn(37, 6, generator=g)
    assert torch.equal(knn_predict(a, b, c, chunk=5), knn_predict(a, b, c, chunk=1000))
    assert knn_predict(a, b, c, num_classes=7).max() < 3


def test_linear_probe_separable_and_chance():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 16, generator=g)
    x = torch.randn(300, 16, generator=g) * torch.linspace(0.01, 100, 16)  # badly scaled: standardisation matters
    y = (x / torch.linspace(0.01, 100, 16)) @ w.T
    y = y.argmax(1)
    acc, wd = linear_probe(x[:200], y[:200], x[200:], y[200:])
    assert acc >= 0.9 and wd > 0
    noise_labels = torch.randint(0, 2, (300,), generator=g)
    acc, _ = linear_probe(x[:200], noise_labels[:200], x[200:], noise_labels[200:], weight_decays=(1e-2,))
    assert acc < 0.75


# -- the command on a synthetic labelled folder ---------------------------------------------------------


def _class_folder(root: Path, per_class: int = 15) -> Path:
    """Three trivially separable grey classes: dark, bright, and dark-top / bright-bottom."""
    for c, (top, bottom) in {"dark": (40, 40), "bright": (210, 210), "split": (40, 210)}.items():
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            rng = np.random.default_rng(1000 * len(c) + k)
            a = np.concatenate([np.full((10, 20), top), np.full((10, 20), bottom)]) + rng.normal(0, 20, (20, 20))
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / c / f"{k}.png")
    return root


def _checkpoint(tmp: Path, data_path: Path, **kw) -> Path:
    cfg = PretrainConfig(
        out_dir=str(tmp / "run"),
        data="folder",
        data_path=str(data_path),
        img_size=16,
        in_chans=1,
        preset="micro",
        patch_size=4,
        ops="reference",
        **kw,
    )
    torch.manual_seed(0)
    student = build_model(cfg)
    teacher = build_model(cfg) if cfg.method == "hpm" else None
    path = tmp / "run" / ckpt.CHECKPOINT
    state = dict(
        config=dataclasses.asdict(cfg),
        model=student.state_dict(),
        teacher=None if teacher is None else teacher.state_dict(),
        position={},
    )
    ckpt.save_atomic(state, path)
    return path


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("eval")
    return _checkpoint(tmp, _class_folder(tmp / "classes"))


def test_eval_random_encoder_separates_trivial_classes(labelled_run, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    argv = [
        "eval",
        "--run-dir",
        str(labelled_run.parent),
        "--num-workers",
        "0",
        "--batch-size",
        "8",
        "--json",
        str(out),
        "--device",
        "cpu",
    ]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out.read_text())
    # 15 per class: 3 to test (20 %), 12 to train
    assert printed["n_train"] == 36 and printed["n_test"] == 9 and printed["num_classes"] == 3
    assert printed["k"] == 20 and "DINO" in printed["knn_vote"]
    assert printed["knn_acc"] >= 0.85 and printed["linear_acc"] >= 0.85  # chance: 1/3
    # the teacher, cls pooling and a plain majority vote work too
    assert cli.main([*argv, "--teacher", "--pool", "cls", "--knn-temperature", "0", "--limit-train", "30", "--k", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["encoder"] == "teacher" and printed["knn_vote"] == "majority" and printed["n_train"] == 30
    assert printed["k"] == 5
    assert printed["knn_acc"] >= 0.85 and printed["linear_acc"] >= 0.85


def test_extract_features_pooling_and_empty_batches(labelled_run):
    from hpm_pretrain.export import load_run

    model = load_run(labelled_run).model
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(5, 1, 16, 16, generator=g)
    loader = [
        (imgs[:3], torch.tensor([0, 1, 2]), torch.arange(3), 0),
        (torch.zeros(0, 0, 0, 0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 2),
        (imgs[3:], torch.tensor([1, 1])),
    ]
    feats, labels = extract_features(model, loader, "cpu")
    with torch.no_grad():
        tokens = model.encode(imgs)
    assert feats.shape == (5, 96) and labels.tolist() == [0, 1, 2, 1, 1]
    torch.testing.assert_close(feats, tokens[:, 1:].mean(1))
    cls, _ = extract_features(model, loader, "cpu", pool="cls")
    torch.testing.assert_close(cls, tokens[:, 0])
    with pytest.raises(ValueError, match="pool"):
        extract_features(model, loader, "cpu", pool="max")


def test_eval_needs_labels_and_a_teacher(tmp_path, capsys):
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(5):
        Image.fromarray(np.full((16, 16), 20 * k, dtype=np.uint8)).save(flat / f"{k}.png")
    path = _checkpoint(tmp_path, flat, method="mae")
    argv = ["eval", "--checkpoint", str(path), "--num-workers", "0", "--device", "cpu"]
    assert cli.main(argv) == 2
    assert "labelled" in capsys.readouterr().err
    assert cli.main([*argv, "--teacher"]) == 2
    assert "no EMA teacher" in capsys.readouterr().err


def test_help():
    with pytest.raises(SystemExit) as e:
        cli.main(["eval", "--help"])
    assert e.value.code == 0
