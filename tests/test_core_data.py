import gzip
import math
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from randmask.core.errors import DataError
from randmask.core.stats import wilson_interval
from randmask.experiments.data import CLASSES, load_arrays, load_image_folder, load_tensors


def test_cifar10_test_split_in_official_order(data_dir):
    x, y = load_tensors("cifar10", "test", n=100)
    assert x.shape == (100, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # the official test_batch begins cat, ship, ship, ...
    assert CLASSES["cifar10"][3] == "cat"


def test_mnist_and_tiny_imagenet_shapes(data_dir):
    x, y = load_arrays("mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y[:5].tolist() == [7, 2, 1, 0, 4]
    x, y = load_arrays("tinyimagenet10", "test")
    assert x.shape == (500, 3, 64, 64) and sorted(set(y.tolist())) == list(range(10))


def _write_idx(path, array, magic):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.tobytes())


def test_torchvision_mnist_layout_is_read(tmp_path, data_dir):
    x, y = load_arrays("mnist", "test")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for _split, prefix in (("test", "t10k"), ("train", "train")):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", x[:20, 0], 0x803)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", y[:20].astype(np.uint8), 0x801)
        for suffix in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            with gzip.open(raw / f"{prefix}-{suffix}.gz") as src:
                (raw / f"{prefix}-{suffix}").write_bytes(src.read())
    tx, ty = load_arrays("mnist", "test", root=tmp_path)
    assert np.array_equal(tx, x[:20]) and np.array_equal(ty, y[:20])


def test_image_folder_and_bad_images(tmp_path):
    for label, name in enumerate(["cat", "dog"]):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 50 * label + i, np.uint8)).save(tmp_path / "train" / name / f"{i}.png")
    x, y, names = load_image_folder(tmp_path / "train", size=32)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1] and names == ["cat", "dog"]
    (tmp_path / "train" / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image"):
        load_image_folder(tmp_path / "train")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no cifar10 test data"):
        load_arrays("cifar10", "test", root=tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_arrays("svhn", "test")
    with pytest.raises(DataError, match="unknown split"):
        load_arrays("cifar10", "valid")


def test_wilson_interval_textbook_values():
    # Newcombe (1998), Table I: 81 of 263 -> 0.2553 to 0.3662; 15 of 148 -> 0.0624 to 0.1605
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    low, high = wilson_interval(15, 148)
    assert (round(low, 4), round(high, 4)) == (0.0624, 0.1605)
    low, high = wilson_interval(0, 10)  # Newcombe: 0 to 0.2775
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


def test_wilson_interval_agrees_with_the_closed_form():
    # the score interval as a formula, the reference for the statsmodels-backed wilson_interval
    rng = np.random.default_rng(4)
    for _ in range(500):
        n = int(rng.integers(1, 5000))
        k, z = int(rng.integers(0, n + 1)), float(rng.choice([1.0, 1.6448536269514722, 1.959963984540054, 3.0]))
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low, high = wilson_interval(k, n, z)
        assert low == pytest.approx(max(0.0, centre - half), abs=1e-12)
        assert high == pytest.approx(min(1.0, centre + half), abs=1e-12)
        assert low <= p <= high and (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_shipped_sample_equals_the_first_test_images(tmp_path, monkeypatch, data_dir):
    from randmask.experiments import data

    real_x, real_y = data.load_test_sample("cifar10", n=1000)
    monkeypatch.setenv("RANDMASK_DATA", str(tmp_path))  # no data folder: the app falls back to assets/
    x, y = data.load_test_sample("cifar10", n=1000)
    assert torch.equal(x, real_x) and torch.equal(y, real_y)
    with pytest.raises(DataError, match="only 1000 sample images"):
        data.load_test_sample("cifar10", n=1001)
