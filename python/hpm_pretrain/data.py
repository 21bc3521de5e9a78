"""Datasets for the reference HPM / MAE trainer: an image folder, Fashion-MNIST IDX files, ELPV solar cells.

Entry point: ``build_dataset(DataConfig(...))``. Every item is ``(img, label, index)``:

* ``img``: float32 tensor (C, H, W), C = ``cfg.in_chans``, (H, W) = ``cfg.img_size``, normalised with
  ``normalisation(cfg)``;
* ``label``: int class (folder with class sub-folders, Fashion-MNIST), for ELPV 1 if the defect
  probability is >= 0.5 else 0, and -1 for a flat folder (no labels);
* ``index``: the item's position in this dataset (0 .. len - 1), after split and limit.

A folder file that cannot be decoded when it is met (mid-epoch) gives ``None`` instead of an item
(with one warning per file on the ``hpm_pretrain.data`` logger); ``collate_skip_corrupt`` drops those
and reports how many it dropped. Everything that can be checked before training (paths, file
formats, at least one readable image) is checked by ``build_dataset``, which raises ``DataError``.

Determinism: the datasets hold no random state. The train/test split of folders and ELPV is a fixed
seeded permutation (``SPLIT_SEED``); the only randomness is the augmentation (torchvision v2
``RandomResizedCrop`` / ``RandomHorizontalFlip``), which draws from torch's global RNG (``torch.rand``,
``torch.randint``, ``Tensor.uniform_``), so seeding or restoring ``torch``'s RNG state (per DataLoader
worker: torch seeds each worker from the base seed) reproduces it.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

logger = logging.getLogger("hpm_pretrain.data")

SOURCES = ("folder", "fashion-mnist", "elpv")
SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DEFAULT_FASHION_MNIST_PATH = "/usr/share/datasets/fashion-mnist"
SPLIT_SEED = 0  # seed of the deterministic 80/20 split of folders and ELPV
TEST_FRACTION = 0.2

# --- normalisation constants --------------------------------------------------------------------
# RGB image folders: the ImageNet statistics (what MAE / HPM and timm's ViTs use): arbitrary user
# photos are closer to ImageNet than to anything we could measure once.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Grey image folders: the same statistics carried to luma (PIL's "L" = 0.299 R + 0.587 G + 0.114 B):
# mean = 0.299*0.485 + 0.587*0.456 + 0.114*0.406; std = the same weighted sum of the channel stds (an
# upper bound of the luma std; fine for normalisation, which only needs the right scale).
IMAGENET_GREY_MEAN = (0.4590,)
IMAGENET_GREY_STD = (0.2257,)
# Fashion-MNIST: pixel / 255 over all 60000 training images (28x28), measured once with
#   python -c "import gzip,numpy as np; x=np.frombuffer(gzip.open('/usr/share/datasets/fashion-mnist/\
#   train-images-idx3-ubyte.gz').read(),np.uint8,offset=16)/255; print(x.mean(), x.std())"
#   -> 0.2860405969887955 0.35302424451492254
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# ELPV: pixel / 255 over all 2624 cells (300x300, mode "L"; label-free statistics, so measured on
# the whole set rather than one split), measured once with
#   python -c "import os,numpy as np,elpv_dataset as e; from PIL import Image; r=os.path.join(\
#   os.path.dirname(e.__file__),'data'); x=np.stack([np.asarray(Image.open(os.path.join(r,l.split()[0])))\
#   for l in open(os.path.join(r,'labels.csv'))])/255; print(x.mean(), x.std())"
#   -> 0.5967516507253302 0.1606185201469458
ELPV_MEAN = (0.5968,)
ELPV_STD = (0.1606,)
# Grey statistics are repeated over the 3 channels when a grey source is read with in_chans=3
# (the grey image is replicated to R = G = B, so per-channel statistics are the grey ones).

FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
ELPV_LABELS = ["functional", "defective"]  # label = int(defect probability >= 0.5)
ELPV_INSTALL_HINT = (
    "install it with `pip install elpv-dataset` (or `pip install hpm_kernels[train]`); its images are "
    "licensed CC BY-NC-SA 4.0 (non-commercial use only)"
)


class DataError(ValueError):
    """A dataset problem found before training starts (bad path, no readable image, bad file)."""


@dataclass(frozen=True)
class DataConfig:
    source: str  # one of SOURCES
    path: str | None = None  # folder root / fashion-mnist dir (default DEFAULT_FASHION_MNIST_PATH) / ignored for elpv
    img_size: tuple[int, int] = (224, 224)  # (H, W)
    in_chans: int = 3  # 1 (grey, PIL "L") or 3 (RGB)
    split: str = "train"  # "train" | "test"
    augment: bool = True  # MAE augmentation; False: cover-resize + center crop (eval / visualize)
    limit: int | None = None  # only the first `limit` items of the split


# --- config checks and transforms ------------------------------------------------------------------


def _img_size(cfg: DataConfig) -> tuple[int, int]:
    size = cfg.img_size
    if isinstance(size, int) and not isinstance(size, bool):
        size = (size, size)
    try:
        h, w = (int(s) for s in size)
        ok = len(tuple(size)) == 2 and all(int(s) == s for s in size)
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise DataError(f"img_size must be (H, W) with positive ints, got {cfg.img_size!r}")
    return h, w


def _check_config(cfg: DataConfig) -> tuple[int, int]:
    if cfg.source not in SOURCES:
        raise DataError(f"unknown data source {cfg.source!r}: expected one of {', '.join(SOURCES)}")
    if cfg.in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 (grey) or 3 (RGB), got {cfg.in_chans!r}")
    if cfg.split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
    if cfg.limit is not None and (isinstance(cfg.limit, bool) or not isinstance(cfg.limit, int) or cfg.limit < 1):
        raise DataError(f"limit must be a positive int or None, got {cfg.limit!r}")
    return _img_size(cfg)


def normalisation(cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel (length ``cfg.in_chans``) used to normalise images of ``cfg``."""
    if cfg.in_chans not in (1, 3):
        raise DataError(f"in_chans must be 1 (grey) or 3 (RGB), got {cfg.in_chans!r}")
    if cfg.source == "folder":
        return (IMAGENET_MEAN, IMAGENET_STD) if cfg.in_chans == 3 else (IMAGENET_GREY_MEAN, IMAGENET_GREY_STD)
    if cfg.source == "fashion-mnist":
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    elif cfg.source == "elpv":
        mean, std = ELPV_MEAN, ELPV_STD
    else:
        raise DataError(f"unknown data source {cfg.source!r}: expected one of {', '.join(SOURCES)}")
    return mean * cfg.in_chans, std * cfg.in_chans


