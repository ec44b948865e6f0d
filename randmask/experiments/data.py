"""Data sets as in-memory uint8 tensors (N×C×H×W), from three kinds of source, tried in order:

1. the lab's offline `.npz` files under `data_root()/<dataset>/<split>.npz` (decompressed once, cached as .npy);
2. torchvision's standard layout under `data_root()` (CIFAR-10 / MNIST; `download=True` fetches it);
3. an image folder `data_root()/<dataset>/<split>/<class>/*.{png,jpg,jpeg}` (Tiny-ImageNet, ImageNet-style).

`data_root()` is $RANDMASK_DATA, else `../shared/data` beside the project checkout, else ~/.randmask/data;
decoded arrays are cached under $RANDMASK_DATA_CACHE (randmask.core.settings).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import torch

from randmask.core.data_arrays import validate_arrays
from randmask.core.datasets import CLASSES, DATASETS
from randmask.core.errors import DataError
from randmask.core.settings import data_cache_root, data_root, samples_root

SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
__all__ = ["CLASSES", "DATASETS", "data_root", "load_arrays", "load_image_folder", "load_tensors", "load_test_sample",
           "load_uint8", "pixel_mean", "sample_path", "write_sample"]


def cache_root() -> Path:
    """Where decoded arrays are kept ($RANDMASK_DATA_CACHE), created on first use."""
    root = data_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _check(dataset: str, split: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use 'train' or 'test'")


def _cached_npz(path: Path, key: str) -> np.ndarray:
    """One array of an .npz, decompressed once and kept as a memory-mappable .npy keyed by file identity."""
    stat = path.stat()
    tag = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{key}".encode()).hexdigest()[:16]
    cached = cache_root() / f"{path.parent.name}-{path.stem}-{key}-{tag}.npy"
    if cached.exists():
        return np.load(cached, mmap_mode="r")
    try:
        with np.load(path) as archive:
            array = archive[key]
    except Exception as exc:  # zipfile/lzma/KeyError: all mean the file is not what we expect
        raise DataError(f"cannot read {key!r} from {path}: {exc}") from exc
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, cached)
    return array


def check_arrays(x: np.ndarray, y: np.ndarray, dataset: str, source: Path | str,
                 layout: str = "NHWC") -> tuple[np.ndarray, np.ndarray]:
    """Images and labels as a source holds them, checked by the one data-file check (data_arrays) and returned
    as writable (uint8 N×C×H×W, int64 labels). Any problem is one DataError naming the source."""
    validate_arrays(x, y, dataset, source, layout)
    x, y = np.asarray(x), np.asarray(y)
    if layout == "NHWC":
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.array(x, order="C"), np.array(y, dtype=np.int64)  # writable copies of the memory maps


def _from_npz(dataset: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if dataset == "tinyimagenet10":
        return _tiny_from_npz(split, root)
    path = root / dataset / f"{split}.npz"
    if not path.exists():
        return None
    return check_arrays(_cached_npz(path, "x"), _cached_npz(path, "y"), dataset, path)


def _tiny_from_npz(split: str, root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    if split == "test":
        path = root / "tinyimagenet10" / "val.npz"
        if not path.exists():
            return None
        return check_arrays(_cached_npz(path, "x"), _cached_npz(path, "y"), "tinyimagenet10", path)
    path = root / "tinyimagenet10" / "jpeg.npz"
    if not path.exists():
        return None
    from PIL import Image

    buf, off = _cached_npz(path, "jpeg"), _cached_npz(path, "offsets")
    labels, split_ids = _cached_npz(path, "y"), _cached_npz(path, "split")
    rows = np.flatnonzero(np.asarray(split_ids) == 0)
    x = np.stack([np.asarray(Image.open(io.BytesIO(bytes(buf[off[i]:off[i + 1]]))).convert("RGB"))
                  for i in rows]).transpose(0, 3, 1, 2)
    return check_arrays(x, np.asarray(labels)[rows], "tinyimagenet10", path, layout="NCHW")


def _from_torchvision(dataset: str, split: str, root: Path, download: bool) -> tuple[np.ndarray, np.ndarray] | None:
    import torchvision  # only for torchvision's layout: the lab's .npz files need none of its ~0.5 s import

    cls = {"cifar10": torchvision.datasets.CIFAR10, "mnist": torchvision.datasets.MNIST}.get(dataset)
    if cls is None:
        return None
    try:
        # torchvision verifies CIFAR-10's official MD5 sums before reading its batch files
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        return None
    x = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else ds.data
    targets = ds.targets.numpy() if isinstance(ds.targets, torch.Tensor) else np.asarray(ds.targets)
    return check_arrays(x, targets, dataset, root / cls.__name__)


def load_image_folder(folder: str | Path, size: int | None = None,
                      classes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`folder/<class>/*.png|jpg` -> (uint8 N×3×H×W, labels, class names); images resized to size×size if given."""
    from PIL import Image, UnidentifiedImageError

    folder = Path(folder)
    names = classes or sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise DataError(f"{folder} has no class sub-folders")
    images, labels = [], []
    for label, name in enumerate(names):
        for file in sorted((folder / name).rglob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                img = Image.open(file).convert("RGB")
            except (UnidentifiedImageError, OSError) as exc:
                raise DataError(f"cannot read image {file}: {exc}") from exc
            if size and img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(img))
            labels.append(label)
    if not images:
        raise DataError(f"no images found under {folder}")
    if len({im.shape for im in images}) > 1:
        raise DataError(f"images under {folder} differ in size; pass size= to resize them")
    return np.stack(images).transpose(0, 3, 1, 2).copy(), np.asarray(labels, dtype=np.int64), names


