"""Bad adversarial sets and settings for `python -m study create`: each refused in one line, with the set
folder and the existing database left exactly as they were (and no database made where there was none)."""
from __future__ import annotations

import csv
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from badinput import assert_one_line_error, assert_unchanged, run_main, tree_state
from PIL import Image

from study.cli import main
from study.sets import read_set, write_set

ROWS = 4


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A valid set (4 items, synthetic images) and a database that already holds a study made from it."""
    root = tmp_path_factory.mktemp("template")
    rng = np.random.default_rng(0)
    rows = [{"index": i, "true_label": i % 10, "source": "m", "attack": "PGD16", "source_pred": 1, "linf": 16.0,
             "l2": 400.5} for i in range(1, ROWS + 1)]
    write_set(root / "set", rows, [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in rows])
    write_set(root / "clean", [{**r, "attack": "clean", "source": "", "source_pred": ""} for r in rows],
              [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in rows])
    code = main(["create", "--db", str(root / "study.db"), "--name", "base", "--set", str(root / "set"),
                 "--catch-per-participant", "0", "--items-per-participant", "2"])
    assert code == 0
    return root


def _png(width: int, height: int, depth: int = 8, colour: int = 2, data: bytes | None = None) -> bytes:
    """A PNG written by hand, for the kinds Pillow will not write (16-bit RGB, a lying header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    if data is None:
        channels = {0: 1, 2: 3, 6: 4}[colour]
        row = b"\x00" + bytes(width * channels * depth // 8)
        data = zlib.compress(row * height)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _pil(mode: str, size: int = 32, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (size, size)).save(buf, format=fmt)
    return buf.getvalue()


def _rows(folder: Path) -> tuple[list[str], list[dict]]:
    with open(folder / "meta.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write_rows(folder: Path, columns: list[str], rows: list[dict]) -> None:
    with open(folder / "meta.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def cell(column: str, value: str, row: int = 0):
    def apply(folder: Path) -> None:
        columns, rows = _rows(folder)
        rows[row][column] = value
        _write_rows(folder, columns, rows)
    return apply


def image(data: bytes):
    def apply(folder: Path) -> None:
        (folder / _rows(folder)[1][0]["file"]).write_bytes(data)
    return apply


def replace_image(make):
    def apply(folder: Path) -> None:
        path = folder / _rows(folder)[1][0]["file"]
        path.unlink()
        make(path)
    return apply


def meta(make):
    def apply(folder: Path) -> None:
        path = folder / "meta.csv"
        path.unlink()
        make(path)
    return apply


def add_column(name: str, value: str):
    def apply(folder: Path) -> None:
        columns, rows = _rows(folder)
        _write_rows(folder, [*columns, name], [{**r, name: value} for r in rows])
    return apply


def drop_column(name: str):
    def apply(folder: Path) -> None:
        columns, rows = _rows(folder)
        _write_rows(folder, [c for c in columns if c != name], [{k: v for k, v in r.items() if k != name} for r in rows])
    return apply


def same_file_twice(folder: Path) -> None:
    columns, rows = _rows(folder)
    rows[1]["file"], rows[1]["true_label"] = rows[0]["file"], "7"
    _write_rows(folder, columns, rows)


def nothing(folder: Path) -> None:
    return None


def oversized(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(33 << 20)  # sparse: costs no disk


BIG = "9" * 20
CASES = [
    # test indices
    ("index-99999", cell("index", "99999"), [], "index 99999 is outside the CIFAR-10 test set (0-9999)"),
    ("index-10000", cell("index", "10000"), [], "index 10000 is outside"),
    ("index-10^30", cell("index", "1" + "0" * 30), [], "is not a whole number 0-9999"),
    ("index-negative", cell("index", "-1"), [], "is not a whole number"),
    ("index-exponent", cell("index", "1e3"), [], "is not a whole number"),
    ("index-full-width", cell("index", "１２"), [], "is not a whole number"),
    ("index-blank", cell("index", " "), [], "is not a whole number"),
    ("index-fraction", cell("index", "3.5"), [], "is not a whole number"),
    ("index-hex", cell("index", "0x10"), [], "is not a whole number"),
    ("index-underscore", cell("index", "1_0"), [], "is not a whole number"),
    ("index-duplicate", cell("index", "2"), [], "appears twice"),
    # labels and predictions
    ("label-10", cell("true_label", "10"), [], "true_label: '10' is not a class index 0-9"),
    ("label-negative", cell("true_label", "-1"), [], "not a class index"),
    ("label-empty", cell("true_label", ""), [], "true_label is empty"),
    ("label-nan", cell("true_label", "nan"), [], "not a class index"),
    ("label-arabic", cell("true_label", "٣"), [], "not a class index"),
    ("label-fraction", cell("true_label", "3.5"), [], "not a class index"),
    ("label-exponent", cell("true_label", "1e0"), [], "not a class index"),
    ("source-pred-12", cell("source_pred", "12"), [], "source_pred: '12' is not a class index"),
    ("pred-column-text", add_column("pred:other", "x"), [], "pred:other: 'x' is not a class index"),
    # norms
    ("linf-nan", cell("linf", "nan"), [], "linf: 'nan' is not a non-negative decimal number"),
    ("linf-inf", cell("linf", "inf"), [], "not a non-negative decimal"),
    ("linf-negative", cell("linf", "-0.1"), [], "not a non-negative decimal"),
    ("linf-overflow", cell("linf", "1e400"), [], "is above 255"),
    ("linf-text", cell("linf", "abc"), [], "not a non-negative decimal"),
    ("linf-300", cell("linf", "300"), [], "is above 255"),
    ("l2-negative", cell("l2", "-1"), [], "l2: '-1' is not a non-negative decimal"),
    ("l2-nan", cell("l2", "NaN"), [], "not a non-negative decimal"),
    ("l2-infinity", cell("l2", "Infinity"), [], "not a non-negative decimal"),
    ("l2-huge", cell("l2", "1e6"), [], "is above"),
    # names
    ("attack-empty", cell("attack", ""), [], "attack is empty"),
    ("attack-300-chars", cell("attack", "P" * 300), [], "at most 200 characters"),
    ("attack-control-char", cell("attack", "PGD\x0716"), [], "printable text"),
    ("source-300-chars", cell("source", "m" * 300), [], "at most 200 characters"),
    # image files
    ("image-reused", same_file_twice, [], "is already used by row 2: one image file per row"),
    ("file-traversal", cell("file", "../elsewhere/000001.png", 1), [], "points outside the set folder"),
    ("file-absolute", cell("file", "/etc/passwd"), [], "points outside the set folder"),
    ("file-empty", cell("file", ""), [], "file is empty"),
    ("file-missing", cell("file", "images/nope.png"), [], "not found"),
    ("file-directory", replace_image(lambda p: p.mkdir()), [], "is not a regular file"),
    ("file-fifo", replace_image(os.mkfifo), [], "is not a regular file"),
    ("file-dev-zero", replace_image(lambda p: p.symlink_to("/dev/zero")), [], "points outside the set folder"),
    ("png-16-bit-rgb", image(_png(32, 32, depth=16)), [], "bit depth 16 and colour type 2, expected 8-bit RGB"),
    ("png-rgba", image(_pil("RGBA")), [], "colour type 6"),
    ("png-gray", image(_pil("L")), [], "colour type 0"),
    ("png-palette", image(_pil("P")), [], "colour type 3"),
    ("png-16x16", image(_pil("RGB", 16)), [], "PNG is 16x16, expected 32x32"),
    ("png-64x64", image(_pil("RGB", 64)), [], "PNG is 64x64"),
    ("png-decompression-bomb", image(_png(20000, 20000, data=zlib.compress(b"\x00" * 1000))), [],
     "PNG is 20000x20000, expected 32x32"),
    ("png-jpeg", image(_pil("RGB", fmt="JPEG")), [], "not a PNG file"),
    ("png-truncated", image(_pil("RGB")[:60]), [], "images/000001.png"),
    ("png-oversized", image(_pil("RGB") + b"\x00" * (70 << 10)), [], "the limit is 65,536"),
    ("png-empty", image(b""), [], "not a PNG file"),
    # meta.csv
    ("meta-empty", meta(lambda p: p.write_text("")), [], "unreadable CSV"),
    ("meta-missing-column", drop_column("linf"), [], "missing columns ['linf']"),
    ("meta-no-rows", meta(lambda p: p.write_text("index,true_label,source,attack,source_pred,linf,l2,file\n")), [],
     "no rows"),
    ("meta-not-utf8", meta(lambda p: p.write_bytes(b"index,true_label\n\xff\xfe,\x80\n")), [], "unreadable CSV"),
    ("meta-oversized", meta(oversized), [], "the limit is 33,554,432"),
    ("meta-fifo", meta(os.mkfifo), [], "no meta.csv"),
    ("meta-directory", meta(lambda p: p.mkdir()), [], "no meta.csv"),
    # settings
    ("labels-per-item-10^19", nothing, ["--labels-per-item", str(10**19)],
     "labels_per_item must be a whole number from 1 to 1000"),
    ("labels-per-item-0", nothing, ["--labels-per-item", "0"], "labels_per_item must be"),
    ("items-per-participant-huge", nothing, ["--items-per-participant", BIG], "items_per_participant must be"),
    ("seed-huge", nothing, ["--seed", BIG], "seed must be a whole number from 0 to 4294967295"),
    ("seed-negative", nothing, ["--seed", "-1"], "seed must be"),
    ("abandon-inf", nothing, ["--abandon-after-min", "inf"], "abandon_after_min must be"),
    ("abandon-nan", nothing, ["--abandon-after-min", "nan"], "abandon_after_min must be"),
    ("abandon-negative", nothing, ["--abandon-after-min", "-5"], "abandon_after_min must be"),
    ("abandon-zero", nothing, ["--abandon-after-min", "0"], "abandon_after_min must be"),
    ("presentation-5ms", nothing, ["--presentation-ms", "5"], "presentation_ms must be"),
    ("catch-per-participant-huge", nothing, ["--catch-per-participant", BIG], "catch_per_participant must be"),
    ("items-per-condition-huge", nothing, ["--items-per-condition", BIG], "items_per_condition must be"),
    ("items-per-condition-99", nothing, ["--items-per-condition", "99"], "has only 4 items"),
    ("name-invalid", nothing, ["--name", "Bad Name!"], "study name 'Bad Name!'"),
    ("name-taken", nothing, ["--name", "base"], "a study named 'base' already exists"),
    ("conditions-unknown", nothing, ["--conditions", "nope"], "conditions ['nope'] not in the sets"),
    ("catch-without-set", nothing, ["--catch-per-participant", "2"], "no catch set given"),
    ("redirect-not-https", nothing, ["--redirect-url", "http://example.org"], "https://"),
]


def _create(folder: Path, db: Path, extra: list[str]) -> list[str]:
    args = {"--db": str(db), "--name": "s2", "--set": str(folder), "--catch-per-participant": "0",
            "--items-per-participant": "2"}
    for key, value in zip(extra[::2], extra[1::2], strict=True):
        args[key] = value
    return ["create", *[x for kv in args.items() for x in kv]]


@pytest.mark.parametrize("name, make, extra, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_set_or_setting_is_refused_in_one_line(template, tmp_path, capsys, name, make, extra, fragment):
    shutil.copytree(template / "set", tmp_path / "set")
    shutil.copy(template / "study.db", tmp_path / "study.db")
    make(tmp_path / "set")
    before = tree_state(tmp_path)
    code, out, err = run_main(main, _create(tmp_path / "set", tmp_path / "study.db", extra), capsys)
    assert_one_line_error(code, err, fragment)
    assert out == ""
    assert_unchanged(before, tree_state(tmp_path))


@pytest.mark.parametrize("name", ["index-99999", "png-16-bit-rgb", "abandon-inf", "image-reused"])
def test_a_refused_study_leaves_no_database_behind(template, tmp_path, capsys, name):
    _, make, extra, fragment = next(c for c in CASES if c[0] == name)
    shutil.copytree(template / "set", tmp_path / "set")
    make(tmp_path / "set")
    before = tree_state(tmp_path)
    code, _, err = run_main(main, _create(tmp_path / "set", tmp_path / "new" / "deeper" / "study.db", extra), capsys)
    assert_one_line_error(code, err, fragment)
    assert_unchanged(before, tree_state(tmp_path))  # neither the file nor its folders


def test_the_template_set_itself_is_accepted(template, tmp_path, capsys):
    assert len(read_set(template / "set")) == ROWS
    code, out, err = run_main(main, _create(template / "set", tmp_path / "new" / "study.db", []), capsys)
    assert code == 0, err
    assert "created study 's2'" in out and (tmp_path / "new" / "study.db").is_file()
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["study.db"]
