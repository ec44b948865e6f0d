"""Adversarial sets on disk: read and validate them, and build clean / simply perturbed ones.

Layout and columns are defined in randmask.core.set_schema, which the attack code that writes sets uses too. It
and randmask.core.safe_files are all the study imports from randmask: both are standard-library only (no torch).
The study's images are lossless uint8 32x32 RGB PNGs; `attack == "clean"` marks unperturbed test images.

`read_set` trusts nothing in the folder: meta.csv is a regular file under a size cap; indices are ASCII
integers inside the CIFAR-10 test set; labels are 0-9; norms are finite and non-negative; every row has its
own image file; each image is an 8-bit RGB PNG of the expected size, checked from its header before any
pixel is decoded (a small file can declare a gigapixel image), then decoded and kept re-encoded as a plain
PNG (`plain_png`): a chunk that could make a browser draw other pixels is refused.
"""
from __future__ import annotations

import functools
import hashlib
import io
import math
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from randmask.core.data_arrays import validate_arrays
from randmask.core.errors import DataError
from randmask.core.safe_files import read_regular_file
from randmask.core.set_schema import CLEAN, META_FILE, PRED_PREFIX, REQUIRED_COLUMNS, image_file

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_TEST_SIZE = 10_000
MAX_META_BYTES = 32 << 20  # ~100 bytes a row: room for 300k rows
MAX_PNG_BYTES = 64 << 10  # a 32x32 RGB PNG is at most ~3.2 kB even uncompressed
MAX_TEXT = 200  # attack, source and model names
# linf/l2 are in 0-255 pixel units (sets written before the noise sets used them may hold [0, 1] values)
MAX_LINF, MAX_L2 = 255.0, 255.0 * math.sqrt(32 * 32 * 3)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary chunks that change nothing a browser draws; dropped on re-encoding. Any other ancillary chunk
# (acTL animation, tRNS, gAMA/iCCP/sRGB/cHRM/cICP colour handling, eXIf, ...) could make a browser show other
# pixels than the models were given, so the image is refused.
INERT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt", b"tIME", b"pHYs"})
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV Injection")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_INDEX = re.compile(r"[0-9]{1,9}", re.ASCII)
_CLASS = re.compile(r"[0-9](?:\.0+)?", re.ASCII)  # pandas may write an int column holding blanks as 3.0
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?", re.ASCII)


class SetError(ValueError):
    """An adversarial set folder is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class SetItem:
    test_index: int
    true_label: int
    source_model: str
    attack: str
    source_pred: int | None
    linf: float | None
    l2: float | None
    file: str
    png: bytes
    predictions: dict[str, int | None]

    @property
    def condition(self) -> str:
        return condition_name(self.attack, self.source_model)


def condition_name(attack: str, source_model: str) -> str:
    """`clean`, or `<attack>-vs-<source>` such as `PGD16-vs-0.9-Shallow`."""
    if attack == CLEAN:
        return CLEAN
    return f"{attack}-vs-{source_model}" if source_model else attack


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of a uint8 HxWx3 array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise SetError(f"expected a uint8 HxWx3 image, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def check_png_header(data: bytes, size: int) -> None:
    """Refuse anything but an 8-bit RGB (colour type 2) PNG of size x size, from its IHDR chunk alone."""
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR":
        raise SetError("not a PNG file")
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    if (width, height) != (size, size):
        raise SetError(f"PNG is {width}x{height}, expected {size}x{size}")
    if (depth, colour) != (8, 2):
        raise SetError(f"PNG has bit depth {depth} and colour type {colour}, expected 8-bit RGB (8, 2)")


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk, with lengths and CRCs checked; nothing may follow IEND."""
    if data[:8] != PNG_SIGNATURE:
        raise SetError("not a PNG file")
    chunks, at = [], 8
    while at < len(data):
        if at + 12 > len(data):
            raise SetError("PNG ends inside a chunk")
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        payload, crc = data[at + 8:at + 8 + length], data[at + 8 + length:at + 12 + length]
        if len(crc) != 4 or zlib.crc32(kind + payload) != struct.unpack(">I", crc)[0]:
            raise SetError(f"PNG chunk {kind!r} is cut short or fails its CRC")
        chunks.append((kind, payload))
        at += 12 + length
        if kind == b"IEND":
            break
    if not chunks or chunks[-1][0] != b"IEND" or at != len(data):
        raise SetError("PNG does not end with IEND (missing, or data after it)")
    return chunks


