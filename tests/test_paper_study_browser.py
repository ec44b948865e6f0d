"""End to end: `python -m study paper-study` from the shipped zoo (5 images per condition, the default nets),
then the link it printed opened in headless Chromium on the real participant server (`python -m study serve`):
consent, the three practice images, and the first study trial shows an image of this study, byte for byte the
one the database assigned to this participant and pixel for pixel the one in the set the command wrote."""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from streamlit_server import CHROMIUM, chromium_browser, participant_server

from study import open_db
from study.serve import DEFAULT_BASE_URL
from study.sets import decode_png

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.usefixtures("data_dir")]
ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 30_000
NAME = "paper-e2e"
PID = "e2e-tester"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
expect = sync_api.expect


@pytest.fixture(scope="module")
def paper_study(tmp_path_factory, data_dir):
    """The command as a user runs it, small: 5 images in each of 5 conditions (4 randmask runs)."""
    root = tmp_path_factory.mktemp("paper-e2e")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RANDMASK_DATA": str(data_dir)}
    done = subprocess.run([sys.executable, "-m", "study", "paper-study", "--name", NAME, "--images", "5",
                           "--items-per-participant", "5", "--db", str(root / "s.db"), "--out", str(root / "sets")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    (link,) = [line.removeprefix("participant link: ") for line in done.stdout.splitlines()
               if line.startswith("participant link: ")]
    return root, link


def shown_png(widget) -> bytes:
    """The PNG the trial widget shows now (a data URL on its stage's image)."""
    image = widget.locator("#stage img")
    expect(image).to_be_visible(timeout=WAIT_MS)
    src = image.get_attribute("src")
    assert src.startswith("data:image/png;base64,")
    return base64.b64decode(src.removeprefix("data:image/png;base64,"))


def assigned(db_path: Path) -> list[tuple[str, bytes, str, str, str]]:
    """This participant's items in the order they are shown: role, PNG, condition, set folder, set file."""
    db = open_db(db_path)
    try:
        return db.execute(
            "SELECT i.role, i.png, i.condition, i.set_dir, i.set_file FROM assignments a "
            "JOIN items i ON i.id = a.item_id JOIN participants p ON p.id = a.participant_id "
            "JOIN studies s ON s.id = i.study_id WHERE p.external_id = ? AND s.slug = ? ORDER BY a.position",
            [PID, NAME]).fetchall()
    finally:
        db.close()


def test_the_printed_link_opens_the_study_and_its_first_trial_shows_a_study_image(paper_study, tmp_path):
    root, link = paper_study
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == DEFAULT_BASE_URL
    query = parse_qs(parts.query)
    assert query["study"] == [NAME] and query["PROLIFIC_PID"] == ["{{%PROLIFIC_PID%}}"]
    # what Prolific does with the printed link: its placeholders filled in
    filled = (parts.query.replace("{{%PROLIFIC_PID%}}", PID).replace("{{%STUDY_ID%}}", "study1")
              .replace("{{%SESSION_ID%}}", "session1"))
    with participant_server(root / "s.db", tmp_path / "server.log") as url, chromium_browser() as browser:
        page = browser.new_context(viewport={"width": 1000, "height": 1100}).new_page()
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{url}/?{filled}")
        page.get_by_role("button", name="I agree and want to take part").click()
        page.get_by_role("button", name="Start").click()
        widget = page.frame_locator("iframe").first
        items = assigned(root / "s.db")
        assert [role for role, *_ in items[:3]] == ["practice"] * 3 and len(items) == 3 + 5 + 3
        for n in range(3):
            expect(widget.get_by_text(re.compile(f"Practice {n + 1} of 3"))).to_be_visible(timeout=WAIT_MS)
            assert shown_png(widget) == items[n][1]
            widget.locator("button[data-label='0']").click()
            expect(widget.get_by_text(re.compile("Correct|Not quite")).first).to_be_visible(timeout=WAIT_MS)
            widget.get_by_role("button", name="Continue").click()
        expect(widget.get_by_text(re.compile("Image 1 of 8"))).to_be_visible(timeout=WAIT_MS)
        png = shown_png(widget)
        page.screenshot(path=str(tmp_path / "first-trial.png"))
    role, stored, condition, set_dir, set_file = items[3]
    assert role in ("trial", "catch") and png == stored  # the image the study assigned, exactly
    assert Path(set_dir).parent == root / "sets"  # from a set this command wrote ...
    assert np.array_equal(decode_png(png), decode_png((Path(set_dir) / set_file).read_bytes()))  # ... its pixels
