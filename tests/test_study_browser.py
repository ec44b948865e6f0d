"""End to end in headless Chromium: two participants label a short study at the same time through a
real `streamlit run` server (one with the keyboard, one with clicks in the trial widget), one more
does a time-limited study, and the export must match what they did."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest
import test_study_support as support
from streamlit_server import streamlit_server

from study import open_db
from study.export import export_study

pytestmark = pytest.mark.browser
cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
WAIT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
expect = sync_api.expect


@pytest.fixture()
def server(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, slug="duo", completion_code="DUO42", items_per_participant=3,
                       catch_per_participant=1, labels_per_item=2)
    support.make_study(db_path, study_sets, slug="flash", completion_code="FLASH7", items_per_participant=3,
                       catch_per_participant=0, practice=False, presentation_ms=70)
    env = {**os.environ, "STUDY_DB": str(db_path), "STUDY_ADMIN_PASSWORD": "browser-test-pw"}
    with streamlit_server(ROOT / "pages" / "study_label.py", env, tmp_path / "server.log", timeout=60) as url:
        yield url, db_path


class Participant:
    """One browser session working through the study, one step at a time."""

    def __init__(self, browser, url: str, pid: str, study: str, use_keyboard: bool):
        self.page = browser.new_context(viewport={"width": 1000, "height": 1100}).new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.page.goto(f"{url}/?pid={pid}&study={study}")
        self.use_keyboard = use_keyboard
        self.answers: list[int] = []

    def click_button(self, name: str) -> None:
        self.page.get_by_role("button", name=name).click()

    def wait_text(self, pattern: str) -> None:
        expect(self.page.get_by_text(re.compile(pattern)).first).to_be_visible(timeout=WAIT_MS)

    def answer(self, label: int, delay_ms: int = 0) -> None:
        widget = self.page.frame_locator("iframe").first
        button = widget.locator(f"button[data-label='{label}']")
        expect(button).to_be_enabled(timeout=WAIT_MS)  # enabled only once the image is on screen
        if delay_ms:
            self.page.wait_for_timeout(delay_ms)
        if self.use_keyboard:
            self.page.keyboard.press(str(label))
        else:
            button.click()
        self.answers.append(label)


def run_in_step(participants, action) -> None:
    """Interleave: each participant does one step before anyone does the next."""
    for p in participants:
        action(p)


def test_two_participants_at_once_and_export_matches(server, tmp_path):
    url, db_path = server
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            keys = Participant(browser, url, "keyboard-kim", "duo", use_keyboard=True)
            mouse = Participant(browser, url, "mouse-max", "duo", use_keyboard=False)
            both = [keys, mouse]
            run_in_step(both, lambda p: p.click_button("I agree and want to take part"))
            run_in_step(both, lambda p: p.click_button("Start"))
            for n in range(3):  # practice with feedback
                run_in_step(both, lambda p, n=n: p.wait_text(f"Practice {n + 1} of 3"))
                run_in_step(both, lambda p, n=n: p.answer((n + (3 if p.use_keyboard else 6)) % 10))
                run_in_step(both, lambda p: p.wait_text("Correct|Not quite"))
                run_in_step(both, lambda p: p.click_button("Continue"))
            for n in range(4):  # 3 study images + 1 catch trial
                run_in_step(both, lambda p, n=n: p.wait_text(f"Image {n + 1} of 4"))
                run_in_step(both, lambda p, n=n: p.answer((2 * n + (1 if p.use_keyboard else 4)) % 10))
            run_in_step(both, lambda p: p.wait_text("finished the study"))
            for p in both:
                expect(p.page.get_by_text("DUO42")).to_be_visible()
            keys.page.screenshot(path=str(tmp_path / "done.png"))

            flash = Participant(browser, url, "flash-flo", "flash", use_keyboard=True)
            flash.click_button("I agree and want to take part")
            flash.wait_text("70 ms")
            flash.click_button("Start")
            for n in range(3):
                flash.wait_text(f"Image {n + 1} of 3")
                flash.answer(n, delay_ms=400)  # a person answers after the mask, not within 70 ms
            flash.wait_text("finished the study")
        finally:
            browser.close()

    db = open_db(db_path)
    export_study(db, tmp_path / "out", "duo", n_boot=100)
    responses = pd.read_csv(tmp_path / "out" / "responses.csv")
    people = pd.read_csv(tmp_path / "out" / "participants.csv").set_index("external_id")["participant"]
    for p, pid, input_kind in ((keys, "keyboard-kim", "keyboard"), (mouse, "mouse-max", "click")):
        mine = responses[responses["participant"] == people[pid]].sort_values("position")
        assert mine["label"].tolist() == p.answers  # exactly what was pressed, in order, nothing else
        assert set(mine["input"]) == {input_kind} and set(mine["mode"]) == {"unlimited"}
        assert (mine["rt_ms"] > 0).all() and (mine["rt_ms"] < 60_000).all()
    items = pd.read_csv(tmp_path / "out" / "items.csv")
    assert items["n_labels"].sum() == 8  # 2 x (3 study images + 1 catch)
    export_study(db, tmp_path / "flash", "flash", n_boot=100)
    timed = pd.read_csv(tmp_path / "flash" / "responses.csv")
    assert timed["label"].tolist() == flash.answers and set(timed["mode"]) == {"timed"}
    # the image stayed up for about 70 ms (whole frames), measured in the browser
    assert timed["shown_ms"].between(50, 150).all(), timed["shown_ms"].tolist()
    assert (timed["rt_ms"] >= 400).all()