def plain_png(data: bytes, size: int) -> tuple[bytes, np.ndarray]:
    """(re-encoded PNG, pixels) of an 8-bit RGB PNG of size x size whose chunks change nothing a browser draws.

    The re-encoding holds only IHDR, IDAT and IEND, so what a participant's browser shows is exactly the array
    the models were given. Anything that could be drawn otherwise is refused: animation (acTL), transparency
    (tRNS), colour handling (gAMA, iCCP, sRGB, cHRM, ...), palette, grey, alpha or 16-bit images, a nonstandard
    compression, filter or interlace byte, and any chunk this code does not know."""
    check_png_header(data, size)
    chunks = png_chunks(data)
    compression, filtering, interlace = struct.unpack(">BBB", chunks[0][1][10:13])
    if (compression, filtering) != (0, 0) or interlace not in (0, 1) or len(chunks[0][1]) != 13:
        raise SetError(f"PNG header has compression {compression}, filter {filtering}, interlace {interlace} "
                       f"(expected 0, 0, 0 or 1)")
    kinds = [kind for kind, _ in chunks]
    for kind in kinds:
        if kind not in (b"IHDR", b"IDAT", b"IEND") and kind not in INERT_CHUNKS:
            shown = kind.decode("latin-1")
            what = "a critical" if kind[:1].isupper() else "an ancillary"
            raise SetError(f"PNG has {what} {shown!r} chunk that could change what a browser shows; "
                           f"save it as a plain 8-bit RGB PNG")
    if kinds.count(b"IHDR") != 1:
        raise SetError("PNG has more than one IHDR chunk")
    idat = [n for n, kind in enumerate(kinds) if kind == b"IDAT"]
    if not idat or idat != list(range(idat[0], idat[-1] + 1)):
        raise SetError("PNG image data (IDAT) is missing or not in one run")
    try:
        pixels = decode_png(data)
    except (OSError, ValueError, SyntaxError, zlib.error) as e:  # PIL reports damaged data in these
        raise SetError(f"PNG image data cannot be decoded ({' '.join(str(e).split())})") from None
    if pixels.shape != (size, size, 3):
        raise SetError(f"PNG decodes to {pixels.shape}, expected ({size}, {size}, 3)")
    return png_bytes(pixels), pixels


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            raise SetError(f"not a PNG ({im.format})")
        if im.mode != "RGB":
            raise SetError(f"PNG mode {im.mode}, expected RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _optional_int(value, what: str) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not (isinstance(value, int) and 0 <= value <= 9
                                       or isinstance(value, str) and _CLASS.fullmatch(value.strip())):
        raise SetError(f"{what}: {_shown(value)} is not a class index 0-9")
    return int(float(value))


