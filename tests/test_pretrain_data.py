"""Tests of hpm_pretrain.data: image folders, Fashion-MNIST IDX files, ELPV, corrupt-file handling."""

from __future__ import annotations

import gzip
import importlib.util
import logging
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hpm_pretrain import data as D
from hpm_pretrain.data import (
    SOURCES,
    DataConfig,
    DataError,
    build_dataset,
    collate_skip_corrupt,
    normalisation,
)

HAS_ELPV = importlib.util.find_spec("elpv_dataset") is not None
REAL_FMNIST = D.DEFAULT_FASHION_MNIST_PATH


# --- helpers -------------------------------------------------------------------------------------------


def _save(path, size_wh, mode, value=None, seed=0):
    """Write an image file of size (W, H) in mode "L" / "RGB": constant `value` or random pixels."""
    w, h = size_wh
    shape = (h, w) if mode == "L" else (h, w, 3)
    if value is None:
        arr = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    else:
        arr = np.full(shape, value, dtype=np.uint8)
    Image.fromarray(arr).convert(mode).save(path)
    return str(path)


MIXED = [  # (file name, (W, H), mode): every extension, grey and colour, mixed sizes
    ("a.png", (40, 30), "RGB"),
    ("b.jpg", (33, 50), "L"),
    ("c.JPEG", (64, 64), "RGB"),
    ("d.bmp", (20, 37), "L"),
    ("e.tiff", (45, 45), "RGB"),
    ("f.TIF", (28, 28), "L"),
    ("g.PNG", (100, 17), "L"),
    ("h.jpeg", (31, 29), "RGB"),
]


@pytest.fixture
def flat_folder(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for k, (name, size, mode) in enumerate(MIXED):
        _save(root / name, size, mode, seed=k)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"ignored: hidden")
    return root


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "classes"
    counts = {"cat": 10, "dog": 6, "zebra": 5}
    for c, n in counts.items():
        (root / c / "nested").mkdir(parents=True)
        for k in range(n):
            where = root / c / "nested" if k % 3 == 0 else root / c
            name, size, mode = MIXED[k % len(MIXED)]
            _save(where / f"{c}{k}_{name}", size, mode, seed=k)
    (root / "empty_dir").mkdir()  # no images: not a class
    return root, counts


def _all_items(ds):
    return [ds[i] for i in range(len(ds))]


# --- image folders ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("augment", [True, False])
def test_flat_folder_shapes_and_labels(flat_folder, in_chans, augment):
    n = len(MIXED)
    n_test = round(0.2 * n)
    for split, expected in (("train", n - n_test), ("test", n_test)):
        ds = build_dataset(DataConfig("folder", str(flat_folder), (24, 40), in_chans, split, augment))
        assert len(ds) == expected
        assert ds.label_names is None
        for i, (x, label, index) in enumerate(_all_items(ds)):
            assert x.shape == (in_chans, 24, 40) and x.dtype == torch.float32
            assert type(x) is torch.Tensor
            assert label == -1 and index == i
            assert torch.isfinite(x).all()


def test_folder_with_classes_split_is_stratified_disjoint_deterministic(class_folder):
    root, counts = class_folder
    tr = build_dataset(DataConfig("folder", str(root), (16, 16), 3, "train"))
    te = build_dataset(DataConfig("folder", str(root), (16, 16), 3, "test"))
    assert tr.label_names == te.label_names == sorted(counts)
    assert set(tr.files).isdisjoint(te.files)
    assert len(tr) + len(te) == sum(counts.values())
    for c, name in enumerate(tr.label_names):
        n_te = int((te.labels == c).sum())
        assert n_te == round(0.2 * counts[name])  # 2, 1, 1
        assert int((tr.labels == c).sum()) == counts[name] - n_te
        assert all(
            os.sep + name + os.sep in f for f, lab in zip(tr.files + te.files, list(tr.labels) + list(te.labels)) if lab == c
        )
    again = build_dataset(DataConfig("folder", str(root), (16, 16), 3, "train"))
    assert again.files == tr.files
    x, label, index = tr[3]
    assert label == int(tr.labels[3]) and index == 3 and x.shape == (3, 16, 16)
    limited = build_dataset(DataConfig("folder", str(root), (16, 16), 3, "train", limit=5))
    assert limited.files == tr.files[:5]
    assert len(set(limited.labels.tolist())) > 1  # the split order is shuffled, so `limit` mixes classes


