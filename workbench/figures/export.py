"""Export figures as PDF, SVG and PNG through plotly + kaleido, and write their sidecars.

Kaleido drives a headless Chromium. :func:`find_browser` looks, in order, at ``$WORKBENCH_BROWSER``
(or kaleido's ``$BROWSER_PATH``), Debian's ``/usr/bin/chromium``, Chrome/Chromium on ``PATH``, and a
browser fetched with ``kaleido_get_chrome``; it raises :class:`BrowserNotFound`, naming what to
install, when there is none. MathJax is off (no network is needed).

Exports are deterministic: the same figure gives the same bytes. Plotly.js names SVG clip paths
and colourbars after random per-render ids and Chromium stamps PDFs with the current time;
:func:`render` gives every trace a ``uid`` derived from the figure, replaces the layout's id the
same way, and sets the PDF dates to 2000-01-01 (same length, so the PDF's byte offsets stay valid).
PNGs carry no timestamp.

PDF pages: kaleido 1.5 prints the figure's page with Chromium's ``Page.printToPDF`` and 0.1 in
margins on every side, which shrinks the figure by 0.2 in / width (5.7% at 3.5 in), shifts it
and clips its bottom 0.1 in inside a page of the right size (descenders of the x-axis title were
cut). :func:`_patch_kaleido_pdf` makes it print with zero margins, so the PDF page holds the figure
at exactly its nominal size, as the PNG and SVG do (tests/test_figures_pdf.py checks it with
poppler).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import plotly.graph_objects as go

from workbench.errors import InputError, WorkbenchError
from workbench.figures.plot import Plot, describe, sidecar_csv, sidecar_json
from workbench.figures.style import PX_PER_IN, Width
from workbench.figures.vector import vector_cells
from workbench.store import atomic_write_bytes

FORMATS = ("pdf", "svg", "png")
BROWSER_ENV = "WORKBENCH_BROWSER"
DEFAULT_BROWSER = Path("/usr/bin/chromium")
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
INSTALL_HINT = ("install Debian's chromium (`sudo apt-get install -y chromium`, or "
                f"`make browser`), or set {BROWSER_ENV} to a Chrome or Chromium executable")
_SVG_UID = re.compile(rb'id="defs-([0-9a-z]+)"')
_PDF_DATE = re.compile(rb"/(CreationDate|ModDate) \(D:(\d{14})([^)]*)\)")
_server = {"running": False}


class BrowserNotFound(WorkbenchError):
    """No Chromium for kaleido to export figures with; the message says what to install."""


def _print_pdf_without_margins(tab):
    """kaleido's ``print_pdf`` with zero page margins (see the module docstring)."""
    from kaleido._kaleido_tab import _devtools_utils as dtools

    params = {"printBackground": True, "marginTop": 0, "marginBottom": 0, "marginLeft": 0,
              "marginRight": 0, "preferCSSPageSize": True, "pageRanges": "1"}

    async def send():
        response = await tab.send_command("Page.printToPDF", params=params)
        dtools._raise_error(response)
        return response.get("result", {}).get("data")
    return send()


def _patch_kaleido_pdf() -> None:
    """Replace kaleido's PDF printing by :func:`_print_pdf_without_margins` (idempotent).

    Raises:
        WorkbenchError: this kaleido has no ``print_pdf`` to replace (a version other than 1.x;
            its PDFs would be shrunk and clipped).
    """
    from kaleido._kaleido_tab import _devtools_utils as dtools

    if getattr(dtools.print_pdf, "__name__", "") == "_print_pdf_without_margins":
        return
    if not hasattr(dtools, "print_pdf") or not hasattr(dtools, "_raise_error"):
        raise WorkbenchError("this kaleido has no _devtools_utils.print_pdf; the workbench needs "
                             "kaleido 1.x (see constraints.txt) to print PDFs without margins")
    dtools.print_pdf = _print_pdf_without_margins


def find_browser() -> Path:
    """The Chromium kaleido will drive.

    Raises:
        BrowserNotFound: ``$WORKBENCH_BROWSER`` / ``$BROWSER_PATH`` names no executable, or no
            browser was found anywhere.
    """
    for env in (BROWSER_ENV, "BROWSER_PATH"):
        explicit = os.environ.get(env)
        if explicit:
            if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
                return Path(explicit)
            raise BrowserNotFound(f"{env}={explicit!r} is not an executable browser; "
                                  f"{INSTALL_HINT}")
    candidates = [str(DEFAULT_BROWSER)] + [shutil.which(n) or "" for n in BROWSER_NAMES]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return Path(candidate)
    from choreographer.browsers.chromium import Chromium

    found = Chromium.find_browser(skip_local=False, skip_typical=True)
    if found:
        return Path(found)
    raise BrowserNotFound(f"figure export needs a Chromium browser and none was found (looked at "
                          f"{DEFAULT_BROWSER} and for {', '.join(BROWSER_NAMES)} on PATH); "
                          f"{INSTALL_HINT}")