class CoverResizeCenterCrop:
    """Deterministic eval transform: resize (bicubic, keeping the aspect ratio) so that the image just
    covers (H, W), then center-crop (H, W). No border is cut beyond what the aspect ratio forces (a
    crop ratio of 1: Fashion-MNIST items and ELPV cells fill the frame, so their edges matter)."""

    def __init__(self, size: tuple[int, int]):
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        iw, ih = img.size
        scale = max(h / ih, w / iw)
        nh, nw = max(h, round(ih * scale)), max(w, round(iw * scale))
        if (nw, nh) != (iw, ih):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        top, left = (nh - h) // 2, (nw - w) // 2
        if (nw, nh) != (w, h):
            img = img.crop((left, top, left + w, top + h))
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size})"


def build_transform(cfg: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (already in cfg.in_chans' mode) -> normalised float32 tensor (C, H, W).

    augment=True: RandomResizedCrop(img_size, scale=(0.2, 1.0), bicubic) + RandomHorizontalFlip (the
    MAE recipe); augment=False: CoverResizeCenterCrop(img_size). Random draws use torch's global RNG.
    """
    from torchvision.transforms import v2

    size = _img_size(cfg)
    mean, std = normalisation(cfg)
    if cfg.augment:
        geometric = [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=v2.InterpolationMode.BICUBIC),
            v2.RandomHorizontalFlip(),
        ]
    else:
        geometric = [CoverResizeCenterCrop(size)]
    return v2.Compose(
        [
            *geometric,
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    """Convert any PIL image to "L" or "RGB", scaling 16-bit / 32-bit grey to 8 bits (PIL clips)."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = float(a.max()) if a.size else 0.0
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "F" and peak <= 1.0:
            top = 1.0
        else:  # 32-bit int or float of unknown range: 8-bit if it fits, else 16-bit
            top = 255.0 if peak <= 255.0 else 65535.0
        img = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8))
    elif img.mode in ("P", "PA") and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def _open_image(path: str, mode: str) -> Image.Image:
    """Open and fully decode an image file as `mode` ("L" / "RGB"); raises on any decoding problem."""
    with Image.open(path) as im:
        im.seek(0)  # first frame of multi-frame TIFFs
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block: keep the pixels as stored
            pass
        return _to_mode(im, mode).copy()