def _optional_float(value, what: str, high: float) -> float | None:
    """Empty means unknown; otherwise a plain ASCII decimal, finite, from 0 to `high` ('nan' is refused)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) or not _DECIMAL.fullmatch(value.strip()):
        raise SetError(f"{what}: {_shown(value)} is not a non-negative decimal number")
    number = float(value)
    if not number <= high:
        raise SetError(f"{what}: {_shown(value)} is above {high:g}")
    return number


def _text(value: str, what: str) -> str:
    value = value.strip()
    if len(value) > MAX_TEXT or not value.isprintable():
        raise SetError(f"{what}: {_shown(value)} must be printable text of at most {MAX_TEXT} characters")
    if value.startswith(FORMULA_STARTS):
        raise SetError(f"{what}: {_shown(value)} starts with {value[0]!r}, which a spreadsheet would run as a formula")
    return value


def read_set(directory: str | Path, *, image_size: int = 32, dataset_size: int = CIFAR10_TEST_SIZE) -> list[SetItem]:
    """Read and validate one set folder; every problem names the file and row."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise SetError(f"{directory}: no meta.csv (is this an adversarial set folder?)")
    try:
        raw = read_regular_file(meta_path, MAX_META_BYTES, SetError)
        meta = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, encoding="utf-8")
    except OSError as e:
        raise SetError(f"{meta_path}: cannot read ({e.strerror or e})") from e
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SetError(f"{meta_path}: unreadable CSV ({' '.join(str(e).split())})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in meta.columns]
    if missing:
        raise SetError(f"{meta_path}: missing columns {missing}")
    if meta.empty:
        raise SetError(f"{meta_path}: no rows")
    root = directory.resolve()
    pred_columns = [c for c in meta.columns if c.startswith(PRED_PREFIX)]
    for column in pred_columns:
        _text(column, f"{meta_path} column name")
        _text(column[len(PRED_PREFIX):], f"{meta_path} model name in column {column!r}")
    items: list[SetItem] = []
    files: dict[Path, int] = {}
    for row_number, row in enumerate(meta.to_dict("records"), start=2):
        where = f"{meta_path}:{row_number}"
        if not _INDEX.fullmatch(row["index"].strip()):
            raise SetError(f"{where}: index {_shown(row['index'])} is not a whole number 0-{dataset_size - 1}")
        test_index = int(row["index"])
        if test_index >= dataset_size:
            raise SetError(f"{where}: index {test_index} is outside the CIFAR-10 test set (0-{dataset_size - 1})")
        true_label = _optional_int(row["true_label"], f"{where} true_label")
        if true_label is None:
            raise SetError(f"{where}: true_label is empty")
        attack = _text(row["attack"], f"{where} attack")
        if not attack:
            raise SetError(f"{where}: attack is empty")
        if not _text(row["file"], f"{where} file"):
            raise SetError(f"{where}: file is empty")
        image_path = (directory / row["file"]).resolve()
        if root not in image_path.parents:
            raise SetError(f"{where}: file {_shown(row['file'])} points outside the set folder")
        if image_path in files:
            raise SetError(f"{where}: image {_shown(row['file'])} is already used by row {files[image_path]}: "
                           f"one image file per row")
        files[image_path] = row_number
        if not image_path.exists():
            raise SetError(f"{where}: image {_shown(row['file'])} not found")
        try:
            # the study stores and serves the re-encoded image, never the file's own bytes
            data, _ = plain_png(read_regular_file(image_path, MAX_PNG_BYTES, SetError), image_size)
        except (SetError, OSError) as e:
            raise SetError(f"{where}: {row['file']}: {' '.join(str(e).split())}") from e
        items.append(SetItem(
            test_index=test_index,
            true_label=true_label,
            source_model=_text(row["source"], f"{where} source"),
            attack=attack,
            source_pred=_optional_int(row["source_pred"], f"{where} source_pred"),
            linf=_optional_float(row["linf"], f"{where} linf", MAX_LINF),
            l2=_optional_float(row["l2"], f"{where} l2", MAX_L2),
            file=row["file"],
            png=data,
            predictions={c[len(PRED_PREFIX):]: _optional_int(row[c], f"{where} {c}") for c in pred_columns},
        ))
    seen: set[tuple[str, int]] = set()
    for item in items:
        key = (item.condition, item.test_index)
        if key in seen:
            raise SetError(f"{meta_path}: test index {item.test_index} appears twice in condition {item.condition}")
        seen.add(key)
    return items


def write_set(directory: str | Path, rows: list[dict], images: list[np.ndarray]) -> Path:
    """Write a set folder from metadata rows (REQUIRED_COLUMNS minus `file`, plus any pred:* keys) and images."""
    directory = Path(directory)
    if len(rows) != len(images):
        raise SetError(f"{len(rows)} rows but {len(images)} images")
    (directory / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for row, image in zip(rows, images, strict=True):
        name = image_file(int(row["index"]))
        (directory / name).write_bytes(png_bytes(image))
        records.append({**row, "file": name})
    columns = list(REQUIRED_COLUMNS) + sorted({k for r in rows for k in r if k.startswith(PRED_PREFIX)})
    pd.DataFrame.from_records(records, columns=columns).to_csv(directory / META_FILE, index=False)
    return directory


@functools.lru_cache(maxsize=1)
def load_cifar10_test(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 test images (10000, 32, 32, 3) uint8 and labels, from $RANDMASK_DATA (cached: ~3 s to load)."""
    root = Path(data_dir or os.environ.get("RANDMASK_DATA", "../shared/data"))
    path = root / "cifar10" / "test.npz"
    if not path.is_file():
        raise SetError(f"CIFAR-10 test set not found at {path} (set RANDMASK_DATA)")
    try:
        with np.load(path, allow_pickle=False) as d:
            x, y = d["x"], d["y"]
    except (OSError, ValueError, KeyError, EOFError) as e:  # not an .npz of arrays x and y
        raise SetError(f"{path}: not a CIFAR-10 .npz with arrays x and y ({' '.join(str(e).split())[:120]})") from None
    try:  # the models' loaders' own check: participants see the images and labels the models were given
        validate_arrays(x, y, "cifar10", path)
    except DataError as e:
        raise SetError(str(e)) from None
    return x, y.astype(np.int64)


def load_cifar10h(path: str | Path | None = None) -> np.ndarray:
    """CIFAR-10H human label counts (10000, 10) int64. Default: $RANDMASK_DATA/cifar10h/counts.npy."""
    path = Path(path) if path else Path(os.environ.get("RANDMASK_DATA", "../shared/data")) / "cifar10h" / "counts.npy"
    if not path.is_file():
        raise SetError(f"CIFAR-10H counts not found at {path}")
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:  # empty, truncated, pickled or not a .npy at all
        raise SetError(f"{path}: not a readable .npy file of CIFAR-10H counts ({' '.join(str(e).split())})") from None
    if not isinstance(counts, np.ndarray):  # an .npz archive
        counts.close()
        raise SetError(f"{path}: an .npz archive; give the counts as one .npy array of shape (10000, 10)")
    if counts.shape != (10000, 10) or not np.issubdtype(counts.dtype, np.integer):
        raise SetError(f"{path}: expected integer counts of shape (10000, 10), got {counts.dtype} {counts.shape}")
    if counts.min() < 0 or not counts.sum(axis=1).all():  # a share per image must be a fraction of its labels
        bad = int(np.flatnonzero((counts < 0).any(axis=1) | (counts.sum(axis=1) == 0))[0])
        raise SetError(f"{path}: image {bad} has {'a negative count' if (counts[bad] < 0).any() else 'no labels'}; "
                       f"CIFAR-10H counts are at least 0 with at least one label per image")
    return counts


def unambiguous_indices(labels: np.ndarray, counts: np.ndarray | None = None, *, min_share: float = 0.98) -> np.ndarray:
    """Test indices whose CIFAR-10H share for the true label is >= min_share (all indices without counts)."""
    if counts is None:
        return np.arange(len(labels))
    share = counts[np.arange(len(labels)), labels] / counts.sum(axis=1)
    return np.flatnonzero(share >= min_share)


def clean_set(out: str | Path, count: int, *, seed: int, unambiguous: float | None, avoid: list[Path],
              data_dir: str | Path | None = None) -> Path:
    """`python -m study clean-set`: `count` clean test images drawn with `seed`, each with a CIFAR-10H share of
    the true label of at least `unambiguous` (any image when None), none of the test images in the `avoid` sets."""
    if count < 1:
        raise SetError(f"--count must be at least 1, got {count}")
    if unambiguous is not None and not 0 <= unambiguous <= 1:  # also refuses NaN
        raise SetError(f"--unambiguous is a share of CIFAR-10H annotators, from 0 to 1, got {unambiguous}")
    x, y = load_cifar10_test(str(data_dir) if data_dir is not None else None)
    counts = None
    if unambiguous is not None:
        counts = load_cifar10h(Path(data_dir) / "cifar10h" / "counts.npy" if data_dir is not None else None)
    pool = unambiguous_indices(y, counts, min_share=unambiguous or 0.0)
    taken = {i.test_index for folder in avoid for i in read_set(folder)}
    pool = np.array([i for i in pool if i not in taken])
    if count > len(pool):
        raise SetError(f"only {len(pool)} images qualify, {count} requested")
    chosen = np.sort(np.random.default_rng(seed).choice(pool, size=count, replace=False))
    return build_clean_set(out, chosen, x=x, y=y)


def build_clean_set(directory: str | Path, indices, *, x: np.ndarray, y: np.ndarray) -> Path:
    """A set of unperturbed test images (clean controls, catch and practice trials)."""
    indices = [int(i) for i in indices]
    rows = [{"index": i, "true_label": int(y[i]), "source": "", "attack": CLEAN, "source_pred": "", "linf": 0.0, "l2": 0.0}
            for i in indices]
    return write_set(directory, rows, [x[i] for i in indices])


def build_noise_set(directory: str | Path, indices, *, x: np.ndarray, y: np.ndarray, eps: int = 8, seed: int = 0,
                    source: str = "", source_preds=None, attack: str | None = None) -> Path:
    """A set of test images plus random-sign noise of L-inf size `eps`/255: a stand-in for demos and tests
    until real adversarial sets exist. It is not an attack; its `source_pred` is empty unless given."""
    rng = np.random.default_rng(seed)
    indices = [int(i) for i in indices]
    rows, images = [], []
    for n, i in enumerate(indices):
        noise = rng.choice(np.array([-eps, eps], dtype=np.int16), size=x[i].shape)
        image = np.clip(x[i].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        diff = image.astype(np.float64) - x[i]
        rows.append({
            "index": i, "true_label": int(y[i]), "source": source, "attack": attack or f"Noise{eps}",
            "source_pred": "" if source_preds is None else int(source_preds[n]),
            # 0-255 pixel units, as in the attack code's sets
            "linf": float(np.abs(diff).max()), "l2": float(np.sqrt((diff ** 2).sum())),
        })
        images.append(image)
    return write_set(directory, rows, images)
