"""Tables that fit: at a 1280 px window every table of every page, tab and view stays inside its container
(Streamlit's data grids need no sideways scrolling; static and markdown tables are no wider than their parent),
and the sidebar's model chips show their whole names; the organiser page's sidebar opens with its Study selector. The robustness explorer reads the committed results/, so
Table 7 has all its real columns. Screenshots go where test_app_browser puts them ($RANDMASK_SCREENSHOTS)."""
from __future__ import annotations

import pytest
from streamlit_server import CHROMIUM
from test_app_browser import ADMIN_PASSWORD, ROOT, WAIT_MS, running_app, screenshot_whole, settle

pytestmark = pytest.mark.browser
WIDTH = 1280

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
if not CHROMIUM.exists():
    pytest.skip("Debian chromium not installed at /usr/bin/chromium (apt-get install chromium)", allow_module_level=True)
expect = sync_api.expect

# every visible table: [kind, its scrolling width, the width it has, its first column headers]
MEASURE = """() => {
  const out = [];
  for (const grid of document.querySelectorAll('[data-testid="stDataFrame"]')) {
    const scroller = grid.querySelector('.dvn-scroller');
    const heads = [...grid.querySelectorAll('th')].map(h => h.innerText).slice(0, 4).join('|');
    if (scroller && scroller.clientWidth > 0)
      out.push(['grid', scroller.scrollWidth, scroller.clientWidth, heads]);
  }
  for (const table of document.querySelectorAll(
      '[data-testid="stTable"] table, [data-testid="stMarkdownContainer"] table')) {
    const heads = [...table.querySelectorAll('th')].map(h => h.innerText).slice(0, 4).join('|');
    if (table.parentElement.clientWidth > 0)
      out.push(['table', table.scrollWidth, table.parentElement.clientWidth, heads]);
  }
  return out;
}"""
CHIPS = """() => [...document.querySelectorAll('[data-testid="stSidebar"] [data-tag] > span')]
  .filter(s => s.clientWidth > 0).map(s => [s.innerText, s.scrollWidth, s.clientWidth])"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, browser):
    with running_app(tmp_path_factory.mktemp("app-fit"), results=ROOT / "results") as (url, shots):
        page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
        page.set_default_timeout(WAIT_MS)
        yield page, url, shots
        page.close()


@pytest.fixture(scope="module")
def browser():
    from streamlit_server import chromium_browser

    with chromium_browser() as launched:
        yield launched


class Tables:
    """Measures every visible table of a page state; remembers what it saw."""

    def __init__(self, page, shots):
        self.page, self.shots, self.seen, self.problems = page, shots, [], []

    def check(self, where: str, expected: int = 1) -> None:
        settle(self.page)
        assert self.page.locator('[data-testid="stException"]').count() == 0, where
        found = self.page.evaluate(MEASURE)
        self.seen.append((where, found))
        assert len(found) >= expected, f"{where}: {len(found)} tables visible, expected {expected}"
        # gathered, not asserted one by one: a failure lists every table that overflows
        self.problems += [f"{where}: {kind} [{heads}] is {scroll} px wide in {width} px"
                          for kind, scroll, width, heads in found if scroll > width]
        self.problems += [f"{where}: the sidebar chip {text!r} is cut ({scroll} px in {width} px)"
                          for text, scroll, width in self.page.evaluate(CHIPS) if scroll > width]

    def shot(self, name: str) -> None:
        screenshot_whole(self.page, self.shots / f"fit-{name}-{WIDTH}.png", WIDTH)


def open_page(page, url: str, path: str, title: str) -> None:
    page.goto(f"{url}/{path}")
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible(timeout=WAIT_MS)
    settle(page)


def test_every_table_fits_at_1280_px(app):
    page, url, shots = app
    tables = Tables(page, shots)
    open_page(page, url, "", "Random Mask, hands on")
    tables.check("home")
    tables.shot("home")

    open_page(page, url, "masks", "Mask patterns")
    for view in ("Heatmaps", "Drop statistics", "Random vs SM vs DC", "What one 3×3 filter sees"):
        page.locator('[data-testid="stMain"]').get_by_text(view, exact=True).first.click()
        tables.check(f"masks / {view}", expected=1 if view == "Drop statistics" else 0)
        tables.shot(f"masks-{view.split()[0].lower()}")

    open_page(page, url, "shuffle", "Patch shuffle")
    page.get_by_role("button", name="Run the batch").click()
    settle(page)
    page.get_by_text("The paper's Table 3 (ImageNet, 5000 images)").click()
    tables.check("shuffle, batch run and the paper's table", expected=2)  # the tiny zoo: no image qualifies
    tables.shot("shuffle")

    open_page(page, url, "noise", "Noise curves")
    page.get_by_role("button", name="Compute the curves").click()
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=WAIT_MS)
    settle(page)
    page.get_by_text("Numbers", exact=True).click()
    tables.check("noise, computed", expected=1)

    open_page(page, url, "gallery", "Adversarial gallery")
    tables.check("gallery", expected=0)
    open_page(page, url, "train", "Train a model")
    tables.check("train", expected=0)

    open_page(page, url, "robustness", "Robustness explorer")
    tables.check("robustness / Table 7")
    tables.shot("robustness")
    page.get_by_text("Every number, with our 95% intervals").click()
    tables.check("robustness / Table 7, every number", expected=2)
    page.get_by_role("tab", name="Figure 7: trade-off").click()
    tables.check("robustness / Figure 7", expected=0)
    page.get_by_role("tab", name="Run a transfer evaluation").click()
    settle(page)
    page.get_by_label("Images to attack", exact=True).and_(page.locator("input")).fill("10")
    page.get_by_label("Images to attack", exact=True).and_(page.locator("input")).press("Enter")
    settle(page)
    page.get_by_role("button", name="Run", exact=True).click()
    expect(page.get_by_role("button", name="Download CSV")).to_be_visible(timeout=WAIT_MS)
    tables.check("robustness / transfer run", expected=1)
    tables.shot("robustness-run")

    open_page(page, url, "study_admin", "Human study: organiser")
    page.get_by_label("Organiser password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    settle(page)
    sidebar = page.locator('[data-testid="stSidebarUserContent"]')
    assert sidebar.get_by_text("Compare these models").count() == 0  # no model picker on the organiser page
    assert sidebar.locator('[data-testid="stWidgetLabel"]').first.inner_text() == "Study"  # its selector leads
    page.get_by_text("Live progress (refresh every 10 s)").click()
    tables.check("organiser / Progress", expected=1)
    page.get_by_role("tab", name="Participants").click()
    tables.check("organiser / Participants", expected=1)
    tables.shot("study_admin-participants")
    page.get_by_role("tab", name="Create").click()
    tables.check("organiser / Create", expected=0)
    page.get_by_role("tab", name="Export").click()
    settle(page)
    page.get_by_role("button", name="Prepare export").click()
    tables.check("organiser / Export", expected=1)
    assert not tables.problems, "\n".join(tables.problems)
    measured = sum(len(found) for _, found in tables.seen)
    assert measured >= 11, tables.seen  # the tables above were really there to measure
