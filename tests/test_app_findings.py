"""Issue 15's defects on the browsing pages, each as what the page shows (AppTest on the fixture
runs folder): the head follows the metric, the headline metric comes first, constant metrics are
not offered, run comparison on one colour range with depth alignment, readable captions."""

from __future__ import annotations

import numpy as np
import pytest

from app.headline import KNOWN
from app.ui import clicked_head
from tests.test_app import box, charts, no_errors, open_app, raw, runs, texts  # noqa: F401
from workbench.heads import format_head


def test_headline_table_equals_the_probe_classes():
    from probes import PROBES

    assert KNOWN == {name: tuple(cls.headline) for name, cls in PROBES.items()}


def test_headline_metric_is_the_default_and_constant_metrics_are_not_offered(open_app):
    """Defects 2 and 3: probe_a declares ``score`` as its headline (alphabetically first is
    ``effect``); ``attn``'s per-head mean is 1 / row length for every head (float noise)."""
    at = open_app("views/heads.py", run="fixture")
    no_errors(at)
    metric = box(at, "Metric")
    assert metric.value == "score"
    assert "attn" not in metric.options
    assert any("attn" in c and "float noise" in c for c in texts(at, "caption"))


def test_selected_head_follows_the_metric(open_app, runs):
    """Defect 1: switching the metric selects the new metric's top head."""
    at = open_app("views/heads.py", run="fixture")
    box(at, "Layer").set_value(0).run()
    box(at, "Head").set_value(0).run()
    for metric in ("seg_mass", "layer_norm", "score"):
        if metric not in box(at, "Metric").options:
            continue
        box(at, "Metric").set_value(metric).run()
        no_errors(at)
        rows = raw(runs, "probe_a").query(f"metric == '{metric}'")
        means = rows.groupby(["layer", "head"]).value.mean()
        if metric == "seg_mass":  # the first variant is chosen
            continue
        assert (box(at, "Layer").value, box(at, "Head").value) == means.idxmax(), metric


def test_a_click_selects_the_head():
    """Defect 1: a click event's point gives (layer, head) in either axis order."""
    event = {"selection": {"points": [{"x": 3, "y": 1, "z": 0.5}]}}
    assert clicked_head(event) == (3, 1)
    assert clicked_head(event, ("head", "layer")) == (1, 3)
    assert clicked_head({"selection": {"points": []}}) is None
    assert clicked_head(None) is None


