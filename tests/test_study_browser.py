"""End to end in headless Chromium through the real participant server (`python -m study serve`): two
participants label a short study at the same time (one with the keyboard, one with clicks in the trial
widget), one more does a time-limited study, and the export must match what they did. The server shows
nothing but the labeling flow, whatever the path; the prefetching widget stores each answer once even
when round trips are dropped or doubled."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import test_study_support as support
from streamlit_server import CHROMIUM, chromium_browser, participant_server

from study import get_study, open_db
from study.export import export_study

pytestmark = pytest.mark.browser
cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
expect = sync_api.expect


def keys(db_path: Path) -> dict[str, str]:
    db = open_db(db_path)
    try:
        return {s: get_study(db, s).link_key for (s,) in db.execute("SELECT slug FROM studies")}
    finally:
        db.close()


@pytest.fixture()
def server(tmp_path, study_sets):
    db_path = tmp_path / "s.db"
    support.make_study(db_path, study_sets, slug="duo", completion_code="DUO42", items_per_participant=3,
                       catch_per_participant=1, labels_per_item=2)
    support.make_study(db_path, study_sets, slug="flash", completion_code="FLASH7", items_per_participant=3,
                       catch_per_participant=0, practice=False, presentation_ms=70)
    with participant_server(db_path, tmp_path / "server.log") as url:
        yield url, db_path, keys(db_path)


@pytest.fixture()
def browser():
    with chromium_browser() as launched:
        yield launched


class Participant:
    """One browser session working through the study, one step at a time."""

    def __init__(self, browser, url: str, pid: str, study: str, key: str, use_keyboard: bool, route=None):
        self.page = browser.new_context(viewport={"width": 1000, "height": 1100}).new_page()
        self.page.set_default_timeout(WAIT_MS)
        if route is not None:
            self.page.route_web_socket(re.compile(".*/_stcore/stream"), route)
        self.page.goto(f"{url}/?pid={pid}&study={study}&key={key}")
        self.widget = self.page.frame_locator("iframe").first
        self.use_keyboard = use_keyboard
        self.answers: list[int] = []

    def click_button(self, name: str) -> None:
        self.page.get_by_role("button", name=name).click()

    def wait_text(self, pattern: str) -> None:
        expect(self.page.get_by_text(re.compile(pattern)).first).to_be_visible(timeout=WAIT_MS)

    def wait_widget_text(self, pattern: str) -> None:
        expect(self.widget.get_by_text(re.compile(pattern)).first).to_be_visible(timeout=WAIT_MS)

    def answer(self, label: int, delay_ms: int = 0) -> None:
        button = self.widget.locator(f"button[data-label='{label}']")
        expect(button).to_be_enabled(timeout=WAIT_MS)  # enabled only once the image is on screen
        if delay_ms:
            self.page.wait_for_timeout(delay_ms)
        if self.use_keyboard:
            self.page.keyboard.press(str(label))
        else:
            button.click()
        self.answers.append(label)

    def continue_after_feedback(self) -> None:
        if self.use_keyboard:
            self.page.keyboard.press("Enter")
        else:
            self.widget.get_by_role("button", name="Continue").click()


def run_in_step(participants, action) -> None:
    """Interleave: each participant does one step before anyone does the next."""
    for p in participants:
        action(p)


def stored_labels(db_path: Path, pid: str) -> list[int]:
    db = open_db(db_path)
    try:
        return [r[0] for r in db.execute(
            "SELECT r.label FROM responses r JOIN assignments a ON a.id = r.assignment_id "
            "JOIN participants p ON p.id = r.participant_id WHERE p.external_id = ? ORDER BY a.position", [pid])]
    finally:
        db.close()


def test_two_participants_at_once_and_export_matches(server, browser, tmp_path):
    url, db_path, key = server
    keys_p = Participant(browser, url, "keyboard-kim", "duo", key["duo"], use_keyboard=True)
    mouse = Participant(browser, url, "mouse-max", "duo", key["duo"], use_keyboard=False)
    both = [keys_p, mouse]
    run_in_step(both, lambda p: p.click_button("I agree and want to take part"))
    run_in_step(both, lambda p: p.click_button("Start"))
    for n in range(3):  # practice with feedback, inside the widget
        run_in_step(both, lambda p, n=n: p.wait_widget_text(f"Practice {n + 1} of 3"))
        run_in_step(both, lambda p, n=n: p.answer((n + (3 if p.use_keyboard else 6)) % 10))
        run_in_step(both, lambda p: p.wait_widget_text("Correct|Not quite"))
        if n == 2:
            run_in_step(both, lambda p: p.wait_widget_text("last practice image"))
        run_in_step(both, lambda p: p.continue_after_feedback())
    for n in range(4):  # 3 study images + 1 catch trial
        run_in_step(both, lambda p, n=n: p.wait_widget_text(f"Image {n + 1} of 4"))
        run_in_step(both, lambda p, n=n: p.answer((2 * n + (1 if p.use_keyboard else 4)) % 10))
    run_in_step(both, lambda p: p.wait_text("finished the study"))
    for p in both:
        expect(p.page.get_by_text("DUO42")).to_be_visible()
    keys_p.page.screenshot(path=str(tmp_path / "done.png"))

    flash = Participant(browser, url, "flash-flo", "flash", key["flash"], use_keyboard=True)
    flash.click_button("I agree and want to take part")
    flash.wait_text("70 ms")
    flash.click_button("Start")
    for n in range(3):
        flash.wait_widget_text(f"Image {n + 1} of 3")
        flash.answer(n, delay_ms=400)  # a person answers after the mask, not within 70 ms
    flash.wait_text("finished the study")

    db = open_db(db_path)
    export_study(db, tmp_path / "out", "duo", n_boot=100)
    responses = pd.read_csv(tmp_path / "out" / "responses.csv")
    people = pd.read_csv(tmp_path / "out" / "participants.csv").set_index("external_id")["participant"]
    for p, pid, input_kind in ((keys_p, "keyboard-kim", "keyboard"), (mouse, "mouse-max", "click")):
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


RESEARCHER_MARKERS = ("Study admin", "organiser", "Organiser", "Robustness", "Train", "Mask patterns", "Models",
                      "password", "Deploy")


@pytest.mark.parametrize("path", ["/", "/train", "/study_admin", "/robustness"])
def test_participant_server_shows_only_the_labeling_flow(server, browser, path):
    url, db_path, key = server
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    for query in ("", "?study=duo", f"?study=duo&key={key['duo']}", "?pid=x&study=web",
                  f"?study=duo&key={key['duo']}&pid=visitor-{path.strip('/') or 'root'}"):
        page.goto(f"{url}{path}{query}")
        expect(page.get_by_text("Image labeling study")).to_be_visible()
        expect(page.get_by_text(re.compile("I agree|does not work|not valid"))).to_be_visible()
        body = page.inner_text("body")
        assert not any(marker in body for marker in RESEARCHER_MARKERS), (path, query, body[:500])
        assert "Page not found" not in body and "Traceback" not in body
        assert page.locator("[data-testid='stSidebar'], [data-testid='stSidebarNav']").count() == 0
        assert page.locator("[data-testid='stAppDeployButton'], [data-testid='stMainMenu']").count() == 0
        assert page.get_by_role("button", name=re.compile("Deploy")).count() == 0
    assert stored_labels(db_path, f"visitor-{path.strip('/') or 'root'}") == []
    db = open_db(db_path)
    assert db.execute("SELECT count(*) FROM participants").fetchone()[0] == 0  # looking stores nothing
    db.close()


def test_dropped_and_doubled_round_trips_store_each_answer_once(server, browser):
    """The widget sends an answer at once, without waiting: here the first message after one answer is
    dropped (the widget sends it again) and the message after another is delivered twice."""
    url, db_path, key = server
    plan = {"drop": 0, "double": 0}
    seen = {"dropped": 0, "doubled": 0}

    def route(ws) -> None:
        upstream = ws.connect_to_server()

        def to_server(message) -> None:
            if plan["drop"]:
                plan["drop"] -= 1
                seen["dropped"] += 1
                return
            upstream.send(message)
            if plan["double"]:
                plan["double"] -= 1
                seen["doubled"] += 1
                upstream.send(message)

        ws.on_message(to_server)

    p = Participant(browser, url, "flaky-net", "duo", key["duo"], use_keyboard=False, route=route)
    p.click_button("I agree and want to take part")
    p.click_button("Start")
    for n in range(3):
        p.wait_widget_text(f"Practice {n + 1} of 3")
        p.answer(n)
        p.wait_widget_text("Correct|Not quite")
        p.continue_after_feedback()
    for n in range(4):
        p.wait_widget_text(f"Image {n + 1} of 4")
        if n == 0:
            plan["drop"] = 1
        elif n == 2:
            plan["double"] = 1
        p.answer(n + 5)
        if n == 0:  # the next image is there at once, though the answer has not reached the server yet
            p.wait_widget_text("Image 2 of 4")
    p.wait_text("finished the study")
    assert seen == {"dropped": 1, "doubled": 1}
    assert stored_labels(db_path, "flaky-net") == p.answers  # each once, in order, nothing lost


def test_researcher_app_beyond_loopback_asks_for_the_lab_password(tmp_path, browser):
    """`streamlit run app.py` on every interface: every page, even the first request of a fresh server for a
    sub-page, stops at the lab password."""
    import os

    from streamlit_server import free_port, streamlit_server
    env = {**os.environ, "RANDMASK_APP_PASSWORD": "a long lab password", "STUDY_DB": str(tmp_path / "none.db")}
    port = free_port()
    with streamlit_server(ROOT / "app.py", env, tmp_path / "app.log", timeout=120, address="0.0.0.0", port=port):
        url = f"http://127.0.0.1:{port}"
        page = browser.new_page()
        page.set_default_timeout(60_000)
        for path in ("/study_admin", "/train", "/", "/robustness"):  # the first request of a fresh server first
            page.goto(url + path)
            expect(page.get_by_text("Lab password")).to_be_visible(timeout=60_000)
            body = page.inner_text("body")
            assert "Start training" not in body and "Robustness explorer" not in body and "Compare these models" not in body
            # no sidebar listing the page files (Streamlit's pages/ mode) before the password
            assert not any(name in body for name in ("study admin", "study label", "robustness", "ui\n")), body[:300]
        page.goto(url + "/")
        page.get_by_label("Lab password").fill("a long lab password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Compare these models")).to_be_visible(timeout=60_000)  # the lab's sidebar, once signed in


def test_no_framing_no_metrics_and_no_outside_host(server, browser):
    """Old code: any site could frame the study, /_stcore/metrics showed live session counts, and the page
    fetched its favicon from fonts.gstatic.com."""
    import urllib.error
    import urllib.request

    url, _, key = server
    with urllib.request.urlopen(f"{url}/?study=duo") as response:
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Content-Security-Policy"] == "frame-ancestors 'none'"
    for hidden in ("/_stcore/metrics", "/manifest.json"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + hidden)
        assert refused.value.code == 404
    requested: list[str] = []
    p = Participant(browser, url, "offline1", "duo", key["duo"], use_keyboard=False)
    p.page.on("request", lambda request: requested.append(request.url))
    p.page.reload()
    p.click_button("I agree and want to take part")
    p.click_button("Start")
    expect(p.widget.locator("button[data-label='0']")).to_be_enabled(timeout=WAIT_MS)  # the widget's iframe works
    p.page.wait_for_timeout(500)
    outside = [u for u in requested if not u.startswith(url) and not u.startswith(("data:", "blob:"))]
    assert requested and outside == []


def _upscaled(png: bytes, factor: int = 6):
    """The stored image as both presentation modes must show it: each pixel a factor×factor block."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return rgb.repeat(factor, 0).repeat(factor, 1)