def open_browser(browser: Path | None = None) -> None:
    """Start the shared headless browser now and keep it for every later :func:`render` (the app
    calls this once; it is closed at exit or by :func:`close_browser`). Idempotent.

    Raises:
        BrowserNotFound: see :func:`find_browser`.
    """
    import kaleido

    if _server["running"]:
        return
    path = str(browser or find_browser())
    _quiet_browser_thread()
    kaleido.start_sync_server(path=path, mathjax=False, silence_warnings=True)
    _server.update(running=True, path=path, error=None)
    if not _server.get("atexit"):
        atexit.register(close_browser)
        _server["atexit"] = True


def close_browser() -> None:
    """Stop the shared browser if it runs."""
    import kaleido

    if _server["running"]:
        _server["running"] = False
        kaleido.stop_sync_server(silence_warnings=True)


@contextlib.contextmanager
def export_session(browser: Path | None = None) -> Iterator[None]:
    """One browser for the exports inside the block (else every :func:`render` starts one, about
    1.5 s); inside an open browser or an outer session it reuses that one.

    Raises:
        BrowserNotFound: see :func:`find_browser`.
    """
    if _server["running"]:
        yield
        return
    open_browser(browser)
    try:
        yield
    finally:
        close_browser()


def render(figure: go.Figure | Plot, fmt: str, *, width: Width = "single", dpi: int = 300,
           browser: Path | None = None) -> bytes:
    """A figure as ``pdf``, ``svg`` or ``png`` bytes (what the app's download buttons serve).

    Args:
        figure: a plotly figure (drawn at its layout size, 700 x 500 when unset) or a
            :class:`Plot` (drawn at ``width``); heatmaps are drawn as vector cells (see
            :func:`workbench.figures.vector.vector_cells`).
        dpi: PNG resolution at the figure's nominal print size (PDF and SVG are vector).

    Raises:
        InputError: an unknown format. BrowserNotFound: see :func:`find_browser`.
    """
    import kaleido

    if fmt not in FORMATS:
        raise InputError(f"figure format {fmt!r} is not one of {', '.join(FORMATS)}")
    _patch_kaleido_pdf()
    fig = vector_cells(figure.figure(width) if isinstance(figure, Plot) else figure)
    spec = fig.to_dict()
    uid = _figure_uid(spec)
    for i, trace in enumerate(spec["data"]):  # plotly.js would draw a random uid per trace
        trace.setdefault("uid", f"{uid.decode()}{i}")
    opts = {"format": fmt, "width": fig.layout.width or 700, "height": fig.layout.height or 500,
            "scale": dpi / PX_PER_IN if fmt == "png" else 1}
    if _server["running"]:
        data = _server_call(spec, opts)
    else:
        kopts = {"path": str(browser or find_browser()), "mathjax": False}
        data = kaleido.calc_fig_sync(spec, opts=opts, kopts=kopts)
    return normalise(data, fmt, uid=uid)


def _quiet_browser_thread() -> None:
    """Keep the error that ends kaleido's browser thread (Chromium failed to start) for
    :func:`_server_call`'s one-line message instead of a traceback on stderr. Idempotent."""
    import threading

    import kaleido

    if _server.get("hooked"):
        return
    import logging

    logging.getLogger("choreographer").setLevel(logging.ERROR)  # its watchdog's shutdown note
    previous = threading.excepthook

    def hook(args) -> None:
        if args.thread is getattr(getattr(kaleido, "_global_server", None), "_thread", None):
            _server["error"] = args.exc_value
            return
        previous(args)

    threading.excepthook = hook
    _server["hooked"] = True


class BrowserFailed(WorkbenchError):
    """The headless browser stopped or never started (Chromium crashed, or cannot run here)."""


