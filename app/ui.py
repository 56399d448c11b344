"""Widgets every page uses: the runs folder and chosen runs, figures with PNG / SVG / PDF downloads
drawn by the figures package, text from runs shown literally, and clear messages instead of
tracebacks.

Strings from a run (ids, prompt texts, tokens, metric and task names) are data: they go to
``st.code`` / ``st.text`` / dataframes, or through :func:`literal` wherever Streamlit would read
Markdown. Nothing uses ``unsafe_allow_html``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Callable, Iterator

import pyarrow as pa
import streamlit as st

from app.data import (RUNS_ENV, MetricInfo, RunsRoot, TableInfo, prompts, table_info,
                      where_of)
from workbench.errors import WorkbenchError
from workbench.figures import BrowserNotFound, Plot, find_browser, open_browser, render
from workbench.figures.shapes import qualifier

ROOT_KEY = "runs_root"  # session state: the runs folder (set by main.py)
RUN_KEY, COMPARE_KEY, WIDTH_KEY = "run", "compare", "figure_width"
NO_RUN = "(none)"
MIME = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&=\"'])")
_browser_lock = threading.Lock()


def literal(text: object) -> str:
    """``text`` escaped so that Streamlit's Markdown shows it character for character (no links,
    images, HTML, emphasis, LaTeX or colour directives)."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


def runs_root() -> RunsRoot:
    """The runs folder the app was started with (see ``main.py``)."""
    return RunsRoot(st.session_state.get(ROOT_KEY) or os.environ.get(RUNS_ENV) or "runs")


def chosen_run() -> str | None:
    """The run chosen in the sidebar; shows how to choose one and returns None when none is."""
    run_id = st.session_state.get(RUN_KEY)
    if not run_id:
        st.info("No run chosen. Pick one in the sidebar (the Runs page lists every run in the "
                "runs folder).")
        return None
    return run_id


def compared_run() -> str | None:
    """The second run chosen in the sidebar, if any."""
    run_id = st.session_state.get(COMPARE_KEY)
    return None if run_id in (None, NO_RUN) else run_id


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show data problems (a missing or unreadable table, records of an unexpected shape) as a
    one-line error instead of a traceback."""
    try:
        yield
    except (WorkbenchError, ValueError, KeyError, OSError, pa.ArrowException) as err:
        st.error(literal(f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else err))


def infos(root: RunsRoot, run_id: str) -> dict[str, TableInfo]:
    """Every record table of a run with its metric shapes, the probes' tables first (in the
    manifest's order); unreadable tables are reported."""
    probes = [p.get("name") for p in root.manifest(run_id).get("probes") or []
              if isinstance(p, dict)]
    out = {}
    for table, why in root.refused_tables(run_id).items():
        st.warning(literal(f"table {table}: refused ({why})"))
    for table in sorted(root.record_tables(run_id),
                        key=lambda t: (probes.index(t) if t in probes else len(probes), t)):
        info = table_info(root.table(run_id, table))
        if info.problem:
            st.warning(literal(f"table {table}: {info.problem}"))
        else:
            out[table] = info
    return out


def metrics_with(infos_: dict[str, TableInfo], *coords: str) -> dict[str, list[str]]:
    """Per table, the metrics whose records carry every coordinate in ``coords``."""
    out = {t: [m for m, mi in info.metrics.items() if set(coords) <= mi.coords]
           for t, info in infos_.items()}
    return {t: ms for t, ms in out.items() if ms}


def patterns_last(info: TableInfo, metrics: list[str]) -> list[str]:
    """``metrics`` with the attention-pattern-like ones (query_pos and key_pos) last: their
    per-head means are rarely the interesting default."""
    return sorted(metrics, key=lambda m: {"query_pos", "key_pos"} <= info.metrics[m].coords)


def variant_label(variant: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in variant.items()) or "all rows"


def pick_variant(info: MetricInfo, key: str, variants: list[dict] | None = None) -> tuple:
    """A selectbox over a metric's segment/condition variants (or the given subset of them, e.g.
    :func:`app.data.with_heads`); the chosen one as a filter."""
    variants = list(info.variants if variants is None else variants) or [{}]
    if len(variants) == 1:
        return where_of(variants[0])
    chosen = st.selectbox("Segment / condition", range(len(variants)), key=key,
                          format_func=lambda i: variant_label(variants[i]))
    return where_of(variants[chosen])


def show_prompt(root: RunsRoot, run_id: str, prompt_id: str) -> None:
    """A prompt's text from the run's prompts table, shown literally (nothing when absent)."""
    table = prompts(root, run_id)
    text = None if table is None else table.loc[table["prompt_id"] == prompt_id, "text"]
    if text is not None and len(text):
        st.code(str(text.iloc[0]), language=None, wrap_lines=True)


