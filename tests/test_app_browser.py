"""The app in a real browser: `streamlit run app.py` on the tiny zoo, driven by headless Debian Chromium through
Playwright. Every page opens without a Streamlit exception and is screenshotted whole at 1280 and 1920 px (the
organiser page signed in too, on a demo study); the picker survives page switches; images reach the screen at
their own size (no browser smoothing); participants see one page only.

Screenshots go to pytest's temporary folder, or to $RANDMASK_SCREENSHOTS when set (to look at them)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_app_support as support
from streamlit_server import CHROMIUM, chromium_browser, streamlit_server

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 60_000
PAGES = [("", "Random Mask, hands on"), ("masks", "Mask patterns"), ("shuffle", "Patch shuffle"),
         ("noise", "Noise curves"), ("gallery", "Adversarial gallery"), ("robustness", "Robustness explorer"),
         ("train", "Train a model")]
WIDTHS = (1280, 1920)  # a laptop and a desktop screen
ADMIN_PASSWORD = "browser-test-pw"

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
expect = sync_api.expect


@contextlib.contextmanager
def running_app(tmp: Path, results: Path | None = None):
    """`streamlit run app.py` on the tiny zoo in a fresh process (with the tiny results, or those in `results`);
    yields (url, screenshot folder)."""
    zoo = support.make_zoo(tmp / "zoo")
    if results is None:
        results = support.make_results(tmp / "results").parent
    env = {**os.environ, "RANDMASK_ZOO": str(zoo), "RANDMASK_RUNS": str(tmp / "runs"),
           "RANDMASK_RESULTS": str(results), "STUDY_DB": str(tmp / "study.db"),
           "STUDY_ADMIN_PASSWORD": ADMIN_PASSWORD, "OMP_NUM_THREADS": "1"}
    demo_study(tmp, env)
    with streamlit_server(ROOT / "app.py", env, tmp / "server.log") as url:
        shots = Path(os.environ.get("RANDMASK_SCREENSHOTS") or tmp / "screenshots")
        shots.mkdir(parents=True, exist_ok=True)
        yield url, shots


def demo_study(tmp: Path, env: dict) -> None:
    """The organiser page's tables filled: the demo study, two participants who finished, one who only joined."""
    subprocess.run([sys.executable, "-m", "study", "demo", "--out", str(tmp / "demo-sets")], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    from study import get_study, open_db
    from study.participant import join
    from study.simulate import simulate_participant

    for pid in ("tester1", "tester2"):
        simulate_participant(tmp / "study.db", "demo", pid)
    db = open_db(tmp / "study.db")
    join(db, get_study(db, "demo"), "joined-only")
    db.close()


def screenshot_whole(page, path: Path, width: int) -> None:
    """Streamlit scrolls inside its main container, so a full-page screenshot would stop at the window: make the
    window as tall as the content first."""
    measure = ("() => Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
               "[data-testid=stMainBlockContainer], [data-testid=stSidebarContent]')].map(e => e.scrollHeight))")
    height = 0
    for _ in range(4):  # tables and charts may still grow after a resize: until the height holds
        now = page.evaluate(measure)
        if now == height:
            break
        height = now
        page.set_viewport_size({"width": width, "height": min(max(900, height + 60), 8000)})
        page.wait_for_timeout(700)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": width, "height": 1000})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("app-browser")) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as launched:
        yield launched


def settle(page) -> None:
    """Wait until the script run has finished (Streamlit shows its status widget while it runs)."""
    page.wait_for_timeout(600)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=WAIT_MS)
    page.wait_for_timeout(400)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()
    assert page.get_by_text("This page hit an error").count() == 0


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_opens_without_an_exception(server, browser, width):
    url, shots = server
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    names = []
    for path, title in PAGES:
        page.goto(f"{url}/{path}")
        expect(page.get_by_role("heading", name=title, level=1)).to_be_visible(timeout=WAIT_MS)
        settle(page)
        no_exception(page)
        assert page.locator('[data-testid="stSidebarNav"]').count() == 1  # the navigation is there on every page
        names.append(f"{path or 'home'}-{width}.png")
        screenshot_whole(page, shots / names[-1], width)
        assert page.get_by_text("None", exact=True).count() == 0  # no literal None in any cell or text
    page.goto(f"{url}/robustness")  # the other two tabs of the explorer
    settle(page)
    for tab, name in (("Figure 7: trade-off", "figure7"), ("Run a transfer evaluation", "run")):
        page.get_by_role("tab", name=tab).click()
        settle(page)
        names.append(f"robustness-{name}-{width}.png")
        screenshot_whole(page, shots / names[-1], width)
    page.goto(f"{url}/study_admin")  # the organiser page sits in the navigation behind its own password
    settle(page)
    no_exception(page)
    expect(page.get_by_label("Organiser password")).to_be_visible(timeout=WAIT_MS)
    assert page.get_by_label("Name (used in links)").count() == 0  # nothing behind the password shows yet
    names.append(f"study_admin-{width}.png")
    screenshot_whole(page, shots / names[-1], width)
    page.get_by_label("Organiser password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    settle(page)
    page.get_by_text("Live progress (refresh every 10 s)").click()  # off: a page that settles
    settle(page)
    names.append(f"study_admin-progress-{width}.png")
    screenshot_whole(page, shots / names[-1], width)
    page.get_by_role("tab", name="Participants").click()
    settle(page)
    no_exception(page)
    names.append(f"study_admin-participants-{width}.png")
    screenshot_whole(page, shots / names[-1], width)
    page.close()
    page = browser.new_page(viewport={"width": width, "height": 1000})  # a participant's link: a session of its own
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/?study=demo&pid=screenshot-{width}")
    settle(page)
    no_exception(page)
    names.append(f"participant-{width}.png")
    screenshot_whole(page, shots / names[-1], width)
    page.close()
    for name in names:
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_picker_survives_page_switches_and_images_are_not_smoothed(server, browser):
    url, shots = server
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    settle(page)
    picker = page.locator('[data-testid="stSidebar"] [data-testid="stMultiSelect"]')
    before = picker.inner_text()
    assert "0.9-Shallow" in before and "Normal ResNet-18" in before
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Adversarial gallery").click()
    expect(page.get_by_role("heading", name="Adversarial gallery", level=1)).to_be_visible(timeout=WAIT_MS)
    settle(page)
    assert picker.inner_text() == before  # the same models, after a page switch
    page.get_by_text("FGSM", exact=True).click()
    settle(page)
    page.get_by_text("Only images both networks classify correctly").click()  # untick: tiny models know little
    settle(page)
    page.get_by_role("button", name="Build the gallery").click()
    expect(page.get_by_role("button", name="Download the gallery as PNG")).to_be_visible(timeout=WAIT_MS)
    settle(page)
    no_exception(page)
    page.screenshot(path=str(shots / "gallery-built.png"))
    images = page.locator('[data-testid="stImage"] img')
    assert images.count() == 1 + 4 * 5  # the colour legend, then four rows of five
    sizes = images.evaluate_all("els => els.map(e => [e.naturalWidth, e.clientWidth, e.naturalHeight, "
                                "e.clientHeight, getComputedStyle(e).imageRendering])")
    for natural_w, shown_w, natural_h, shown_h, rendering in sizes:
        assert (natural_w, natural_h) == (shown_w, shown_h)  # drawn 1:1 at this width: nothing resampled
        assert rendering == "pixelated"  # and were a narrow window to shrink them, no smoothing either
    assert min(w for w, *_ in sizes[1:]) >= 160  # 32×32 images blown up at least 5×
    page.close()


def test_noise_curves_compute_in_the_browser(server, browser):
    url, shots = server
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/noise")
    settle(page)
    page.get_by_role("button", name="Compute the curves").click()
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=WAIT_MS)
    settle(page)
    no_exception(page)
    assert page.locator(".js-plotly-plot .xtitle").first.text_content() == "noise σ (/255)"
    page.screenshot(path=str(shots / "noise-computed.png"))
    page.close()