def _matches(page, locator, want, size: int = 192) -> float:
    """The share of the size×size screen pixels where the element is drawn that equal `want`, at the best of
    the few whole-pixel alignments its box allows (a box can sit at half a pixel)."""
    import io
    import math

    import numpy as np
    from PIL import Image

    box = locator.bounding_box()
    assert abs(box["width"] - size) < 1 and abs(box["height"] - size) < 1, box  # the same size in both modes
    clip = {"x": math.floor(box["x"]) - 1, "y": math.floor(box["y"]) - 1, "width": size + 3, "height": size + 3}
    seen = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("RGB"))
    return max((seen[dy:dy + size, dx:dx + size] == want).all(2).mean() for dy in range(4) for dx in range(4))


def test_both_presentation_modes_show_the_stored_pixels_at_the_same_size(server, browser):
    """The widget and the simple version show the same 192 px image, scaled by nearest neighbour (the simple
    version used to smooth it with Streamlit's st.image and sit left), centred in the page."""
    from study import next_trial
    from study.participant import get_participant

    url, db_path, key = server
    person = Participant(browser, url, "pixel-pat", "duo", key["duo"], use_keyboard=True)
    person.click_button("I agree and want to take part")
    person.click_button("Start")
    person.wait_widget_text("Practice 1 of 3")
    db = open_db(db_path)
    try:
        trial = next_trial(db, get_participant(db, get_study(db, "duo"), "pixel-pat").id)
    finally:
        db.close()
    want = _upscaled(trial.png)
    shown = person.widget.locator("#stage img:visible, #stage canvas:visible").first
    expect(shown).to_be_visible()
    assert _matches(person.page, shown, want) == 1.0  # every pixel, in the widget
    person.page.get_by_role("button", name=re.compile("simple version")).click()
    image = person.page.get_by_role("img", name="image to label")
    expect(image).to_be_visible(timeout=WAIT_MS)
    assert _matches(person.page, image, want) == 1.0  # and in the simple version (st.markdown's img: 32 px)
    box, page_width = image.bounding_box(), person.page.viewport_size["width"]
    main = person.page.locator("[data-testid='stMainBlockContainer']").bounding_box()
    assert abs((box["x"] + box["width"] / 2) - (main["x"] + main["width"] / 2)) <= 2 < page_width  # centred
