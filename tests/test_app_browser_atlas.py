"""The researcher's path in Debian's Chromium (Playwright), on a fixture atlas: the app opens on
the Atlas page -> a click on a head of the induction panel selects it -> a click on the top
induction head shows its evidence and stored pattern -> a typed prompt on the Live pattern page
renders its pattern (tiny-llama). Every request the page makes is recorded: none leaves
127.0.0.1 (no font or icon from the internet). Screenshots in ``$WORKBENCH_SCREENSHOTS``, else a
pytest temporary folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.app_fixture import TOP_INDUCTION, make_atlas_runs
from tests.test_app_browser import CHROMIUM_ARGS, READY, browser_path, serve_app

playwright = pytest.importorskip("playwright.sync_api")

# page coordinates of a point of the grid's panel ``col`` (1-based), from plotly's own axes
POINT = """([col, head, layer]) => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const L = gd._fullLayout, sx = col === 1 ? 'xaxis' : 'xaxis' + col,
        sy = col === 1 ? 'yaxis' : 'yaxis' + col;
  const box = gd.getBoundingClientRect();
  return [box.left + L[sx]._offset + L[sx].l2p(head),
          box.top + L[sy]._offset + L[sy].l2p(layer)];
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve_app(make_atlas_runs(tmp_path_factory.mktemp("browser-atlas") / "runs")) as served:
        yield served[0]


def settle(page, timeout=60_000):
    page.wait_for_function(READY, timeout=timeout)
    page.wait_for_timeout(300)
    page.wait_for_function(READY, timeout=timeout)


def head_value(page) -> str:
    return page.locator("h3").filter(has_text="Head L").first.inner_text()


def test_atlas_to_live_pattern_in_chromium(server, tmp_path_factory):
    url = server
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(url)
            settle(page)
            assert page.locator("h1").first.inner_text() == "Atlas"
            page.screenshot(path=str(shots / "atlas.png"), full_page=True)
            x, y = page.evaluate(POINT, [3, 0, 0])  # induction panel, layer 0 head 0
            page.mouse.click(x, y)
            page.wait_for_function("() => [...document.querySelectorAll('h3')].some("
                                   "h => h.innerText.startsWith('Head L0H0'))", timeout=30_000)
            settle(page)
            layer, head = TOP_INDUCTION
            x, y = page.evaluate(POINT, [3, head, layer])
            page.mouse.click(x, y)
            page.wait_for_function("() => [...document.querySelectorAll('h3')].some("
                                   f"h => h.innerText.startsWith('Head L{layer}H{head}'))",
                                   timeout=30_000)
            settle(page)
            assert page.get_by_text("Attention pattern on the example prompts").count() == 1
            ticks = page.locator("svg text").all_text_contents()
            assert "0:The" in ticks  # the pattern over the part run's tokens (pos:token)
            page.screenshot(path=str(shots / "atlas-head.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0

            page.goto(f"{url}/pattern")
            settle(page)
            model = page.locator("[data-testid='stSelectbox']").filter(has_text="Model")
            model.click()
            page.keyboard.type("tiny-llama")
            page.keyboard.press("Enter")
            page.get_by_label("Prompt").fill("one two three one two three")
            page.get_by_role("button", name="Show attention").click()
            page.wait_for_function(  # the text coloured from the last token, and the pattern
                "() => [...document.querySelectorAll('svg text')].some(t => t.textContent"
                ".startsWith('\u25b6')) && [...document.querySelectorAll('svg text')].some("
                "t => t.textContent === 'key (position:token)')", timeout=120_000)
            settle(page, 120_000)
            assert page.get_by_text("tiny-llama,").count() == 1
            assert page.locator("[data-testid='stException']").count() == 0
            page.screenshot(path=str(shots / "live-pattern.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(shots / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    outside = [r for r in requests if not r.startswith(("http://127.0.0.1", "ws://127.0.0.1",
                                                        "data:", "blob:"))]
    assert requests and not outside, outside
    print(f"screenshots: {shots}")