def test_kill_of_the_app_command_stops_the_server(tmp_path):
    """Defect 9: ``kill <pid of workbench app>`` (SIGTERM to that one process) stops the server."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import ROOT

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench_cli", "app", "--runs-dir",
                             str(tmp_path), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # the pid the shell shows, not its group
        proc.wait(timeout=30)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"
    finally:
        import os

        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group we started
        except ProcessLookupError:
            pass


def test_compare_runs_on_one_colour_range_rounded(open_app, runs):
    """Defect 4: the two heatmaps share one colour range; |a - b| is unsigned and rounded."""
    at = open_app(run="fixture", compare="second")
    box(at, "Table").set_value("probe_a").run()
    box(at, "Metric").set_value("score").run()
    left, right = charts(at)[-3:-1]
    assert (left["data"][0]["zmin"], left["data"][0]["zmax"]) == \
        (right["data"][0]["zmin"], right["data"][0]["zmax"])
    a = raw(runs, "probe_a", "fixture").query("metric == 'score'").groupby(["layer", "head"])
    b = raw(runs, "probe_a", "second").query("metric == 'score'").groupby(["layer", "head"])
    diff = a.value.mean() - b.value.mean()
    stats = at.dataframe[-1].value.iloc[0]
    (layer, head), worst = diff.abs().idxmax(), diff.abs().max()
    assert stats["largest |a - b|"] == f"{worst:.4g} at {format_head((layer, head))}"
    assert len(str(stats["Spearman rank correlation"])) <= 6


def test_compare_runs_of_different_depth_aligns_by_relative_depth(tmp_path, monkeypatch):
    """Defect 4: a 4 x 3 run against a 6 x 2 run is compared per third of depth, with a
    warning, never head by head."""
    from streamlit.testing.v1 import AppTest

    from tests.app_fixture import make_full_run
    from tests.test_app import MAIN
    from workbench.records import conform, records
    from workbench.store import RunDir

    runs_dir = tmp_path / "runs"
    make_full_run(runs_dir)
    layer, head = np.divmod(np.arange(12), 2)
    table = conform(records("score", layer.astype(float), layer=layer, head=head),
                    run_id="deep", probe="probe_a")
    run, _ = RunDir.create(runs_dir, "deep", {
        "run_id": "deep", "status": "complete", "created": "2026-01-01T00:00:00+00:00",
        "model": {"name": "deep", "n_layers": 6, "n_heads": 2},
        "tables": {"probe_a": {"rows": 12, "metrics": ["score"]}}},
        resume=False, overwrite=True, same_config=lambda m: None)
    run.write_table("probe_a", table)
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs_dir))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["run"], at.query_params["compare"] = "fixture", "deep"
    at.run()
    box(at, "Table").set_value("probe_a").run()
    box(at, "Metric").set_value("score").run()
    assert not at.exception and not at.error
    warning = " ".join(w.value for w in at.warning).replace("\\", "")
    assert "head indices are not comparable" in warning
    by_depth = at.dataframe[-1].value.set_index("depth")
    assert by_depth.loc["early", "b mean"] == pytest.approx(0.5)  # layers 0-1 of 6
    assert by_depth.loc["late", "b layers"] == "4-5"
    assert len(charts(at)) == 2  # no head-by-head difference map


def _folder_with(tmp_path, monkeypatch, extra):
    """A runs folder with the fixture run and ``extra(runs_dir)``; an AppTest factory on it."""
    from streamlit.testing.v1 import AppTest

    from tests.app_fixture import make_full_run
    from tests.test_app import MAIN

    runs_dir = tmp_path / "runs"
    make_full_run(runs_dir)
    extra(runs_dir)
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs_dir))

    def start(page=None, **query):
        at = AppTest.from_file(MAIN, default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        return at.switch_page(page).run() if page else at
    return start


def test_eight_sweeps_have_a_picker_and_the_default_run_is_finished(tmp_path, monkeypatch):
    """Defect 12: 8 sweeps -> a picker (6 drawn by default, all on request); the sidebar's
    default run is the newest finished one, not a newer run still running."""
    from workbench.records import concat, conform, records
    from workbench.store import RunDir

    def extra(runs_dir):
        parts = [records(f"m{i}", float(i) * a, layer=0, head=0, prompt_id="p0",
                         condition=f"alpha={a:g}") for i in range(8) for a in (0.0, 1.0, 2.0)]
        run, _ = RunDir.create(runs_dir, "sweeps8", {
            "run_id": "sweeps8", "status": "running", "created": "2026-03-01T00:00:00+00:00",
            "model": {"name": "synthetic", "n_layers": 1, "n_heads": 1},
            "tables": {"interventions": {"rows": 24}}},
            resume=False, overwrite=True, same_config=lambda m: None)
        run.write_table("interventions", conform(concat(parts), run_id="sweeps8",
                                                 probe="interventions"))

    start = _folder_with(tmp_path, monkeypatch, extra)
    at = start()
    assert at.sidebar.selectbox(key="run").value == "fixture"  # sweeps8 is newer but running
    at = start("views/interventions.py", run="sweeps8")
    assert not at.exception and not at.error
    picker = at.multiselect[0]
    assert len(picker.options) == 8 and len(picker.value) == 6
    assert len(charts(at)) == 6
    picker.set_value(list(range(8))).run()
    assert len(charts(at)) == 8


def test_position_graph_caption_names_the_head(open_app):
    """Defect 12: the caption names the head (as format_head writes it)."""
    at = open_app("views/position.py", run="fixture")
    box(at, "Head").set_value(1).run()
    layer = box(at, "Layer").value
    captions = [c.replace("\\", "") for c in texts(at, "caption")]
    assert any(c.endswith(f", {format_head((layer, 1))}") for c in captions), captions


def test_position_page_scales_and_a_graph_with_edges_by_default(open_app):
    """Defect 11: profiles offer a log axis and leaving key 0 out; the attention graph has
    edges at the default threshold; its colour bar for fractions starts at 0."""
    import re

    at = open_app("views/position.py", run="fixture")
    assert not at.exception and not at.error
    scale = at.radio(key="position-scale")
    assert list(scale.options) == ["linear", "log scale", "exclude key 0"]
    caption = next(c for c in texts(at, "caption") if "edges key" in c)
    assert int(re.match(r"(\d+) edges", caption).group(1)) > 0
    graph = charts(at)[-1]
    bar = next(t["marker"] for t in graph["data"] if t.get("marker", {}).get("showscale"))
    assert bar["cmin"] == 0.0
    profile = charts(at)[0]
    keys = {x for t in profile["data"] for x in (t.get("x") or [])}
    assert 0 in keys
    scale.set_value("no-key0").run()
    profile = charts(at)[0]
    assert 0 not in {x for t in profile["data"] for x in (t.get("x") or [])}
    scale.set_value("log").run()
    assert charts(at)[0]["layout"]["yaxis"]["type"] == "log"


def test_long_units_wrap_in_colour_bar_titles(tmp_path, monkeypatch):
    """Defect 5: a long unit is wrapped onto short lines of the colour-bar title (not clipped)."""
    import json

    import plotly.graph_objects as go

    from workbench.figures.style import MAX_TITLE_LINES, _fits, bar_room

    unit = "logit difference of the answer over the distractor, clean into corrupted"

    def extra(runs_dir):
        path = runs_dir / "fixture" / "run.json"
        manifest = json.loads(path.read_text())
        manifest["units"]["score"] = unit
        path.write_text(json.dumps(manifest))

    at = _folder_with(tmp_path, monkeypatch, extra)("views/heads.py", run="fixture")
    assert box(at, "Metric").value == "score"
    chart = charts(at)[0]
    lines = chart["data"][0]["colorbar"]["title"]["text"].split("<br>")
    room = bar_room(go.Figure(layout={"height": chart["layout"]["height"]}))
    assert 2 <= len(lines) <= MAX_TITLE_LINES + 1
    assert all(_fits(line, room) for line in lines), (lines, room)  # none runs past the bar
    assert "corrupted" in lines[-1]  # the unit is all there


def test_on_screen_tick_labels_are_readable(open_app):
    """Defect 12: tick labels on screen are at least 11 px (the downloads keep 7 pt)."""
    from app.ui import SCREEN_TICK_PX

    at = open_app("views/heads.py", run="fixture")
    for chart in charts(at):
        for name, axis in chart["layout"].items():
            if name.startswith(("xaxis", "yaxis")):
                assert axis["tickfont"]["size"] >= SCREEN_TICK_PX, name
