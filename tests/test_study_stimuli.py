"""Stimuli are what they claim: every PNG of a set is decoded and stored re-encoded as a plain 8-bit RGB PNG
(IHDR, IDAT, IEND only), and anything a browser could draw otherwise is refused in one line, at `create` and
at `check`. The PNGs here are written chunk by chunk with zlib and struct."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_study_support as support
from badinput import assert_one_line_error, run_main

from randmask.core.set_schema import image_file
from study import open_db
from study.cli import main
from study.sets import SetError, plain_png, png_bytes, png_chunks, read_set, sha256, write_set

cifar, study_sets = support.cifar, support.study_sets
rng = np.random.default_rng(0)
PIXELS = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def ihdr(depth: int = 8, colour: int = 2, compression: int = 0, filtering: int = 0, interlace: int = 0) -> bytes:
    return chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, depth, colour, compression, filtering, interlace))


def idat(pixels: np.ndarray = PIXELS, bytes_per_pixel: int = 3) -> bytes:
    rows = pixels.reshape(32, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    assert len(raw) == 32 * (1 + 32 * bytes_per_pixel)
    return chunk(b"IDAT", zlib.compress(raw))


def png(*before_idat: bytes, header: bytes | None = None, data: bytes | None = None, after: bytes = b"") -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + (header or ihdr()) + b"".join(before_idat) + (data or idat())
            + chunk(b"IEND", b"") + after)


def frame_control(sequence: int) -> bytes:
    return chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, 32, 32, 0, 0, 1, 1, 0, 0))


# APNG: the default image (what PIL decodes) is PIXELS, the second frame, shown right after, is its negative
ANIMATED = (b"\x89PNG\r\n\x1a\n" + ihdr() + chunk(b"acTL", struct.pack(">II", 2, 0)) + frame_control(0) + idat()
            + frame_control(1) + chunk(b"fdAT", struct.pack(">I", 2) + idat(255 - PIXELS)[8:-4])
            + chunk(b"IEND", b""))

REFUSED = {
    "animated (acTL)": (ANIMATED, "'acTL'"),
    "tRNS transparency": (png(chunk(b"tRNS", struct.pack(">HHH", 0, 0, 0))), "'tRNS'"),
    "gAMA 0.1": (png(chunk(b"gAMA", struct.pack(">I", 10_000))), "'gAMA'"),
    "iCCP profile": (png(chunk(b"iCCP", b"p\x00\x00" + zlib.compress(b"not a profile"))), "'iCCP'"),
    "sRGB intent": (png(chunk(b"sRGB", b"\x00")), "'sRGB'"),
    "cHRM primaries": (png(chunk(b"cHRM", struct.pack(">8I", *([50_000] * 8)))), "'cHRM'"),
    "cICP colour space": (png(chunk(b"cICP", bytes([9, 16, 0, 1]))), "'cICP'"),
    "bad IHDR compression byte": (png(header=ihdr(compression=1)), "compression 1"),
    "bad IHDR filter byte": (png(header=ihdr(filtering=1)), "filter 1"),
    "unknown critical chunk": (png(chunk(b"ABCD", b"x")), "a critical 'ABCD'"),
    "suggested palette": (png(chunk(b"PLTE", bytes(range(6)))), "'PLTE'"),
    "palette image": (png(chunk(b"PLTE", bytes(768)), header=ihdr(colour=3), data=idat(PIXELS[..., 0], 1)),
                      "colour type 3"),
    "16-bit": (png(header=ihdr(depth=16), data=idat(np.repeat(PIXELS, 2, axis=2), 6)), "bit depth 16"),
    "grey": (png(header=ihdr(colour=0), data=idat(PIXELS[..., 0], 1)), "colour type 0"),
    "grey + alpha": (png(header=ihdr(colour=4), data=idat(PIXELS[..., :2], 2)), "colour type 4"),
    "RGBA": (png(header=ihdr(colour=6), data=idat(np.dstack([PIXELS, PIXELS[..., :1]]), 4)), "colour type 6"),
    "data after IEND": (png(after=b"hidden"), "data after it"),
    "bad CRC": (png()[:-1] + b"\x00", "CRC"),
    "two IHDR": (png(ihdr()), "more than one IHDR"),
    "damaged image data": (png(data=chunk(b"IDAT", b"not zlib")), "cannot be decoded"),
    "no image data": (b"\x89PNG\r\n\x1a\n" + ihdr() + chunk(b"IEND", b""), "IDAT"),
}


def one_image_set(folder: Path, data: bytes, cifar) -> Path:
    x, y = cifar
    write_set(folder, [{"index": 5, "true_label": int(y[5]), "source": "m", "attack": "PGD16", "source_pred": 1,
                        "linf": 16.0, "l2": 100.0}], [x[5]])
    (folder / image_file(5)).write_bytes(data)
    return folder


def test_the_crafted_png_writer_makes_valid_pngs():
    """The helper is sound: its plain PNG is accepted and decodes to the pixels it was given."""
    stored, pixels = plain_png(png(), 32)
    assert np.array_equal(pixels, PIXELS) and stored == png_bytes(PIXELS)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_set_with_an_image_a_browser_could_draw_otherwise_is_refused(tmp_path, cifar, name):
    data, fragment = REFUSED[name]
    folder = one_image_set(tmp_path / "set", data, cifar)
    with pytest.raises(SetError, match=image_file(5)) as caught:
        read_set(folder)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_inert_chunks_are_dropped_and_the_image_stored_re_encoded(tmp_path, cifar):
    data = png(chunk(b"tEXt", b"Comment\x00hello"), chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
               chunk(b"tIME", struct.pack(">HBBBBB", 2026, 1, 2, 3, 4, 5)))
    folder = one_image_set(tmp_path / "set", data, cifar)
    (item,) = read_set(folder)
    assert item.png != data and [kind for kind, _ in png_chunks(item.png)] == [b"IHDR", b"IDAT", b"IEND"]
    assert np.array_equal(plain_png(item.png, 32)[1], PIXELS)


def test_create_refuses_a_gamma_png_in_one_line_and_leaves_no_file(tmp_path, cifar, capsys):
    folder = one_image_set(tmp_path / "set", REFUSED["gAMA 0.1"][0], cifar)
    db = tmp_path / "s.db"
    code, _, err = run_main(main, ["create", "--db", str(db), "--name", "g", "--set", str(folder),
                                   "--items-per-participant", "1", "--catch-per-participant", "0"], capsys)
    assert_one_line_error(code, err, "'gAMA'")
    assert not db.exists()


def test_created_study_stores_what_the_set_holds_as_plain_pngs(tmp_path, study_sets, cifar):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="p", items_per_participant=3, items_per_condition=4)
    db = open_db(path)
    x, _ = cifar
    rows = db.execute("SELECT png, png_sha256, test_index, attack FROM items").fetchall()
    for data, digest, test_index, attack in rows:
        assert [kind for kind, _ in png_chunks(data)] == [b"IHDR", b"IDAT", b"IEND"] and sha256(data) == digest
        if attack == "clean":
            assert np.array_equal(plain_png(data, 32)[1], x[test_index])
    db.close()


@pytest.mark.parametrize("name", ["gAMA 0.1", "animated (acTL)", "tRNS transparency"])
def test_check_reports_a_stored_image_a_browser_could_draw_otherwise(tmp_path, study_sets, capsys, name):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="c", items_per_participant=3, items_per_condition=4)
    data = REFUSED[name][0]
    db = open_db(path)
    db.execute("UPDATE items SET png = ?, png_sha256 = ? WHERE id = 1", [data, sha256(data)])
    db.close()
    code, out, err = run_main(main, ["check", "--db", str(path)], capsys)
    assert code == 1 and f"item 1: image: PNG has an ancillary {REFUSED[name][1]} chunk" in out
    code, _, err = run_main(main, ["export", "--db", str(path), "--out", str(tmp_path / "out"), "--no-cifar10h"],
                            capsys)
    assert_one_line_error(code, err, "fails `python -m study check`")


def test_check_reports_stored_inert_chunks_too(tmp_path, study_sets, capsys):
    """`create` stores images without any ancillary chunk: one found later was put there by something else."""
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="c", items_per_participant=3, items_per_condition=4)
    data = png(chunk(b"tEXt", b"k\x00v"))
    db = open_db(path)
    db.execute("UPDATE items SET png = ?, png_sha256 = ? WHERE id = 1", [data, sha256(data)])
    db.close()
    code, out, _ = run_main(main, ["check", "--db", str(path)], capsys)
    assert code == 1 and "chunks ['tEXt'] besides IHDR, IDAT and IEND" in out
