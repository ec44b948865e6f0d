"""The study's results in headless Chromium: `python -m study report`'s HTML opened from disk with every network
request refused (it must need none), and the organiser page's Results tab through `streamlit run app.py`. Every
Plotly figure must be drawn; both are screenshotted at 1280 px (to $RANDMASK_SCREENSHOTS when set, to look at)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import test_study_support as support
from streamlit_server import CHROMIUM, chromium_browser, streamlit_server
from test_study_results import run_study

from study.cli import main as cli

pytestmark = pytest.mark.browser
cifar, study_sets = support.cifar, support.study_sets
ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 60_000
PASSWORD = "browser-results-pw"
DRAWN = ("() => [...document.querySelectorAll('.js-plotly-plot')].map(d => "
         "[d.id || d.parentElement.id, d.querySelectorAll('.main-svg').length, d.querySelectorAll('.point, .bars, "
         ".heatmaplayer image, .violinlayer path').length])")

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
from test_app_browser import no_exception, screenshot_whole, settle  # noqa: E402  (after the skips above)

expect = sync_api.expect


@pytest.fixture(scope="module")
def study_db(study_sets, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("results-browser") / "study.db"
    run_study(path, study_sets, 24, labels_per_item=4)
    return path


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("RANDMASK_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    with chromium_browser() as launched:
        yield launched


def drawn_figures(page) -> list[list]:
    """[id, svg layers, drawn marks] of every Plotly figure on the page."""
    return page.evaluate(DRAWN)


def test_report_html_draws_every_figure_offline(study_db, browser, shots, tmp_path):
    out = tmp_path / "report"
    assert cli(["report", "--db", str(study_db), "--out", str(out), "--no-cifar10h", "--bootstrap", "200"]) == 0
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    asked = []

    def refuse(route) -> None:  # anything but the file itself and inline data would be a request leaving the file
        if route.request.url.startswith(("file://", "data:")):
            route.continue_()
        else:
            asked.append(route.request.url)
            route.abort()

    page.route("**/*", refuse)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((out / "report.html").as_uri())
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length > 0", timeout=WAIT_MS)
    page.wait_for_timeout(1000)
    figures = drawn_figures(page)
    names = {f[0] for f in figures}
    assert {"figure-accuracy", "figure-fooled", "figure-agreement", "figure-confusion", "figure-reaction-times",
            "figure-top-1", "figure-top-6"} <= names, names
    assert len(figures) == 11 and all(svgs >= 1 and marks >= 1 for _, svgs, marks in figures), figures
    assert not asked and not errors, (asked, errors)
    # the images are shown at 192 px, pixelated
    sizes = page.evaluate("() => [...document.images].map(i => [i.width, i.naturalWidth, getComputedStyle(i).imageRendering])")
    assert len(sizes) == 6 and all(s == [192, 192, "pixelated"] for s in sizes), sizes
    page.screenshot(path=str(shots / "report-1280.png"), full_page=True)
    page.close()
    assert (shots / "report-1280.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_tab_draws_every_figure(study_db, browser, shots, tmp_path):
    env = {**os.environ, "STUDY_DB": str(study_db), "STUDY_ADMIN_PASSWORD": PASSWORD,
           "RANDMASK_ZOO": str(tmp_path / "zoo"), "RANDMASK_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    with streamlit_server(ROOT / "app.py", env, tmp_path / "server.log", timeout=120) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{url}/study_admin")
        page.get_by_label("Organiser password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        settle(page)
        page.get_by_text("Live progress (refresh every 10 s)").click()  # off: a page that settles
        settle(page)
        page.get_by_role("tab", name="Results").click()
        expect(page.get_by_role("heading", name="Images that fooled people most")).to_be_visible(timeout=WAIT_MS)
        settle(page)
        no_exception(page)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= 11",
                               timeout=WAIT_MS)
        figures = [f for f in drawn_figures(page) if f[1]]
        assert len(figures) == 11 and all(marks >= 1 for _, _, marks in figures), figures
        images = page.evaluate("() => [...document.querySelectorAll('[data-testid=stImage] img')].map(i => "
                               "[i.naturalWidth, i.currentSrc.split('.').pop()])")
        assert images == [[192, "png"]] * 6, images
        screenshot_whole(page, shots / "results-tab-1280.png", 1280)
        page.close()
    assert (shots / "results-tab-1280.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
