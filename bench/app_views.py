"""Benchmark: the Live pattern page's all-heads view (BertViz's model view) drawn in Chromium.

    python -m bench.app_views [--tokens 30,128] [--repeats 3] [--pages runs] [--json out.json]

Serves ``bench/model_view_page.py`` (synthetic causal softmax patterns of SmolLM2-135M's shape,
30 layers x 9 heads) with ``streamlit run`` on 127.0.0.1 and opens it in Debian's Chromium through
Playwright (headless, as the browser tests launch it). Per view and token count, the seconds from
navigation until the view is drawn (Python builds it, the server sends it, the browser draws it):

* ``canvas``: the app's view, one canvas (``app.components.model_view``);
* ``plotly``: the figure the page drew before, one plotly heatmap per head (270 traces,
  ``workbench.figures.pattern_grid``).

The two are interleaved in each round and reported as medians and their ratio (a loaded machine
slows both alike). The canvas also reports its own drawing time in the browser (``data-draw-ms``).

``--pages runs`` also times the pages a researcher opens, served by ``workbench app`` on that runs
folder (one holding an atlas, e.g. ``make demo``'s ``runs``): navigation until the page has
settled (no script running, every visible chart drawn) for the Atlas landing page, the head page of
the top induction head, and the Heads page of the atlas's first part run on that head.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

PAGE = Path(__file__).resolve().parent / "model_view_page.py"
CANVAS_READY = """() => {
  const hosts = [...document.querySelectorAll('*')].filter(e => e.shadowRoot);
  for (const h of hosts) {
    const c = h.shadowRoot.querySelector('canvas[data-draw-ms]');
    if (c) return c.getAttribute('data-draw-ms');
  }
  return null;
}"""
PLOTLY_READY = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  return !!(gd && gd._fullData && gd.querySelectorAll('.hm, image').length >= gd._fullData.length)
}"""


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless=new",
                 "--disable-background-networking", "--disable-component-update"]


@contextlib.contextmanager
def served(argv: list[str], what: str) -> Iterator[str]:
    """Run ``argv + [port]`` (a Streamlit server) at a free localhost port until the block ends;
    yields its URL once it answers its health check (90 s at most, else ``RuntimeError`` naming
    ``what``)."""
    import os
    import signal
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([*argv, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def measure(tokens: list[int], repeats: int) -> dict:
    from playwright.sync_api import sync_playwright

    from workbench.figures import find_browser

    argv = [sys.executable, "-m", "streamlit", "run", str(PAGE), "--server.address",
            "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.port"]
    times: dict = {}
    with served(argv, "the bench page") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(find_browser()), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for n in tokens:  # warm-up: the page's data cache and the component's registration
            for view in ("canvas", "plotly"):
                page.goto(f"{url}/?view={view}&n={n}")
                page.wait_for_function(CANVAS_READY if view == "canvas" else PLOTLY_READY,
                                       timeout=300_000)
        for _ in range(repeats):
            for n in tokens:
                for view in ("canvas", "plotly"):
                    page.goto("about:blank")
                    start = time.perf_counter()
                    page.goto(f"{url}/?view={view}&n={n}")
                    got = page.wait_for_function(
                        CANVAS_READY if view == "canvas" else PLOTLY_READY,
                        timeout=300_000, polling=20)
                    times.setdefault(f"{view}_{n}_s", []).append(time.perf_counter() - start)
                    if view == "canvas":
                        times.setdefault(f"canvas_{n}_draw_ms", []).append(
                            float(got.json_value()))
        browser.close()
    out = {k: statistics.median(v) for k, v in times.items()}
    for n in tokens:
        out[f"plotly_over_canvas_{n}"] = out[f"plotly_{n}_s"] / out[f"canvas_{n}_s"]
    return out


READY = """() => {
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (!document.querySelector('h1')) return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  for (const chart of document.querySelectorAll('[data-testid="stPlotlyChart"]')) {
    if (chart.offsetParent !== null && !chart.querySelector('.main-svg')) return false;
  }
  return true;
}"""


def page_times(runs: Path, repeats: int) -> dict:
    """Median seconds from navigation to a settled page, per page (module docstring)."""
    import json as json_

    import pandas as pd
    from playwright.sync_api import sync_playwright

    from app.atlas_data import preferred_atlas
    from app.data import RunsRoot
    from workbench.figures import find_browser
    from workbench.heads import format_head

    atlas_id = preferred_atlas(RunsRoot(runs).runs())
    if atlas_id is None:
        raise SystemExit(f"{runs} holds no atlas")
    heads = pd.read_parquet(runs / atlas_id / "atlas.parquet")
    top = heads.sort_values("induction_rank").iloc[0]
    name = format_head((int(top["layer"]), int(top["head"])))
    part = next(iter(json_.loads((runs / atlas_id / "atlas.json").read_text())["runs"].values()))
    argv = [sys.executable, "-m", "workbench_cli", "app", "--runs-dir", str(runs), "--port"]
    paths = {"atlas_page_s": "/", "head_page_s": f"/head?run={atlas_id}&head={name}",
             "heads_page_s": f"/heads?run={part['run_id']}&head={name}"}
    times: dict = {}
    with served(argv, "the app") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(find_browser()), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        for round_ in range(repeats + 1):  # round 0 warms the caches
            for key, path in paths.items():
                page.goto("about:blank")
                start = time.perf_counter()
                page.goto(url + path)
                page.wait_for_function(READY, timeout=300_000, polling=50)
                page.wait_for_timeout(300)
                page.wait_for_function(READY, timeout=300_000, polling=50)
                if round_:
                    times.setdefault(key, []).append(time.perf_counter() - start - 0.3)
        browser.close()
    return {k: statistics.median(v) for k, v in times.items()}


def suite(quick: bool) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``."""
    tokens = [30] if quick else [30, 128]
    result = measure(tokens, 1 if quick else 3)
    rows = []
    for n in tokens:
        rows += [{"benchmark": "app_views", "measure": f"all heads, {n} tokens, canvas",
                  "value": result[f"canvas_{n}_s"], "unit": "s", "note": "navigation to drawn"},
                 {"benchmark": "app_views", "measure": f"all heads, {n} tokens, 270 plotly",
                  "value": result[f"plotly_{n}_s"], "unit": "s", "note": "the earlier view"}]
    return rows, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="30,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pages", type=Path, help="a runs folder with an atlas: time its pages")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",") if t]
    if any(not 1 <= t <= 512 for t in tokens) or not 1 <= args.repeats <= 20:
        parser.error("--tokens: 1 to 512 each; --repeats: 1 to 20")
    result = measure(tokens, args.repeats) if tokens else {}
    if args.pages:
        result.update(page_times(args.pages, args.repeats))
    print(json.dumps({k: round(v, 3) for k, v in result.items()}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