def show_plot(plot: Plot, key: str, on_click: Callable[[int, int], None] | None = None,
              xy: tuple[str, str] = ("layer", "head"),
              chosen: tuple[int, int] | None = None) -> None:
    """The figure as drawn for papers (the chosen column width) and its PNG / SVG / PDF
    downloads, rendered only when clicked by the same export as ``workbench figures``.

    With ``on_click``, clicking a cell (of a heatmap too: :func:`app.clicks.clickable`) calls
    ``on_click(layer, head)`` before the page reruns, and nothing fades when a point is selected;
    ``xy`` names what the figure's x and y axes are (``("head", "layer")`` for the atlas grid).
    ``chosen`` (layer, head) is outlined on every panel; the chart is keyed by it, so a head
    chosen elsewhere (a table, a picker) moves the outline and clears the old selection.
    """
    from app.clicks import clickable, highlight, no_fading

    width = st.session_state.get(WIDTH_KEY, "double")
    chart_key = f"chart-{key}" + (f"-{chosen[0]}-{chosen[1]}" if chosen else "")
    extra: dict = {}
    fig = on_screen(plot.figure(width))
    if on_click is not None:
        def clicked() -> None:
            head = clicked_head(st.session_state.get(chart_key), xy)
            if head is not None:
                on_click(*head)
        extra = {"on_select": clicked, "selection_mode": "points"}
        fig = no_fading(clickable(fig))
    if chosen is not None:
        panels = list(dict.fromkeys((t.xaxis or "x", t.yaxis or "y") for t in fig.data))
        fig = highlight(fig, *chosen, xy=xy, axes=panels)
    st.plotly_chart(fig, width="content", theme=None, key=chart_key,
                    config=CHART_CONFIG, **extra)
    problem = _browser_problem()
    if problem:
        st.caption(literal(f"Downloads need a browser for export: {problem}"))
        return
    with st.container(horizontal=True):
        for fmt in ("png", "svg", "pdf"):
            st.download_button(fmt.upper(), data=functools.partial(export, plot, fmt, width),
                               file_name=f"{plot.name}.{fmt}", mime=MIME[fmt], on_click="ignore",
                               key=f"download-{key}-{fmt}", help=f"{plot.name}.{fmt}",
                               width="content")


CHART_CONFIG = {"displaylogo": False}
SCREEN_TICK_PX = 11  # tick labels on screen; the paper figures use 7 pt (about 9 px)
MODEBAR_PX = 28  # room above the plot for plotly's toolbar (it covered a colour bar's top ticks)


def on_screen(fig):
    """``fig`` with axis tick labels at least :data:`SCREEN_TICK_PX` pixels and
    :data:`MODEBAR_PX` more room on top for the toolbar, for reading on a screen; the downloads
    keep the paper sizes."""
    margin_t = fig.layout.margin.t if fig.layout.margin.t is not None else 100
    fig.layout.margin.t = margin_t + MODEBAR_PX
    if fig.layout.height:
        fig.layout.height = fig.layout.height + MODEBAR_PX
    for name in list(fig.layout):
        if name.startswith(("xaxis", "yaxis")):
            axis = fig.layout[name]
            size = axis.tickfont.size if axis.tickfont and axis.tickfont.size else 0
            axis.tickfont.size = max(size, SCREEN_TICK_PX)
    return fig


def clicked_head(event: object, xy: tuple[str, str] = ("layer", "head")) -> tuple[int, int] | None:
    """(layer, head) of the first clicked point of a chart's selection event, or None."""
    try:
        points = (event.get("selection") or {}).get("points") or []  # type: ignore[union-attr]
    except AttributeError:
        return None
    for point in points:
        x, y = point.get("x"), point.get("y")
        if x is None or y is None:
            continue
        coords = {xy[0]: int(round(float(x))), xy[1]: int(round(float(y)))}
        return coords["layer"], coords["head"]
    return None


@st.cache_resource(show_spinner="Loading the model (once per app process) ...")
def load_model(spec: str):
    """(model, lock): the model, shared by every session and live page of this app process;
    forwards are serialised by the lock, since hooks are registered on the shared model for the
    length of one forward. Imports torch (only the live pages call it)."""
    from workbench.models import load_model as load

    return load(spec), threading.Lock()


def model_choices(default: str | None) -> list[str]:
    """The models that can be loaded here (registry and cached hub models), ``default`` first."""
    from workbench.models import cached_hub_models, registry_status

    names = [r["name"] for r in registry_status() if r["unavailable"] is None]
    names += cached_hub_models()
    if default in names:
        names.remove(default)
        names.insert(0, default)
    return names


@st.cache_resource(show_spinner=False)
def _browser_problem() -> str | None:
    try:
        find_browser()
    except BrowserNotFound as err:
        return str(err)
    return None


def export(plot: Plot, fmt: str, width: str) -> bytes:
    """``plot`` as ``fmt`` bytes (a download button calls this on its own thread when clicked).
    The first call starts the shared export browser, kept for the app process (closed at exit);
    exports are serialised on it."""
    with _browser_lock:
        open_browser()
        return render(plot, fmt, width=width)  # type: ignore[arg-type]


def plot_key(*parts: object) -> str:
    """A widget key from parts (table, metric, variant filter ...)."""
    return "-".join(qualifier(p) if isinstance(p, dict) else str(p) for p in parts)