def _split_indices(strata: np.ndarray, split: str) -> np.ndarray:
    """Deterministic stratified 80/20 split. Returns the split's indices in a fixed seeded order (so
    `limit` takes a roughly stratified sample). Per stratum of n items, round(0.2 n) (halves up) go to
    test, but never all of them."""
    rng = np.random.default_rng(SPLIT_SEED)
    n = len(strata)
    perm = rng.permutation(n)
    is_test = np.zeros(n, dtype=bool)
    for value in np.unique(strata):
        members = perm[strata[perm] == value]  # in permutation order
        k = min(math.floor(len(members) * TEST_FRACTION + 0.5), len(members) - 1)
        is_test[members[:k]] = True
    keep = is_test[perm] if split == "test" else ~is_test[perm]
    return perm[keep]


# --- datasets ------------------------------------------------------------------------------------------


class _ImageDataset(torch.utils.data.Dataset):
    """Shared item logic: subclasses implement `_load(i) -> PIL image in self.mode` and `_describe(i)`."""

    label_names: list[str] | None
    labels: np.ndarray  # int64 (len,), -1 = no label

    def __init__(self, cfg: DataConfig, labels: np.ndarray):
        self.cfg = cfg
        self.mode = "L" if cfg.in_chans == 1 else "RGB"
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = build_transform(cfg)
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def _load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def _describe(self, i: int) -> str:
        return f"item {i}"

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int] | None:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} items")
        i = int(i) % len(self)
        try:
            img = self._load(i)
        except Exception as e:  # a corrupt / vanished file mid-epoch: skip it, never crash
            name = self._describe(i)
            if name not in self._warned:
                self._warned.add(name)
                logger.warning("skipping unreadable image %s: %s: %s", name, type(e).__name__, e)
            return None
        x = self.transform(img).as_subclass(torch.Tensor)
        return x, int(self.labels[i]), i

    def _verify_readable(self, where: str) -> None:
        """Decode items in order until one works (normally just the first): DataError if none does."""
        first_error = None
        for i in range(len(self)):
            try:
                self._load(i)
                return
            except Exception as e:
                if first_error is None:
                    first_error = f"{self._describe(i)}: {type(e).__name__}: {e}"
        raise DataError(f"no readable image in {where}: all {len(self)} files failed to open (first: {first_error})")


class ImageFolderDataset(_ImageDataset):
    """Images in a folder: flat (label -1) or one sub-folder per class (searched recursively)."""

    def __init__(self, cfg: DataConfig, files: Sequence[str], labels: np.ndarray, label_names: list[str] | None):
        super().__init__(cfg, labels)
        self.root = cfg.path
        self.files = list(files)
        self.label_names = label_names

    def _load(self, i: int) -> Image.Image:
        return _open_image(self.files[i], self.mode)

    def _describe(self, i: int) -> str:
        return self.files[i]


