"""What Chromium draws from a stored stimulus is, pixel for pixel, the array the models were given.

The participant widget shows the stored PNG bytes (as a data URL); here headless Debian Chromium decodes those
bytes, draws them at their own size on a canvas and reads the pixels back. The same is done with a PNG that
carries gAMA 0.1, which `create` used to store byte for byte: Chromium then draws other pixels."""
from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import test_study_support as support
from streamlit_server import CHROMIUM, chromium_browser

from study import open_db
from study.sets import decode_png, png_bytes

pytestmark = pytest.mark.browser
cifar, study_sets = support.cifar, support.study_sets
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)

DRAW = """async (url) => {
    const img = new Image();
    img.src = url;
    await img.decode();
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    return [img.naturalWidth, img.naturalHeight, Array.from(ctx.getImageData(0, 0, canvas.width, canvas.height).data)];
}"""


def drawn(page, data: bytes) -> np.ndarray:
    width, height, rgba = page.evaluate(DRAW, "data:image/png;base64," + base64.b64encode(data).decode("ascii"))
    pixels = np.array(rgba, dtype=np.uint8).reshape(height, width, 4)
    assert (pixels[..., 3] == 255).all()  # opaque: no transparency anywhere
    return pixels[..., :3]


def with_gamma(data: bytes) -> bytes:
    """The same PNG with a gAMA chunk (gamma 0.1) right after IHDR."""
    payload = struct.pack(">I", 10_000)
    gama = struct.pack(">I", 4) + b"gAMA" + payload + struct.pack(">I", zlib.crc32(b"gAMA" + payload))
    return data[:33] + gama + data[33:]


def test_chromium_draws_every_stored_stimulus_exactly_as_the_set_holds_it(tmp_path, study_sets, cifar):
    path = tmp_path / "s.db"
    support.make_study(path, study_sets, slug="px", items_per_participant=3, items_per_condition=4)
    db = open_db(path)
    rows = db.execute("SELECT png, test_index, attack, set_dir, set_file FROM items ORDER BY id").fetchall()
    db.close()
    x, _ = cifar
    with chromium_browser() as browser:
        page = browser.new_page()
        page.set_content("<html><body></body></html>")
        for data, test_index, attack, set_dir, set_file in rows:
            # the set's array: the CIFAR-10 test image itself for clean items, the set's decoded file otherwise
            expected = x[test_index] if attack == "clean" else decode_png((Path(set_dir) / set_file).read_bytes())
            assert np.array_equal(drawn(page, data), expected), (test_index, attack)
        # what used to be stored and served byte for byte: Chromium applies the gamma and draws other pixels
        plain = png_bytes(x[rows[0][1]])
        assert np.array_equal(drawn(page, plain), x[rows[0][1]])
        assert not np.array_equal(drawn(page, with_gamma(plain)), x[rows[0][1]])
    assert len(rows) == 4 * 3 + 12 + 3  # every trial, catch and practice image was compared
