"""The app under Streamlit's AppTest on the fixture runs folder: what every page shows, checked
against the stored records computed independently (pandas over the raw tables, the circuits' head
sets by hand); missing, empty and broken runs give messages; nothing outside the runs folder is
read; strings from runs are shown literally."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixture import (ALPHAS, CIRCUITS, SCRIPT_TEXT, SCRIPT_TOKEN, make_app_runs,
                               overlap_sets)
from tests.conftest import ROOT
from tests.figure_fixture import N_HEADS, N_LAYERS, PROMPTS
from workbench.heads import format_head

MAIN = str(ROOT / "app" / "main.py")
PAGES = ("views/runs.py", "views/heads.py", "views/layers.py", "views/position.py",
         "views/circuits.py", "views/interventions.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("app")
    (base / "outside").mkdir()
    return make_app_runs(base / "runs", base / "outside")


@pytest.fixture
def open_app(runs, monkeypatch):
    """``open_app(page, run=..., compare=...)`` -> an AppTest that has run that page."""
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))

    def start(page: str | None = None, **query) -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        if page:
            at.switch_page(page).run()
        return at
    return start


def raw(runs: Path, table: str, run_id: str = "fixture") -> pd.DataFrame:
    """A stored table read directly (integer coordinates stay integers)."""
    df = pq.read_table(runs / run_id / f"{table}.parquet").to_pandas()
    return df.astype({c: "Int64" for c in ("layer", "head", "query_pos", "key_pos")})


def decode(obj):
    """Plotly's JSON with typed arrays (``{"dtype", "bdata", "shape"}``) decoded to lists."""
    if isinstance(obj, dict) and "bdata" in obj and "dtype" in obj:
        array = np.frombuffer(base64.b64decode(obj["bdata"]), dtype=obj["dtype"])
        shape = obj.get("shape")
        if shape:
            array = array.reshape([int(n) for n in str(shape).split(",")])
        return array.tolist()
    if isinstance(obj, dict):
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def charts(at: AppTest) -> list[dict]:
    """Every plotly figure on the page, as plain JSON."""
    return [decode(json.loads(el.proto.spec)) for el in at.get("plotly_chart")]


def box(at: AppTest, label: str):
    """The (first) selectbox with this label on the page."""
    return next(b for b in at.selectbox if b.label == label)


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(el.value) for el in at.get(kind)]