def test_top_level_images_beside_class_folders_are_ignored(class_folder, caplog):
    root, counts = class_folder
    _save(root / "stray.png", (8, 8), "L")
    with caplog.at_level(logging.WARNING, logger="hpm_pretrain.data"):
        tr = build_dataset(DataConfig("folder", str(root), (8, 8), 1, "train"))
        te = build_dataset(DataConfig("folder", str(root), (8, 8), 1, "test"))
    assert len(tr) + len(te) == sum(counts.values())
    assert not any(f.endswith("stray.png") for f in tr.files + te.files)
    assert any("ignoring the top-level images" in r.getMessage() for r in caplog.records)


def test_folder_normalisation_eval(tmp_path):
    root = tmp_path / "const"
    root.mkdir()
    _save(root / "rgb.png", (50, 30), "RGB", value=200)
    _save(root / "grey.png", (30, 50), "L", value=100)
    for in_chans in (1, 3):
        cfg = DataConfig("folder", str(root), (12, 20), in_chans, "train", augment=False)
        mean, std = normalisation(cfg)
        assert len(mean) == len(std) == in_chans
        assert mean == ((0.485, 0.456, 0.406) if in_chans == 3 else D.IMAGENET_GREY_MEAN)
        ds = build_dataset(cfg)
        assert len(ds) == 2  # round(0.2 * 2) = 0 images go to the test split
        for x, _, i in _all_items(ds):
            v = 200 if "rgb" in ds.files[i] else 100
            want = (torch.tensor(v / 255.0) - torch.tensor(mean)) / torch.tensor(std)
            torch.testing.assert_close(x.mean(dim=(1, 2)), want.float(), atol=2e-3, rtol=0)
            # un-normalising with normalisation(cfg) gives back pixels in [0, 1]
            pix = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
            assert pix.min() >= -1e-4 and pix.max() <= 1 + 1e-4


def test_eval_transform_covers_and_center_crops():
    t = D.CoverResizeCenterCrop((10, 30))
    img = Image.fromarray(np.arange(40 * 40, dtype=np.uint32).reshape(40, 40).astype(np.uint8))
    out = t(img)
    assert out.size == (30, 10)  # PIL size is (W, H)
    assert t(Image.new("L", (60, 20))).size == (30, 10)
    assert t(Image.new("L", (30, 10))).size == (30, 10)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    root = tmp_path / "deep"
    root.mkdir()
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(root / "a.png")
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(root / "b.tif")
    cfg = DataConfig("folder", str(root), (8, 8), 1, "train", augment=False)
    ds = build_dataset(cfg)
    mean, std = normalisation(cfg)
    x = ds[0][0]
    torch.testing.assert_close(x.mean(), torch.tensor((128 / 255 - mean[0]) / std[0]), atol=1e-2, rtol=0)


def test_augmentation_uses_torch_global_rng(flat_folder):
    ds = build_dataset(DataConfig("folder", str(flat_folder), (16, 24), 3, "train", augment=True))
    torch.manual_seed(123)
    a = torch.stack([ds[i][0] for i in range(len(ds))])
    state = torch.get_rng_state()
    b_next = ds[0][0]
    torch.manual_seed(123)
    b = torch.stack([ds[i][0] for i in range(len(ds))])
    assert torch.equal(a, b)
    torch.set_rng_state(state)
    assert torch.equal(ds[0][0], b_next)
    torch.manual_seed(124)
    assert not torch.equal(a, torch.stack([ds[i][0] for i in range(len(ds))]))
    # without augmentation the items are deterministic whatever the RNG
    ev = build_dataset(DataConfig("folder", str(flat_folder), (16, 24), 3, "train", augment=False))
    assert torch.equal(ev[1][0], ev[1][0])


def test_dataset_pickles_for_worker_processes(flat_folder):
    ds = build_dataset(DataConfig("folder", str(flat_folder), (8, 8), 1, "train", augment=False))
    ds2 = pickle.loads(pickle.dumps(ds))
    assert torch.equal(ds[0][0], ds2[0][0])