class FashionMNISTDataset(_ImageDataset):
    """Fashion-MNIST from its IDX files (28x28 uint8 grey), held in memory (47 MB for the train set)."""

    label_names = FASHION_MNIST_LABELS

    def __init__(self, cfg: DataConfig, images: np.ndarray, labels: np.ndarray, source_index: np.ndarray):
        super().__init__(cfg, labels)
        self.images = images
        self.source_index = source_index  # position of each item in the IDX file

    def _load(self, i: int) -> Image.Image:
        return _to_mode(Image.fromarray(self.images[i]), self.mode)

    def _describe(self, i: int) -> str:
        return f"fashion-mnist {self.cfg.split} item {int(self.source_index[i])}"


class ELPVDataset(_ImageDataset):
    """ELPV solar cells (300x300 grey), read lazily from the installed `elpv_dataset` package."""

    label_names = ELPV_LABELS

    def __init__(
        self,
        cfg: DataConfig,
        root: str,
        files: Sequence[str],
        defect_probability: np.ndarray,
        cell_type: np.ndarray,
        source_index: np.ndarray,
    ):
        super().__init__(cfg, (np.asarray(defect_probability) >= 0.5).astype(np.int64))
        self.root = root
        self.files = list(files)  # relative to root, e.g. images/cell0001.png
        self.defect_probability = np.asarray(defect_probability, dtype=np.float64)
        self.cell_type = np.asarray(cell_type)  # "mono" / "poly"
        self.source_index = source_index  # row in labels.csv

    def _load(self, i: int) -> Image.Image:
        return _open_image(os.path.join(self.root, self.files[i]), self.mode)

    def _describe(self, i: int) -> str:
        return os.path.join(self.root, self.files[i])


# --- builders ------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(top: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
    return out


def _apply_split_and_limit(cfg: DataConfig, strata: np.ndarray, where: str) -> np.ndarray:
    idx = _split_indices(strata, cfg.split)
    if cfg.limit is not None:
        idx = idx[: cfg.limit]
    if len(idx) == 0:
        raise DataError(
            f"the {cfg.split!r} split of {where} is empty ({len(strata)} images in all; the test split holds "
            f"{TEST_FRACTION:.0%} of each class, rounded, so it needs at least 3 images in some class)"
        )
    return idx


def _build_folder(cfg: DataConfig) -> ImageFolderDataset:
    exts = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
    if cfg.path is None:
        raise DataError(f"the folder source needs a path (--data-path): a folder of {exts} images")
    root = os.path.abspath(os.path.expanduser(str(cfg.path)))
    if not os.path.exists(root):
        raise DataError(f"image folder {root} does not exist: expected a folder of {exts} images")
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} is not a directory: expected a folder of {exts} images")
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list image folder {root}: {e}") from e
    if not entries:
        raise DataError(f"image folder {root} is empty: expected {exts} images, flat or in class sub-folders")
    flat = [e.path for e in entries if e.is_file() and _is_image(e.name)]
    classes, files, labels = [], [], []
    for e in entries:
        if e.is_dir() and not e.name.startswith("."):
            found = _walk_images(e.path)
            if found:
                files += found
                labels += [len(classes)] * len(found)
                classes.append(e.name)
    if classes:
        if flat:
            logger.warning(
                "image folder %s has class sub-folders (%s) and %d images at its top level: ignoring the top-level images",
                root,
                ", ".join(classes),
                len(flat),
            )
        label_names: list[str] | None = classes
    else:
        files, labels, label_names = flat, [-1] * len(flat), None
    if not files:
        raise DataError(f"image folder {root} has no image files: expected {exts} files (any case), flat or in class sub-folders")
    labels_arr = np.asarray(labels, dtype=np.int64)
    idx = _apply_split_and_limit(cfg, labels_arr, f"image folder {root}")
    ds = ImageFolderDataset(cfg, [files[i] for i in idx], labels_arr[idx], label_names)
    ds.root = root
    ds._verify_readable(f"image folder {root}")
    return ds


