"""The researcher's path in Debian's Chromium (Playwright): the landing page (the atlas) -> a click
on the top induction head of the role grid -> its head page (the head in the address) -> its stored
pattern, hovering a token -> back -> the Heads page of a part run -> a click on a heatmap cell
selects that head -> the Live pattern page, all heads -> hovering a thumbnail shows its head,
tokens and weight -> a click enlarges it. Every request the page makes is recorded: none leaves
127.0.0.1. Screenshots in ``$WORKBENCH_SCREENSHOTS``, else a pytest temporary folder.

By default on the fixture atlas with the tiny-llama model; ``WORKBENCH_PATH_RUNS=runs`` (a runs
folder holding an atlas, e.g. ``make demo``'s) and ``WORKBENCH_PATH_MODEL=smollm2-135m`` walk the
same path on the demo atlas."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from tests.app_fixture import make_atlas_runs
from tests.test_app_browser import CHROMIUM_ARGS, READY, browser_path, serve_app
from workbench.heads import format_head

playwright = pytest.importorskip("playwright.sync_api")

# page coordinates of (x, y) in the subplot of the first chart whose subplot title (or, without
# titles, the first subplot) starts with `title`
POINT = """([title, x, y]) => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const L = gd._fullLayout;
  let i = 0;
  if (title) {
    const titles = (L.annotations || []).map(a => (a.text || '').replace(/<br>/g, ''));
    i = titles.findIndex(t => t.startsWith(title));
  }
  const sx = i === 0 ? 'xaxis' : 'xaxis' + (i + 1), sy = i === 0 ? 'yaxis' : 'yaxis' + (i + 1);
  const box = gd.getBoundingClientRect();
  return [box.left + L[sx]._offset + L[sx].l2p(x), box.top + L[sy]._offset + L[sy].l2p(y)];
}"""
# a clickable cell of the first chart other than the chosen one: [x, y]
OTHER_CELL = """() => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const chosen = gd._fullData.find(t => t.name === 'chosen head');
  const cells = gd._fullData.find(t => t.name === 'click-cells');
  for (let i = cells.x.length - 1; i >= 0; i--) {
    if (!chosen || cells.x[i] !== chosen.x[0] || cells.y[i] !== chosen.y[0])
      return [cells.x[i], cells.y[i]];
  }
}"""
# the chosen-head outline of the first chart is on [x, y]
MOVED = """([x, y]) => {
  const gd = document.querySelector('[data-testid="stPlotlyChart"] .js-plotly-plot');
  const chosen = gd && gd._fullData && gd._fullData.find(t => t.name === 'chosen head');
  return !!chosen && chosen.x[0] === x && chosen.y[0] === y;
}"""
SHADOW = """([selector, what]) => {
  for (const host of document.querySelectorAll('*')) {
    const found = host.shadowRoot && host.shadowRoot.querySelector(selector);
    if (found) return what === 'text' ? found.textContent : true;
  }
  return null;
}"""


def path_runs(tmp_path_factory) -> Path:
    given = os.environ.get("WORKBENCH_PATH_RUNS")
    return Path(given) if given else make_atlas_runs(
        tmp_path_factory.mktemp("browser-atlas") / "runs")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runs = path_runs(tmp_path_factory)
    with serve_app(runs) as (url, _, _):
        yield url, runs


def settle(page, timeout=60_000):
    page.wait_for_function(READY, timeout=timeout)
    page.wait_for_timeout(300)
    page.wait_for_function(READY, timeout=timeout)


def chosen_atlas(runs: Path) -> tuple[str, dict]:
    """The atlas the landing page opens (app.atlas_data.preferred_atlas) and its atlas.json."""
    from app.atlas_data import preferred_atlas
    from app.data import RunsRoot

    atlas_id = preferred_atlas(RunsRoot(runs).runs())
    return atlas_id, json.loads((runs / atlas_id / "atlas.json").read_text())


def picked(page, label: str) -> str:
    """The shown value of the selectbox labelled ``label``."""
    return page.locator(f"[data-testid='stSelectbox'] input[aria-label='{label}']").first \
        .input_value()


def test_researcher_path_in_chromium(served, tmp_path_factory):
    url, runs = served
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    atlas_id, doc = chosen_atlas(runs)
    heads = pd.read_parquet(runs / atlas_id / "atlas.parquet")
    top = heads.sort_values("induction_rank").iloc[0]
    layer, head = int(top["layer"]), int(top["head"])
    name = format_head((layer, head))
    model = os.environ.get("WORKBENCH_PATH_MODEL", "tiny-llama")
    requests: list[str] = []
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.on("request", lambda r: requests.append(r.url))
        try:
            # 1. the landing page: the atlas
            page.goto(url)
            settle(page)
            assert page.locator("h1").first.inner_text() == "Atlas"
            assert page.get_by_text(atlas_id, exact=True).count() >= 1
            page.screenshot(path=str(shots / "1-atlas.png"), full_page=True)
            # 2. the top induction head in the grid -> its page, the head in the address
            x, y = page.evaluate(POINT, ["induction", head, layer])
            page.mouse.click(x, y)
            page.wait_for_function(f"() => document.querySelector('h1') && document"
                                   f".querySelector('h1').innerText === 'Head {name}'",
                                   timeout=60_000)
            settle(page)
            assert "/head?" in page.url and f"head={name}" in page.url
            assert f"run={atlas_id}" in page.url
            # 3. its pattern: the atlas's stored example (else the live pattern the head page
            # opens, the prompt run at once); hovering a token says where it attends
            try:
                page.wait_for_function(SHADOW, arg=[".tv-tok", "node"], timeout=15_000)
                live = False
            except playwright.TimeoutError:  # no stored pattern (an atlas without them)
                page.get_by_role("button", name=f"Live pattern of {name}").click()
                page.wait_for_function(SHADOW, arg=[".tv-tok", "node"], timeout=600_000)
                settle(page, 120_000)
                assert page.locator("h1").first.inner_text() == "Live pattern"
                assert (picked(page, "Layer"), picked(page, "Head")) == (str(layer), str(head))
                assert f"run={atlas_id}" in page.url  # the sidebar stays on the atlas
                live = True
            before = page.evaluate(SHADOW, ["[data-testid='token-view-info']", "text"])
            page.locator(".tv-out .tv-tok[data-pos='1']").first.hover()
            after = page.evaluate(SHADOW, ["[data-testid='token-view-info']", "text"])
            assert after != before and " attends to: " in after and "attended by" in after
            assert after.startswith("1:")
            page.screenshot(path=str(shots / "2-head-pattern.png"), full_page=True)
            # 4. back (through the head page when the live pattern was opened): the atlas
            for _ in range(3 if live else 1):
                page.go_back()
                settle(page)
                if page.locator("h1").first.inner_text() == "Atlas":
                    break
            assert page.locator("h1").first.inner_text() == "Atlas"
            # 5. the Heads page of a part run: a click on a cell selects that head
            part = next(iter(doc["runs"].values()))["run_id"]
            page.goto(f"{url}/heads?run={part}")
            settle(page)
            cell = page.evaluate(OTHER_CELL)
            x, y = page.evaluate(POINT, ["", *cell])
            page.mouse.click(x, y)
            page.wait_for_function(MOVED, arg=cell, timeout=60_000)
            settle(page)
            cell = [int(v) for v in cell]
            assert (picked(page, "Layer"), picked(page, "Head")) == (str(cell[0]), str(cell[1]))
            assert f"head={format_head(cell)}" in page.url
            page.screenshot(path=str(shots / "3-heads-click.png"), full_page=True)
            # 6. Live pattern, all heads: hover a thumbnail, click it -> enlarged
            page.goto(f"{url}/pattern?run={part}")
            settle(page)
            box = page.locator("[data-testid='stSelectbox']").filter(has_text="Model")
            box.click()
            page.keyboard.type(model)
            page.keyboard.press("Enter")
            page.get_by_label("Prompt").fill("one two three one two three")
            page.get_by_role("button", name="Show attention").click()
            page.wait_for_function(
                "() => [...document.querySelectorAll('svg text')].some("
                "t => t.textContent === 'key (position:token)')", timeout=300_000)
            settle(page, 120_000)
            page.get_by_text("All heads").click()
            canvas = page.locator("canvas[data-testid='model-view']")
            canvas.wait_for(timeout=60_000)
            settle(page)
            size = canvas.bounding_box()
            geo = json.loads(canvas.get_attribute("data-geometry"))
            css = size["width"] / geo["width"]  # canvas pixels -> page pixels
            target = (min(2, int(top["layer"])), 1)  # a thumbnail: (layer, head)
            spot = {"x": (geo["left"] + target[1] * geo["cell"] + geo["n_px"] * 0.6) * css,
                    "y": (geo["top"] + target[0] * geo["cell"] + geo["n_px"] * 0.8) * css}
            canvas.hover(position=spot)
            tip = page.locator("[data-testid='model-view-tip']")
            text = tip.inner_text()
            found = re.match(r"L(\d+)H(\d+) · query (\d+):.* → key (\d+):.* · weight ([\d.]+)",
                             text)
            assert found, text
            assert tuple(map(int, found.groups()[:2])) == target
            assert int(found.group(4)) <= int(found.group(3))  # causal: a key at or before
            page.screenshot(path=str(shots / "4-all-heads.png"), full_page=True)
            canvas.click(position=spot)
            page.get_by_text("Attention from token").wait_for(timeout=60_000)
            settle(page)
            assert (picked(page, "Layer"), picked(page, "Head")) == found.groups()[:2]
            assert canvas.count() == 0
            page.screenshot(path=str(shots / "5-enlarged.png"), full_page=True)
            assert page.locator("[data-testid='stException']").count() == 0
        except Exception:
            page.screenshot(path=str(shots / "failed.png"), full_page=True)
            raise
        finally:
            browser.close()
    outside = [r for r in requests if not r.startswith(("http://127.0.0.1", "ws://127.0.0.1",
                                                        "data:", "blob:"))]
    assert requests and not outside, outside
    print(f"screenshots: {shots}")
