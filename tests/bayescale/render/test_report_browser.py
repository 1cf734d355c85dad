"""The report in a real browser: Debian's headless chromium opens report.html from disk (no
server, no network) and every embedded figure must decode and render.

Skips with a message where chromium, its driver or selenium is missing (`.ci/run` installs them).
"""

from __future__ import annotations

import shutil

import pytest

selenium = pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
if shutil.which("chromedriver") is None or not (shutil.which("chromium") or shutil.which("chromium-browser")):
    pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402

from bayescale.render import report  # noqa: E402
from bayescale.workflows import report_for  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_every_figure_of_the_report_loads_in_headless_chromium(browser, small_fit, small_grid, tmp_path):
    path = report_for(small_fit, small_grid, tmp_path / "out", budget=300.0)
    browser.get(path.resolve().as_uri())
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({id: i.closest('figure').id, ok: i.complete && i.naturalWidth > 0,"
        " w: i.naturalWidth, h: i.naturalHeight, shown: i.getBoundingClientRect().width}))"
    )
    # every figure of the report is there (this grid has held-out runs, transfer and a path) ...
    assert sorted(img["id"] for img in images) == sorted(f"fig-{name}" for name in report.FIGURE_NAMES)
    # ... decoded by the browser as an image of real size, and laid out on the page
    for img in images:
        assert img["ok"] and img["w"] > 300 and img["h"] > 200 and img["shown"] > 300, img
    assert browser.title == "bayescale report"
    headings = browser.execute_script("return Array.from(document.querySelectorAll('h2')).map(h => h.textContent)")
    # the answer first, then the details, the grid and its provenance last
    assert headings == ["Recommendation", "How far to trust it", "Allocation details", "What to train next", "Held-out check", "Scaling curves",
                        "Transfer between domains", "Hubs and islands", "Convergence diagnostics", "Grid and provenance"]
    # the recommendation is in the first screenful a person sees
    top = browser.execute_script("return document.querySelector('#recommendation table').getBoundingClientRect().bottom")
    assert top < 1000
    # nothing on the page wider than the window (wide tables scroll inside their own box)
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors
    # the whole page as a person sees it (kept for a look: pytest's tmp folder)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(height, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
