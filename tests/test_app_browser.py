"""The real server (``workbench app``) on a free localhost port, every page loaded in headless
Chromium through Playwright: no error on the page, HTML from a run shown as text and never run,
and a screenshot of each page (in ``$WORKBENCH_SCREENSHOTS``, else a pytest temporary folder)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.app_fixture import SCRIPT_TEXT, SCRIPT_TOKEN, make_app_runs
from tests.conftest import ROOT

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--headless=new",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PAGES = {"": "Runs", "heads": "Heads", "layers": "Layers", "position": "Position bias",
         "circuits": "Circuits", "interventions": "Interventions", "live": "Live intervention"}
READY = """() => {
  if (document.querySelector('[data-testid="stStatusWidget"]')) return false;
  if (!document.querySelector('h1')) return false;
  if (document.querySelector('[data-testid="stSkeleton"]')) return false;
  for (const chart of document.querySelectorAll('[data-testid="stPlotlyChart"]')) {
    if (chart.offsetParent !== null && !chart.querySelector('.main-svg')) return false;
  }
  return true;
}"""


def browser_path() -> str:
    from workbench.figures import BrowserNotFound, find_browser

    try:
        return str(find_browser())
    except BrowserNotFound as err:
        pytest.skip(str(err))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve_app(runs: Path):
    """``workbench app`` on ``runs`` at a free localhost port, until the block ends; yields
    ``(url, port, proc)`` once the server answers its health check (90 s at most)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench_cli", "app", "--runs-dir",
                             str(runs), "--port", str(port)], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(proc.stdout.read().decode()[-3000:]) from None
                time.sleep(0.3)
        yield url, port, proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the streamlit server it started
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("browser")
    (base / "outside").mkdir()
    with serve_app(make_app_runs(base / "runs", base / "outside")) as served:
        yield served


def test_server_listens_on_localhost_only(server):
    import psutil

    _, port, _ = server
    listening = [c.laddr.ip for c in psutil.net_connections(kind="tcp")
                 if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN]
    assert listening and set(listening) <= {"127.0.0.1"}, listening


def test_every_page_in_chromium(server, tmp_path_factory):
    url, _, _ = server
    shots = Path(os.environ.get("WORKBENCH_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    shots.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        try:
            for path, title in PAGES.items():
                page.goto(f"{url}/{path}?run=fixture&compare=second")
                page.wait_for_function(READY, timeout=60_000)
                page.wait_for_timeout(200)
                if path == "heads":
                    page.get_by_role("tab", name="Attention pattern").click()
                    page.wait_for_function(READY, timeout=30_000)
                    page.wait_for_timeout(200)
                    tick_texts = page.locator("svg text").all_text_contents()
                    # the token, drawn as text after its position (pos:token)
                    assert any(t.split(":", 1)[-1] == SCRIPT_TOKEN for t in tick_texts)
                    assert SCRIPT_TEXT in page.locator("[data-testid='stCode']").all_text_contents()
                    with page.expect_download() as download:  # rendered when clicked
                        page.get_by_role("button", name="SVG").first.click()
                    svg = Path(download.value.path()).read_bytes()
                    assert svg.lstrip().startswith(b"<svg") and download.value.suggested_filename \
                        .endswith(".svg")
                page.screenshot(path=str(shots / f"{path or 'runs'}.png"), full_page=True)
                assert page.locator("h1").first.inner_text() == title
                assert page.locator("[data-testid='stException']").count() == 0, path
                assert "Traceback" not in page.content()
                assert page.evaluate("window.__pwned") is None  # the run's <script> never ran
                assert page.locator("img[src='x']").count() == 0
        finally:
            browser.close()
    print(f"screenshots: {shots}")