def no_errors(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert texts(at, "error") == [] and texts(at, "warning") == []


def test_runs_page_lists_every_run_and_the_manifest(open_app, runs):
    at = open_app(run="fixture")
    no_errors(at)
    assert texts(at, "title") == ["Runs"]
    listing = at.dataframe[0].value.set_index("run")
    assert set(listing.index) == {"fixture", "second", "empty", "bare", "broken", "corrupt",
                                  "escape", "leaky"}
    assert listing.loc["broken", "status"] == "unreadable"
    assert "not readable" in listing.loc["broken", "problem"]
    assert "outside the runs folder" in listing.loc["escape", "problem"]
    assert listing.loc["fixture", "records"] == sum(
        pq.ParquetFile(p).metadata.num_rows for p in (runs / "fixture").glob("*.parquet")
        if p.stem not in ("prompts", "tokens"))
    assert "fixture" in texts(at, "code")
    facts = at.dataframe[1].value.set_index("field")["value"]
    assert facts["model"] == "synthetic" and facts["layers x heads"] == f"{N_LAYERS} x {N_HEADS}"
    tables = at.dataframe[-1].value.set_index("table")
    assert tables.loc["probe_a", "rows"] == pq.ParquetFile(runs / "fixture" /
                                                           "probe_a.parquet").metadata.num_rows
    # sidebar: every openable run, the chosen one from the address
    assert at.sidebar.selectbox(key="run").value == "fixture"
    assert "escape" not in at.sidebar.selectbox(key="run").options


def test_compare_two_runs(open_app, runs):
    at = open_app(run="fixture", compare="second")
    no_errors(at)
    at.selectbox(key="compare-table").set_value("probe_a").run()
    at.selectbox(key="compare-metric").set_value("score").run()
    a = raw(runs, "probe_a", "fixture").query("metric == 'score'").groupby(["layer", "head"])
    b = raw(runs, "probe_a", "second").query("metric == 'score'").groupby(["layer", "head"])
    a, b = a.value.mean(), b.value.mean()
    stats = at.dataframe[-1].value.iloc[0]
    assert float(stats["Spearman rank correlation"]) == pytest.approx(
        np.corrcoef(a.rank(), b.rank())[0, 1], abs=5e-4)  # rounded to 3 places
    left, right, diff = charts(at)[-3:]
    z = np.array(diff["data"][0]["z"], dtype=float)  # [head, layer]
    for (layer, head), value in (a - b).items():
        assert z[head, layer] == pytest.approx(value, abs=1e-12)
    assert np.array(left["data"][0]["z"], dtype=float)[0, 0] == pytest.approx(a[(0, 0)])


def test_heads_page(open_app, runs):
    at = open_app("views/heads.py", run="fixture")
    no_errors(at)
    assert at.selectbox(key="heads-table").value == "probe_a"  # the manifest's probe first
    first = raw(runs, "probe_a").query(f"metric == '{box(at, 'Metric').value}'")
    best = first.groupby(["layer", "head"]).value.mean().idxmax()  # the default head
    assert (box(at, "Layer").value, box(at, "Head").value) == best
    box(at, "Metric").set_value("score").run()
    records = raw(runs, "probe_a").query("metric == 'score'")
    means = records.groupby(["layer", "head"]).value.mean()
    heat = charts(at)[0]["data"][0]
    z = np.array(heat["z"], dtype=float)
    assert z.shape == (N_HEADS, N_LAYERS)
    for (layer, head), value in means.items():
        assert z[head, layer] == pytest.approx(value, abs=1e-12)
    assert np.all(np.array(heat["customdata"]) == len(PROMPTS))
    overlay = next(t for t in charts(at)[0]["data"] if t.get("name") == "click-cells")
    assert "prompts: %{customdata[1]}" in overlay["hovertemplate"]  # hover on the clickable cells
    box(at, "Layer").set_value(2).run()
    box(at, "Head").set_value(1).run()
    no_errors(at)
    mine = records.query("layer == 2 and head == 1")
    per_prompt = mine.groupby("prompt_id").value.mean()
    histogram = charts(at)[1]["data"][0]
    assert sum(histogram["y"]) == len(PROMPTS)
    extreme = at.dataframe[0].value.set_index("prompt_id")
    assert extreme["value"].to_dict() == pytest.approx(per_prompt.to_dict())
    assert extreme.loc["p0", "text"] == SCRIPT_TEXT
    # attention pattern over tokens, and the prompt text shown literally
    figure = next(c for c in charts(at) if c["layout"]["yaxis"]["title"]["text"] ==
                  "query (position:token)")
    pattern = figure["data"][0]
    stored = raw(runs, "probe_a").query("metric == 'attn' and layer == 2 and head == 1 and "
                                        "prompt_id == 'p0'")
    z = np.array(pattern["z"], dtype=float)
    for row in stored.itertuples():
        assert z[row.query_pos, row.key_pos] == pytest.approx(row.value, abs=1e-12)
    assert figure["layout"]["xaxis"]["ticktext"][1] == "1:&lt;script&gt;"  # drawn literally
    assert SCRIPT_TEXT in texts(at, "code")
    # every metric of this head
    summary = at.dataframe[1].value
    assert set(summary["table"]) >= {"probe_a", "head_effects"}
    row = summary[(summary.table == "probe_a") & (summary.metric == "score")].iloc[0]
    assert row["mean"] == pytest.approx(mine.value.mean()) and row["prompts"] == len(PROMPTS)
    rank = int((means > means[(2, 1)]).sum()) + 1
    assert any(f"ranks {rank} of {len(means)}" in c.replace("\\", "") for c in
               texts(at, "caption"))
    # every figure has its three downloads
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("PNG") == labels.count("SVG") == labels.count("PDF") == len(charts(at))


def test_layers_page_equals_by_depth_on_the_raw_records(open_app, runs):
    from workbench.figures import by_depth

    at = open_app("views/layers.py", run="fixture")
    no_errors(at)
    at.multiselect(key="layers-metrics-probe_a").set_value(["score"]).run()
    shown = at.dataframe[0].value
    direct = by_depth(raw(runs, "probe_a"), "score").data
    for column in ("layer", "mean", "lo", "hi", "n"):
        np.testing.assert_allclose(shown[column].to_numpy(float), direct[column].to_numpy(float),
                                   rtol=1e-12)
    assert len(charts(at)) == 1


def test_position_page(open_app, runs):
    at = open_app("views/position.py", run="fixture")
    no_errors(at)
    edges = next(s for s in at.slider if s.label.startswith("Draw edges"))
    edges.set_value(0.1).run()  # the default keeps the strongest 2 x n edges
    profile, graph = charts(at)
    rows = raw(runs, "probe_a").query("metric == 'attn'")
    want = rows.groupby(["layer", "key_pos"]).value.mean()
    layer0 = next(t for t in profile["data"] if t.get("name") == "layer 0")
    assert layer0["y"] == pytest.approx(want.loc[0].to_numpy().tolist())
    # the graph: layer 0 of p0, mean over heads, edges above 0.1 (self-loops not drawn)
    cells = rows.query("layer == 0 and prompt_id == 'p0'").groupby(["query_pos",
                                                                    "key_pos"]).value.mean()
    kept = cells[(cells > 0.1) & (cells.index.get_level_values(0) !=
                                  cells.index.get_level_values(1))]
    hover = next(t for t in graph["data"] if t.get("hovertext"))
    assert sorted(hover["marker"]["color"]) == pytest.approx(sorted(kept.to_numpy()))
    assert "&lt;script&gt;" in graph["layout"]["xaxis"]["ticktext"]
    next(s for s in at.slider if s.label.startswith("Draw edges")).set_value(0.5).run()
    hover = next(t for t in charts(at)[1]["data"] if t.get("hovertext"))
    assert len(hover["marker"]["color"]) == int((kept > 0.5).sum())


def test_circuits_page(open_app):
    at = open_app("views/circuits.py", run="fixture")
    no_errors(at)
    for task in ("ioi", "induction"):
        at.selectbox(key="circuits-task").set_value(task).run()
        circuit = charts(at)[0]
        labels = {t for trace in circuit["data"] for t in trace.get("text", [])}
        assert {f"L{layer}H{head}" for layer, head in CIRCUITS[task]} <= labels
        assert "logits" in labels  # the edge to the logits node
    overlap = next(c for c in charts(at) if c["data"][0].get("texttemplate"))
    tasks = overlap["data"][0]["x"]
    z = np.array(overlap["data"][0]["z"], dtype=float)
    for (a, b), (jaccard, _) in overlap_sets().items():
        assert z[tasks.index(a), tasks.index(b)] == pytest.approx(jaccard)
        assert z[tasks.index(b), tasks.index(a)] == pytest.approx(jaccard)
    assert overlap["layout"]["xaxis"]["title"]["text"] == "random baseline: 0.07"
    shared = at.dataframe[-1].value.set_index(["task_a", "task_b"])
    for (a, b), (_, heads) in overlap_sets().items():
        if heads:
            assert shared.loc[(a, b), "heads"] == ", ".join(map(format_head, heads))
    faith = at.dataframe[0].value
    assert faith.loc[("faithfulness", ""), "ioi"] == pytest.approx(0.8)
    assert faith.loc[("logit_diff", "circuit"), "induction"] == pytest.approx(4.4)


def test_interventions_page_dose_response(open_app, runs):
    at = open_app("views/interventions.py", run="fixture")
    no_errors(at)
    assert at.selectbox(key="interventions-table").value == "interventions"
    summary = at.dataframe[0].value
    rows = raw(runs, "interventions").query("metric == 'logit_diff'")
    assert summary.loc[("logit_diff", "ioi"), "alpha=2"] == pytest.approx(
        rows.query("condition == 'alpha=2'").value.mean())
    curve = next(c for c in charts(at) if "logit_diff" in c["layout"]["yaxis"]["title"]["text"])
    trace = curve["data"][0]
    assert trace["x"] == list(ALPHAS)
    for alpha, mean in zip(trace["x"], trace["y"]):
        assert mean == pytest.approx(rows.query(f"condition == 'alpha={alpha:g}'").value.mean())


@pytest.mark.parametrize("run_id", ["empty", "bare", "corrupt", "second"])
def test_every_page_on_runs_with_missing_empty_or_broken_tables(open_app, run_id):
    """Never a traceback: a message where the data is missing or unreadable."""
    for page in PAGES:
        at = open_app(page, run=run_id)
        assert not at.exception, (page, at.exception)
        shown = " ".join(texts(at, "info") + texts(at, "warning") + texts(at, "error")
                         + texts(at, "caption"))
        if run_id == "corrupt":
            assert page == "views/runs.py" or "not a readable parquet file" in shown
        elif run_id in ("empty", "bare") and page != "views/runs.py":
            assert "no" in shown.lower(), (page, shown)


def test_paths_outside_the_runs_folder_are_refused(open_app, runs):
    for value, message in (("../outside", "not a plain name"), ("escape", "outside the runs "
                                                                "folder")):
        at = open_app(run=value)
        assert not at.exception
        errors = " ".join(texts(at, "error")).replace("\\", "")
        assert message in errors
        assert at.sidebar.selectbox(key="run").value != value
        assert at.query_params["run"] != value
    from app.data import OutsideRunsFolder, RunsRoot

    root = RunsRoot(runs)
    assert "stolen" not in root.tables("leaky")  # symlinked to a file outside
    with pytest.raises(OutsideRunsFolder):
        root.table("leaky", "stolen")
    with pytest.raises(OutsideRunsFolder):
        root.table("fixture", "../second/probe_a")
    with pytest.raises(OutsideRunsFolder):
        root.run_dir("escape")


def test_strings_from_runs_are_never_markup(open_app):
    from app.ui import literal

    assert literal("<script>*x*</script> [a](http://e) $x$ :red[y]") == (
        r"\<script\>\*x\*\</script\> \[a\]\(http\://e\) \$x\$ \:red\[y\]")
    for page in PAGES:
        at = open_app(page, run="fixture")
        for element in at.get("markdown") + at.get("caption"):
            assert not element.proto.allow_html, (page, element.value)
    at = open_app("views/heads.py", run="fixture")
    assert SCRIPT_TEXT in texts(at, "code")
    tokens = [t for c in charts(at) for t in c["layout"]["xaxis"].get("ticktext", [])]
    assert "1:&lt;script&gt;" in tokens and SCRIPT_TOKEN not in tokens


def test_browsing_pages_do_not_import_torch(runs):
    script = f"""
import os, sys
os.environ["WORKBENCH_RUNS_DIR"] = {str(runs)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({MAIN!r}, default_timeout=60)
at.query_params["run"] = "fixture"
at.run()
for page in {list(PAGES)!r}:
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_app_command_binds_to_localhost(tmp_path):
    from workbench_cli.cli import app_command
    from workbench.errors import InputError

    command = app_command(tmp_path, "127.0.0.1", 8501)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8501"
    assert command[-2:] == ["--runs-dir", str(tmp_path.resolve())]
    assert Path(command[command.index("run") + 1]) == ROOT / "app" / "main.py"
    with pytest.raises(InputError, match="not a folder"):
        app_command(tmp_path / "nope", "127.0.0.1", 8501)
    with pytest.raises(InputError, match="--port"):
        app_command(tmp_path, "127.0.0.1", 0)


def test_download_renders_the_figure():
    """A download button's bytes come from the figures package's export (needs Chromium)."""
    from workbench.figures import find_browser
    from workbench.figures.export import BrowserNotFound

    try:
        find_browser()
    except BrowserNotFound:
        pytest.skip("no Chromium for figure export")
    from app.ui import export
    from tests.figure_fixture import fixture_table
    from workbench.figures import head_heatmap

    plot = head_heatmap(fixture_table().to_pandas(), "score")
    svg = export(plot, "svg", "single")
    assert svg.lstrip().startswith(b"<svg") and b"score" in svg
    assert export(plot, "pdf", "single").startswith(b"%PDF")