def _read_idx(path: str, ndim: int) -> np.ndarray:
    """Read an IDX file (raw or gzip) of unsigned bytes with `ndim` dimensions, checking its header."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    expected_magic = 0x0800 | ndim  # 0x00 0x00, type 0x08 (unsigned byte), number of dimensions
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"IDX file {path} is truncated: {len(data)} bytes, shorter than its header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"IDX file {path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            f"(unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    dims = [int.from_bytes(data[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim)]
    header = 4 + 4 * ndim
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"IDX file {path}: header says {' x '.join(map(str, dims))} = {expected} bytes of data, found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: str, name: str) -> str:
    for candidate in (name, name + ".gz"):
        p = os.path.join(root, candidate)
        if os.path.isfile(p):
            return p
    raise DataError(
        f"Fashion-MNIST directory {root} has no {name} or {name}.gz; expected the IDX files "
        f"{', '.join(n + '(.gz)' for pair in FASHION_MNIST_FILES.values() for n in pair)} "
        "(`apt-get install dataset-fashion-mnist` installs them to "
        f"{DEFAULT_FASHION_MNIST_PATH}, or pass --data-path)"
    )


def load_fashion_mnist(root: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of a Fashion-MNIST split, from IDX files in root."""
    img_name, lbl_name = FASHION_MNIST_FILES[split]
    img_path, lbl_path = _find_idx(root, img_name), _find_idx(root, lbl_name)
    images = _read_idx(img_path, 3)
    labels = _read_idx(lbl_path, 1)
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split}: {img_path} holds {len(images)} images but {lbl_path} {len(labels)} labels")
    if len(images) == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise DataError(f"Fashion-MNIST {split}: {img_path} holds no image (shape {images.shape})")
    if labels.max() >= len(FASHION_MNIST_LABELS):
        raise DataError(f"Fashion-MNIST {split}: {lbl_path} has label {int(labels.max())}, expected 0..9")
    return images, labels.astype(np.int64)


def _build_fashion_mnist(cfg: DataConfig) -> FashionMNISTDataset:
    root = os.path.abspath(os.path.expanduser(str(cfg.path or DEFAULT_FASHION_MNIST_PATH)))
    if not os.path.isdir(root):
        raise DataError(
            f"Fashion-MNIST directory {root} does not exist: `apt-get install dataset-fashion-mnist` (Debian / "
            f"Ubuntu) installs the IDX files to {DEFAULT_FASHION_MNIST_PATH}, or pass --data-path to a directory "
            "holding train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz) and "
            "t10k-labels-idx1-ubyte(.gz)"
        )
    images, labels = load_fashion_mnist(root, cfg.split)
    n = len(images) if cfg.limit is None else min(cfg.limit, len(images))
    # Files' own order (already shuffled across classes); slices are views, no copy.
    ds = FashionMNISTDataset(cfg, images[:n], labels[:n], np.arange(n))
    ds.root = root
    return ds


def elpv_data_dir() -> str:
    """The data directory of the installed `elpv_dataset` package (labels.csv + images/)."""
    try:
        import elpv_dataset
    except ImportError as e:
        raise DataError(
            f"the ELPV source needs the Python package elpv-dataset, which is not importable: {ELPV_INSTALL_HINT}"
        ) from e
    return os.path.join(os.path.dirname(os.path.abspath(elpv_dataset.__file__)), "data")