@pytest.mark.parametrize("query", ["pid=someone", "PROLIFIC_PID=someone&STUDY_ID=x&SESSION_ID=y"])
def test_participants_see_the_labeling_page_only(server, browser, query):
    url, shots = server
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    page.set_default_timeout(WAIT_MS)
    page.goto(f"{url}/?{query}")
    settle(page)
    no_exception(page)
    assert page.locator('[data-testid="stSidebarNav"]').count() == 0
    assert page.get_by_text("Compare these models").count() == 0
    assert page.get_by_text("Random Mask").count() == 0
    page.screenshot(path=str(shots / f"participant-{query.split('=')[0]}.png"))
    page.close()


def test_a_fresh_servers_first_request_for_a_sub_page_still_runs_the_app(tmp_path, browser):
    """Streamlit starts in its old pages/-folder mode until app.py calls st.navigation; a bookmark to a
    sub-page as the very first request must still get app.py's navigation and picker, not a file list."""
    with running_app(tmp_path) as (url, shots):
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{url}/noise")
        expect(page.get_by_role("heading", name="Noise curves", level=1)).to_be_visible(timeout=WAIT_MS)
        settle(page)
        no_exception(page)
        nav = page.locator('[data-testid="stSidebarNav"]')
        expect(nav.get_by_text("Mask patterns")).to_be_visible(timeout=WAIT_MS)
        assert nav.get_by_text("study label").count() == 0 and nav.get_by_text("ui", exact=True).count() == 0
        assert page.get_by_text("Compare these models").count() == 1
        page.screenshot(path=str(shots / "first-request-noise.png"))
        page.close()