# --- error cases ----------------------------------------------------------------------------------------


def _expect_error(cfg, *fragments):
    with pytest.raises(DataError) as e:
        build_dataset(cfg)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_folder_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    _expect_error(DataConfig("folder", str(missing)), str(missing), "does not exist", "png")
    _expect_error(DataConfig("folder", None), "path")
    a_file = tmp_path / "file.png"
    _save(a_file, (8, 8), "L")
    _expect_error(DataConfig("folder", str(a_file)), str(a_file), "not a directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_error(DataConfig("folder", str(empty)), str(empty), "empty")
    junk = tmp_path / "junk"
    (junk / "sub").mkdir(parents=True)
    (junk / "readme.txt").write_text("x")
    (junk / "sub" / "data.csv").write_text("1,2")
    _expect_error(DataConfig("folder", str(junk)), str(junk), "no image files", "png")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for k in range(4):
        (corrupt / f"img{k}.png").write_bytes(b"\x89PNG not really" * k)
    (corrupt / "img.jpg").write_bytes(b"")
    msg = _expect_error(DataConfig("folder", str(corrupt)), str(corrupt), "no readable image")
    assert "img" in msg  # names a file that failed
    partly = tmp_path / "partly"
    partly.mkdir()
    (partly / "a.png").write_bytes(b"broken")
    _save(partly / "b.png", (8, 8), "RGB")
    assert len(build_dataset(DataConfig("folder", str(partly), limit=2))) == 2  # one readable file is enough
    one = tmp_path / "one"
    one.mkdir()
    _save(one / "a.png", (8, 8), "L")
    assert len(build_dataset(DataConfig("folder", str(one), split="train"))) == 1
    _expect_error(DataConfig("folder", str(one), split="test"), str(one), "empty")


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(source="imagenet"), "unknown data source"),
        (dict(source="folder", in_chans=2), "in_chans"),
        (dict(source="folder", split="val"), "split"),
        (dict(source="folder", img_size=(0, 16)), "img_size"),
        (dict(source="folder", img_size=(16, 16, 3)), "img_size"),
        (dict(source="folder", limit=0), "limit"),
    ],
)
def test_bad_config(tmp_path, kwargs, fragment):
    _save(tmp_path / "a.png", (8, 8), "L")
    _expect_error(DataConfig(**{"path": str(tmp_path), **kwargs}), fragment)
    assert set(SOURCES) == {"folder", "fashion-mnist", "elpv"}


def test_corrupt_file_mid_epoch_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "mixed"
    root.mkdir()
    for k in range(9):
        _save(root / f"img{k}.png", (20 + k, 24), "RGB", seed=k)
    ds = build_dataset(DataConfig("folder", str(root), (16, 16), 3, "train", augment=True))
    assert len(ds) == 7
    # Damage two files after build_dataset checked the folder: one truncated, one garbage.
    bad_trunc, bad_junk = ds.files[2], ds.files[4]
    with open(bad_trunc, "rb") as f:
        head = f.read(60)
    with open(bad_trunc, "wb") as f:
        f.write(head)
    with open(bad_junk, "wb") as f:
        f.write(os.urandom(300))
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=False, collate_fn=collate_skip_corrupt)
    with caplog.at_level(logging.WARNING, logger="hpm_pretrain.data"):
        for _epoch in range(2):
            seen, skipped_total = [], 0
            for imgs, labels, index, skipped in loader:
                assert imgs.dtype == torch.float32 and imgs.shape[1:] == (3, 16, 16)
                assert labels.dtype == index.dtype == torch.int64
                assert len(imgs) == len(labels) == len(index)
                assert (labels == -1).all()
                seen += index.tolist()
                skipped_total += skipped
            assert skipped_total == 2
            assert seen == [0, 1, 3, 5, 6]
    warnings = [r.getMessage() for r in caplog.records if r.name == "hpm_pretrain.data"]
    assert len(warnings) == 2  # once per file, not once per epoch
    assert any(bad_trunc in w for w in warnings) and any(bad_junk in w for w in warnings)