def read_elpv_labels(root: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(relative image paths, defect probabilities, cell types) from root/labels.csv (whitespace-separated)."""
    csv = os.path.join(root, "labels.csv")
    try:
        with open(csv, encoding="utf-8") as f:
            lines = [line.split() for line in f if line.strip()]
    except OSError as e:
        raise DataError(f"cannot read the ELPV labels {csv}: {e} ({ELPV_INSTALL_HINT})") from e
    files, probs, types = [], [], []
    for k, row in enumerate(lines):
        try:
            if len(row) != 3:
                raise ValueError(f"{len(row)} columns")
            files.append(row[0])
            probs.append(float(row[1]))
            types.append(row[2])
        except ValueError as e:
            raise DataError(f"ELPV labels {csv}, line {k + 1}: expected 'path probability type', got {row} ({e})") from e
    if not files:
        raise DataError(f"ELPV labels {csv} are empty")
    return files, np.asarray(probs, dtype=np.float64), np.asarray(types)


def _build_elpv(cfg: DataConfig) -> ELPVDataset:
    root = elpv_data_dir()
    if cfg.path is not None:
        logger.warning("the elpv source ignores path=%r: it reads the installed elpv-dataset package (%s)", cfg.path, root)
    files, probs, types = read_elpv_labels(root)
    # Stratified by the annotated defect probability (0, 1/3, 2/3, 1), which also stratifies the binary label.
    _, strata = np.unique(probs, return_inverse=True)
    idx = _apply_split_and_limit(cfg, strata, f"ELPV ({root})")
    ds = ELPVDataset(cfg, root, [files[i] for i in idx], probs[idx], types[idx], idx)
    ds._verify_readable(f"ELPV ({root})")
    return ds


def build_dataset(cfg: DataConfig) -> torch.utils.data.Dataset:
    """The dataset of `cfg`, checked before training: DataError on any problem found up front."""
    _check_config(cfg)
    if cfg.source == "folder":
        return _build_folder(cfg)
    if cfg.source == "fashion-mnist":
        return _build_fashion_mnist(cfg)
    return _build_elpv(cfg)


def in_memory_images(ds: torch.utils.data.Dataset) -> torch.Tensor | None:
    """Every image of ``ds`` decoded once, as one uint8 tensor (N, C, H, W) in ``ds.cfg.in_chans``'s
    mode, for the trainer's batched augmentation; None (with a log line saying why) when the images
    do not all decode or do not share one size. Fashion-MNIST is already in memory (no copy for
    grey; RGB is the grey image expanded, a view)."""
    if isinstance(ds, FashionMNISTDataset):
        grey = torch.from_numpy(np.array(ds.images, copy=True)).unsqueeze(1)
        return grey.expand(-1, ds.cfg.in_chans, -1, -1)
    if not isinstance(ds, _ImageDataset) or len(ds) == 0:
        return None
    arrays = []
    for i in range(len(ds)):
        try:
            a = np.asarray(ds._load(i))
        except Exception as e:
            logger.info("not holding the images in memory: %s does not decode (%s: %s)", ds._describe(i), type(e).__name__, e)
            return None
        if arrays and a.shape != arrays[0].shape:
            logger.info(
                "not holding the images in memory: %s is %s, %s is %s", ds._describe(0), arrays[0].shape, ds._describe(i), a.shape
            )
            return None
        arrays.append(a)
    stacked = torch.from_numpy(np.stack(arrays))
    return stacked.unsqueeze(1) if stacked.ndim == 3 else stacked.permute(0, 3, 1, 2)


def collate_skip_corrupt(batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """DataLoader collate_fn: drop None items (unreadable files) and stack the rest.

    Returns (imgs (B, C, H, W) float32, labels (B,) int64, index (B,) int64, skipped). When every item is
    None, B = 0 (imgs is an empty (0, 0, 0, 0) tensor, as the shape is unknown) and skipped = len(batch).
    """
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        empty = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, 0, 0, 0), empty, empty.clone(), skipped
    imgs = torch.stack([b[0] for b in good])
    labels = torch.tensor([int(b[1]) for b in good], dtype=torch.int64)
    index = torch.tensor([int(b[2]) for b in good], dtype=torch.int64)
    return imgs, labels, index, skipped
