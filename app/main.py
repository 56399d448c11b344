"""Attention Workbench app: browse the runs of one runs folder.

Start it with ``workbench app --runs-dir runs`` (binds to 127.0.0.1:8501), or
``streamlit run app/main.py -- --runs-dir runs``. The runs folder comes from ``--runs-dir``, else
``$WORKBENCH_RUNS_DIR``, else ``runs``; the app reads nothing outside it. The sidebar chooses the
run (and a second run to compare); ``?run=<id>&compare=<id>`` in the address does the same.
The app opens on the Atlas page when the runs folder holds an atlas (``workbench atlas``), else on
Runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import streamlit as st

APP_DIR = Path(__file__).resolve().parent
if str(APP_DIR.parent) not in sys.path:  # `streamlit run app/main.py` from anywhere
    sys.path.insert(0, str(APP_DIR.parent))

from app import ui  # noqa: E402
from app.atlas_data import atlas_ids, preferred_atlas  # noqa: E402
from app.data import RUNS_ENV, RunsRoot, check_name  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402

ATLAS_PAGE = ("views/atlas.py", "Atlas", ":material/apps:")
HEAD_PAGE = ("views/head.py", "Head", ":material/center_focus_strong:")
REMEMBERED = "sidebar-remembered"  # the sidebar's choices, kept across page switches
PAGES = (("views/runs.py", "Runs", ":material/folder_open:"),
         ("views/heads.py", "Heads", ":material/grid_on:"),
         ("views/layers.py", "Layers", ":material/stacked_line_chart:"),
         ("views/position.py", "Position bias", ":material/linear_scale:"),
         ("views/circuits.py", "Circuits", ":material/hub:"),
         ("views/interventions.py", "Interventions", ":material/tune:"),
         ("views/pattern.py", "Live pattern", ":material/visibility:"),
         ("views/heads_pruning.py", "Head pruning", ":material/content_cut:"),
         ("views/live.py", "Live intervention", ":material/bolt:"))


def runs_dir() -> str:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs-dir")
    args, _ = parser.parse_known_args(sys.argv[1:])
    return args.runs_dir or os.environ.get(RUNS_ENV) or "runs"


def from_query(root: RunsRoot, param: str, available: list[str]) -> str | None:
    """A run id from the address (``?run=``), if it names a listed run; else an error shown."""
    value = st.query_params.get(param)
    if not value:
        return None
    try:
        check_name(value, "run id")
        root.run_dir(value)
    except WorkbenchError as err:
        st.sidebar.error(ui.literal(f"?{param}=: {err}"))
        return None
    if value not in available:
        st.sidebar.error(ui.literal(f"?{param}=: run {value!r} cannot be opened"))
        return None
    return value


def sidebar(root: RunsRoot) -> None:
    st.sidebar.caption("Runs folder")
    st.sidebar.code(str(root.root), language=None)
    entries = root.runs()
    available = [e.run_id for e in entries if e.manifest is not None]
    if not root.exists():
        st.sidebar.error(ui.literal(f"The runs folder {root.given} does not exist."))
    for key, param in ((ui.RUN_KEY, "run"), (ui.COMPARE_KEY, "compare")):
        wanted = from_query(root, param, available)
        # the address wins when it changed (a link, a page switch, a typed URL), not when it
        # still shows the run a widget has just replaced
        if wanted and (key not in st.session_state
                       or wanted != st.session_state.get(f"{REMEMBERED}-url-{key}")):
            st.session_state[key] = wanted
        st.session_state[f"{REMEMBERED}-url-{key}"] = wanted
        if key not in st.session_state and st.session_state.get(f"{REMEMBERED}-{key}"):
            st.session_state[key] = st.session_state[f"{REMEMBERED}-{key}"]  # after a page switch
        if st.session_state.get(key) not in available + [ui.NO_RUN]:
            st.session_state.pop(key, None)
    if not available:
        st.sidebar.info("No runs yet.")
        return
    if ui.RUN_KEY not in st.session_state:  # an atlas of a real model, else the newest finished
        done = [e.run_id for e in entries if e.manifest is not None  # run, not one running
                and e.manifest.get("status") not in ("running", "interrupted", "failed")]
        st.session_state[ui.RUN_KEY] = preferred_atlas(entries) or (done or available)[0]
    run = st.sidebar.selectbox("Run", available, key=ui.RUN_KEY)
    st.session_state[f"{REMEMBERED}-{ui.RUN_KEY}"] = run
    st.session_state[f"{REMEMBERED}-url-{ui.RUN_KEY}"] = run
    others = [ui.NO_RUN] + [r for r in available if r != run]
    if st.session_state.get(ui.COMPARE_KEY) not in others:
        st.session_state[ui.COMPARE_KEY] = ui.NO_RUN
    compare = st.sidebar.selectbox("Compare with", others, key=ui.COMPARE_KEY)
    st.session_state[f"{REMEMBERED}-{ui.COMPARE_KEY}"] = compare
    st.session_state[f"{REMEMBERED}-url-{ui.COMPARE_KEY}"] = (None if compare == ui.NO_RUN
                                                             else compare)
    st.query_params["run"] = run
    if compare != ui.NO_RUN:
        st.query_params["compare"] = compare
    else:
        st.query_params.pop("compare", None)


def main() -> None:
    # page_icon: an emoji favicon (a data: URL); a page's :material/...: icon would make the
    # browser fetch the favicon from fonts.gstatic.com (issue 15 defect 10).
    st.set_page_config(page_title="Attention Workbench", page_icon="🔍", layout="wide")
    st.session_state[ui.ROOT_KEY] = runs_dir()
    root = ui.runs_root()
    listed = ((ATLAS_PAGE, HEAD_PAGE, *PAGES) if atlas_ids(root.runs())
              else (*PAGES, ATLAS_PAGE, HEAD_PAGE))
    pages = [st.Page(str(APP_DIR / path), title=title, icon=icon, default=(i == 0))
             for i, (path, title, icon) in enumerate(listed)]
    page = st.navigation(pages)
    sidebar(root)
    st.sidebar.radio("Figure width", ["single", "double"], index=1, key=ui.WIDTH_KEY,
                     horizontal=True, help="Column width the figures are drawn and exported at: "
                                           "single 3.5 in, double 7.16 in.")
    page.run()


main()