def load_arrays(dataset: str, split: str, *, root: str | Path | None = None,
                download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N×C×H×W, int64 labels) in the official order of the split."""
    _check(dataset, split)
    root = Path(root) if root else data_root()
    for source in (lambda: _from_npz(dataset, split, root),
                   lambda: _from_torchvision(dataset, split, root, download),
                   lambda: _from_folder(dataset, split, root)):
        found = source()
        if found is not None:
            return found
    raise DataError(f"no {dataset} {split} data under {root}: expected {dataset}/{split}.npz, torchvision's "
                    f"layout, or {dataset}/{split}/<class>/ images (set RANDMASK_DATA, or download=True)")


def _from_folder(dataset: str, split: str, root: Path) -> tuple[np.ndarray, np.ndarray] | None:
    folder = root / dataset / split
    if not folder.is_dir():
        return None
    x, y, _ = load_image_folder(folder, size=DATASETS[dataset][1])
    return check_arrays(x, y, dataset, folder, layout="NCHW")


_TENSOR_CACHE: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def load_uint8(dataset: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 image tensor and labels, memoised per process (the train split takes seconds to decode)."""
    key = (dataset, split, str(data_root()))
    if key not in _TENSOR_CACHE:
        x, y = load_arrays(dataset, split)
        _TENSOR_CACHE[key] = (torch.from_numpy(x), torch.from_numpy(y))
    return _TENSOR_CACHE[key]


def load_tensors(dataset: str, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0,1] (N×C×H×W) and int64 labels: the first n of the split (all if n is None)."""
    x, y = load_uint8(dataset, split)
    if n is not None:
        if n < 1:
            raise DataError(f"n must be positive, got {n}")
        x, y = x[:n], y[:n]
    return x.float().div_(255), y.clone()


def pixel_mean(dataset: str) -> torch.Tensor:
    """Per-pixel mean of the training set in [0,1] (C×H×W), the paper's only preprocessing."""
    x, _ = load_uint8(dataset, "train")
    # an exact integer sum (numpy's: 20x faster than torch's here), then one division: the value that
    # x.double().mean(0) gives, without a float64 copy of the whole set (1.2 GB for CIFAR-10, 1-2 s of CPU time
    # before every training run)
    return torch.from_numpy(x.numpy().sum(0, dtype=np.int64)).double().div(len(x)).div(255).float()


SAMPLE_SIZE = 1000


def sample_path(dataset: str) -> Path:
    return samples_root() / f"{dataset}-test-{SAMPLE_SIZE}.npz"


def write_sample(dataset: str) -> Path:
    """Ship the first SAMPLE_SIZE test images losslessly (uint8, no pickle) so the app runs with no data."""
    x, y = load_arrays(dataset, "test")
    samples_root().mkdir(parents=True, exist_ok=True)
    np.savez_compressed(sample_path(dataset), x=x[:SAMPLE_SIZE], y=y[:SAMPLE_SIZE])
    return sample_path(dataset)


def load_test_sample(dataset: str = "cifar10", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test images as uint8 N×C×H×W + labels: from the data folder when it has them, else from the
    sample shipped in assets/ (which holds the same first 1000 images)."""
    try:
        x, y = load_uint8(dataset, "test")
    except DataError:
        path = sample_path(dataset)
        if not path.exists():
            raise
        with np.load(path, allow_pickle=False) as archive:
            x, y = check_arrays(archive["x"], archive["y"], dataset, path, layout="NCHW")  # as write_sample kept it
            x, y = torch.from_numpy(x), torch.from_numpy(y)
        if n is not None and n > len(x):
            raise DataError(f"only {len(x)} sample images ship in {path}; set RANDMASK_DATA for more") from None
    return (x, y) if n is None else (x[:n], y[:n])