def test_collate_all_corrupt_and_mixed():
    imgs, labels, index, skipped = collate_skip_corrupt([None, None, None])
    assert imgs.shape[0] == labels.shape[0] == index.shape[0] == 0 and skipped == 3
    assert labels.dtype == index.dtype == torch.int64
    item = (torch.zeros(1, 4, 6), 2, 7)
    imgs, labels, index, skipped = collate_skip_corrupt([None, item, item])
    assert imgs.shape == (2, 1, 4, 6) and labels.tolist() == [2, 2] and index.tolist() == [7, 7] and skipped == 1


# --- Fashion-MNIST IDX reader --------------------------------------------------------------------------


def _idx_bytes(arr, magic=None):
    arr = np.asarray(arr, dtype=np.uint8)
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def _write_idx(path, payload, gz):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def _fake_fmnist(root, gz, n_train=12, n_test=5, size=28):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = np.arange(n) % 10
        img_name, lbl_name = D.FASHION_MNIST_FILES[split]
        _write_idx(root / img_name, _idx_bytes(imgs), gz)
        _write_idx(root / lbl_name, _idx_bytes(labels), gz)
        out[split] = (imgs, labels)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx_reader(tmp_path, gz):
    root = tmp_path / ("gz" if gz else "raw")
    truth = _fake_fmnist(root, gz)
    for split in ("train", "test"):
        imgs, labels = D.load_fashion_mnist(str(root), split)
        np.testing.assert_array_equal(imgs, truth[split][0])
        np.testing.assert_array_equal(labels, truth[split][1])
        for in_chans in (1, 3):
            cfg = DataConfig("fashion-mnist", str(root), (32, 48), in_chans, split, augment=False)
            ds = build_dataset(cfg)
            assert len(ds) == len(labels) and ds.label_names[0] == "T-shirt/top" and len(ds.label_names) == 10
            x, label, index = ds[3]
            assert x.shape == (in_chans, 32, 48) and x.dtype == torch.float32
            assert label == labels[3] and index == 3
            assert normalisation(cfg) == (D.FASHION_MNIST_MEAN * in_chans, D.FASHION_MNIST_STD * in_chans)
    limited = build_dataset(DataConfig("fashion-mnist", str(root), (32, 32), 1, "train", limit=4))
    assert len(limited) == 4 and limited.labels.tolist() == [0, 1, 2, 3]
    x = build_dataset(DataConfig("fashion-mnist", str(root), (28, 28), 1, "test", augment=False))[0][0]
    mean, std = D.FASHION_MNIST_MEAN[0], D.FASHION_MNIST_STD[0]
    torch.testing.assert_close(x[0] * std + mean, torch.from_numpy(truth["test"][0][0] / 255.0).float(), atol=1e-5, rtol=0)


def test_fashion_mnist_bad_files(tmp_path):
    imgs = np.zeros((4, 28, 28), np.uint8)
    labels = np.zeros(4, np.uint8)
    root = tmp_path / "bad"
    root.mkdir()
    tr_img, tr_lbl = D.FASHION_MNIST_FILES["train"]

    def write(img_payload, lbl_payload):
        for p in root.iterdir():
            p.unlink()
        _write_idx(root / tr_img, img_payload, gz=True)
        _write_idx(root / tr_lbl, lbl_payload, gz=False)

    cfg = DataConfig("fashion-mnist", str(root), (32, 32), 1, "train")
    write(_idx_bytes(imgs, magic=0x0000_0804), _idx_bytes(labels))
    _expect_error(cfg, "magic number", tr_img)
    write(_idx_bytes(imgs), _idx_bytes(labels, magic=0x0000_0803))
    _expect_error(cfg, "magic number", tr_lbl)
    write(_idx_bytes(imgs)[:-10], _idx_bytes(labels))
    _expect_error(cfg, "header says")
    write(_idx_bytes(imgs)[:10], _idx_bytes(labels))
    _expect_error(cfg, "truncated")
    write(_idx_bytes(imgs), _idx_bytes(labels[:3]))
    _expect_error(cfg, "4 images but", "3 labels")
    write(_idx_bytes(imgs), _idx_bytes(labels + 10))
    _expect_error(cfg, "label 10")
    (root / (tr_img + ".gz")).write_bytes(b"not gzip at all")
    _expect_error(cfg, "cannot read IDX file")
    _expect_error(
        DataConfig("fashion-mnist", str(root), split="test"), "t10k-images-idx3-ubyte", "apt-get install dataset-fashion-mnist"
    )
    missing = tmp_path / "absent"
    _expect_error(DataConfig("fashion-mnist", str(missing)), str(missing), "apt-get install dataset-fashion-mnist", "--data-path")