def _server_call(spec: dict, opts: dict) -> bytes:
    """``kaleido.calc_fig_sync`` on the shared server, waiting only while its browser thread
    lives: kaleido runs the browser in a background thread whose start-up error (Chromium fails
    to launch) never reaches the caller, which would wait for an answer forever.

    Raises:
        BrowserFailed: the browser thread is gone (the server is closed).
    """
    import threading

    import kaleido

    server = getattr(kaleido, "_global_server", None)
    worker = getattr(server, "_thread", None)
    if worker is None:  # another kaleido: no thread to watch
        return kaleido.calc_fig_sync(spec, opts=opts)
    answer: dict = {}

    def call() -> None:
        try:
            answer["data"] = kaleido.calc_fig_sync(spec, opts=opts)
        except BaseException as err:  # noqa: BLE001 - handed to the caller below
            answer["error"] = err

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    while caller.is_alive():
        caller.join(0.2)
        if caller.is_alive() and not worker.is_alive():
            _server["running"] = False
            with contextlib.suppress(Exception):
                server._initialized = False  # its thread is dead: let a later open start anew
            why = _server.get("error")
            why = f": {str(why.args[0] if why.args else why)[:200]}" if why else ""
            raise BrowserFailed("the headless browser for figure export stopped or did not "
                                f"start (Chromium at {_server.get('path') or 'its path'}{why}); "
                                f"{INSTALL_HINT}")
    if "error" in answer:
        raise answer["error"]
    return answer["data"]


def _figure_uid(spec: dict) -> bytes:
    text = json.dumps(spec, sort_keys=True, default=str).encode()
    return hashlib.sha256(text).hexdigest()[:6].encode()


def normalise(data: bytes, fmt: str, *, uid: bytes = b"000000") -> bytes:
    """Remove what differs between two exports of the same figure (see the module docstring)."""
    if fmt == "svg":
        found = _SVG_UID.search(data)
        if found:  # only where plotly.js uses the id: clip paths, defs, legends, gradients
            where = re.compile(rb"(clip|defs-|legend|[\"'#]g)" + re.escape(found.group(1)))
            data = where.sub(lambda m: m.group(1) + uid, data)
    elif fmt == "pdf":
        data = _PDF_DATE.sub(lambda m: b"/" + m.group(1) + b" (D:20000101000000"
                             + re.sub(rb"\d", b"0", m.group(3)).replace(b"-", b"+") + b")", data)
    return data


def write_plot(plot: Plot, out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
               width: Width = "single", dpi: int = 300, extra: dict | None = None) -> list[Path]:
    """Write ``<name>.<fmt>`` for each format and the sidecars ``<name>.csv`` (the plotted data)
    and ``<name>.json`` (kind, params, column types, width, dpi and ``extra``), atomically.

    Returns:
        the paths written, figure files first.
    """
    out_dir = Path(out_dir)
    fig = plot.figure(width)
    paths = []
    for fmt in formats:
        paths.append(out_dir / f"{plot.name}.{fmt}")
        atomic_write_bytes(paths[-1], render(fig, fmt, dpi=dpi))
    paths.append(out_dir / f"{plot.name}.csv")
    atomic_write_bytes(paths[-1], sidecar_csv(plot))
    paths.append(out_dir / f"{plot.name}.json")
    atomic_write_bytes(paths[-1], sidecar_json(plot, width=width, dpi=dpi, **(extra or {})))
    return paths


def export_figures(plots: list[Plot], out_dir: Path, *, formats: tuple[str, ...] = FORMATS,
                   width: Width = "single", dpi: int = 300, extra: dict | None = None,
                   skipped: list[dict] | None = None,
                   on_written: Callable[[Plot, list[Path]], None] | None = None) -> Path:
    """Write every plot (see :func:`write_plot`) in one browser session, then ``index.json``
    listing each figure's name, kind, table, metric, rows (``where``), one-line description and
    files, and under ``skipped`` the figures not drawn with the reason (``RunSource.skipped``).
    Returns the index's path.

    Raises:
        BrowserNotFound: before anything is written.
    """
    out_dir = Path(out_dir)
    index = []
    with export_session():
        for plot in plots:
            paths = write_plot(plot, out_dir, formats=formats, width=width, dpi=dpi, extra=extra)
            index.append({"name": plot.name, "kind": plot.kind, "table": plot.params.get("table"),
                          "metric": plot.params.get("metric"),
                          "where": plot.params.get("where") or {},
                          "description": describe(plot), "files": [p.name for p in paths]})
            if on_written:
                on_written(plot, paths)
    doc = {"width": width, "dpi": dpi, "formats": list(formats), "figures": index,
           "skipped": list(skipped or []), **(extra or {})}
    path = out_dir / "index.json"
    atomic_write_bytes(path, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return path