@pytest.mark.skipif(not os.path.isdir(REAL_FMNIST), reason=f"{REAL_FMNIST} absent (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    tr = build_dataset(DataConfig("fashion-mnist", img_size=(32, 32), in_chans=1, split="train"))
    te = build_dataset(DataConfig("fashion-mnist", img_size=(32, 32), in_chans=1, split="test", augment=False))
    assert len(tr) == 60000 and len(te) == 10000
    assert np.bincount(tr.labels, minlength=10).tolist() == [6000] * 10
    assert np.bincount(te.labels, minlength=10).tolist() == [1000] * 10
    x, label, _ = te[0]
    assert x.shape == (1, 32, 32) and 0 <= label < 10
    # the constants were measured on these files
    raw = tr.images.astype(np.float64) / 255.0
    assert abs(raw.mean() - D.FASHION_MNIST_MEAN[0]) < 1e-3 and abs(raw.std() - D.FASHION_MNIST_STD[0]) < 1e-3


# --- ELPV -------------------------------------------------------------------------------------------------


def test_elpv_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # makes `import elpv_dataset` raise ImportError
    msg = _expect_error(DataConfig("elpv", img_size=(32, 32)), "pip install elpv-dataset")
    assert "non-commercial" in msg


@pytest.mark.skipif(not HAS_ELPV, reason="elpv-dataset is not installed (pip install elpv-dataset)")
def test_elpv_split_labels_and_items():
    tr = build_dataset(DataConfig("elpv", img_size=(48, 32), in_chans=1, split="train", augment=True))
    te = build_dataset(DataConfig("elpv", img_size=(48, 32), in_chans=3, split="test", augment=False))
    assert len(tr) + len(te) == 2624
    assert set(tr.files).isdisjoint(te.files)
    assert len(set(tr.files) | set(te.files)) == 2624
    assert tr.label_names == te.label_names == ["functional", "defective"]
    for ds in (tr, te):
        assert ds.defect_probability.dtype == np.float64 and len(ds.defect_probability) == len(ds)
        np.testing.assert_array_equal(ds.labels, (ds.defect_probability >= 0.5).astype(np.int64))
        assert set(np.unique(ds.defect_probability).round(3).tolist()) == {0.0, 0.333, 0.667, 1.0}
    # stratified: every probability level (hence each label) is split 80/20
    for p in np.unique(tr.defect_probability):
        n_tr, n_te = int((tr.defect_probability == p).sum()), int((te.defect_probability == p).sum())
        assert abs(n_te - 0.2 * (n_tr + n_te)) <= 0.5
    for lab in (0, 1):
        frac = (te.labels == lab).sum() / ((te.labels == lab).sum() + (tr.labels == lab).sum())
        assert abs(frac - 0.2) < 0.005
    # deterministic
    again = build_dataset(DataConfig("elpv", img_size=(48, 32), in_chans=1, split="train"))
    assert again.files == tr.files
    # a few items at the requested size, labelled by the >= 0.5 rule
    for ds, c in ((tr, 1), (te, 3)):
        for i in (0, 1, len(ds) - 1):
            x, label, index = ds[i]
            assert x.shape == (c, 48, 32) and x.dtype == torch.float32 and index == i
            assert label == int(ds.defect_probability[i] >= 0.5)
    limited = build_dataset(DataConfig("elpv", img_size=(16, 16), split="test", limit=10))
    assert limited.files == te.files[:10] and len(limited.defect_probability) == 10
    assert normalisation(DataConfig("elpv", in_chans=3)) == (D.ELPV_MEAN * 3, D.ELPV_STD * 3)
