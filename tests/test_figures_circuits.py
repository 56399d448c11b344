"""Figures of a `workbench circuits` run (hand-made tables, no model) and `workbench figures
compose` (one lettered PDF from chosen panels; spec errors in one line)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.figure_fixture import make_run
from tests.test_figures_export import pdf_page_points, png_size
from tests.test_run import cli
from workbench.figures import RunSource, run_figures
from workbench.records import concat, conform, records
from workbench.store import RunDir

UNITS = {"member": "score the head was selected on", "edge": "sender's path-patching score",
         "score": "fraction of the clean - corrupted LD gap; positive = the head carries the task"}


def circuits_run(tmp_path) -> RunDir:
    """Two tasks, path patching (with edges) and attribution patching (heads only)."""
    manifest = {"run_id": "circ", "status": "complete", "units": UNITS,
                "model": {"name": "synthetic", "n_layers": 4, "n_heads": 3}}
    run, _ = RunDir.create(tmp_path / "runs", "circ", manifest, resume=False, overwrite=True,
                           same_config=lambda m: None)
    path = concat([
        records("member", [0.5, 0.3, -0.2], layer=[1, 2, 3], head=[0, 1, 2], segment="ioi"),
        records("edge", [0.4, 0.25], layer=[1, 2], head=[0, 1], segment="ioi",
                condition=np.array(["receiver=2.1", "receiver=logits"])),
        records("size", 3.0, segment="ioi"),
        records("member", [0.6, 0.1], layer=[2, 3], head=[1, 0], segment="induction")])
    attr = records("member", [0.7], layer=[0], head=[2], segment="ioi")
    run.write_table("circuits", concat([conform(path, run_id="circ", probe="path_patching"),
                                        conform(attr, run_id="circ",
                                                probe="attribution_patching")]))
    faith = []
    for task, f, draws in (("ioi", 0.9, [0.1, 0.2]), ("induction", 0.4, [0.0, 0.1])):
        faith += [records("faithfulness", f, segment=task),
                  records("faithfulness_random", float(np.mean(draws)), segment=task),
                  records("faithfulness_random_draw", draws, segment=task,
                          condition=np.array(["draw=0", "draw=1"]))]
    run.write_table("faithfulness", conform(concat(faith), run_id="circ", probe="path_patching"))
    overlap = concat([records("jaccard", 0.25, segment="ioi|induction"),
                      records("expected_jaccard", 0.05, segment="ioi|induction"),
                      records("shared", [1.0], layer=[2], head=[1], segment="ioi|induction")])
    run.write_table("overlap", conform(overlap, run_id="circ", probe="path_patching"))
    rng = np.random.default_rng(0)
    layer, head = np.meshgrid(np.arange(4), np.arange(3), indexing="ij")
    effects = concat([records("score", rng.normal(size=12), layer=layer.ravel(),
                              head=head.ravel(), segment=task, condition="corrupted_into_clean")
                      for task in ("ioi", "induction")])
    run.write_table("head_effects", conform(effects, run_id="circ", probe="path_patching"))
    return run


def test_circuits_run_gets_graph_overlap_and_faithfulness(tmp_path):
    source = RunSource(circuits_run(tmp_path))
    plots = {p.name: p for p in run_figures(source)}
    assert sorted(plots) == [
        "circuits.circuit.attr.ioi", "circuits.circuit.path.induction", "circuits.circuit.path.ioi",
        "faithfulness", "head_effects.heatmap.path.induction.corrupted_into_clean",
        "head_effects.heatmap.path.ioi.corrupted_into_clean", "overlap.path"]
    assert not source.skipped  # no by-depth of members, no heatmap of the constant "shared"
    graph = plots["circuits.circuit.path.ioi"]
    edges = graph.data[graph.data["element"] == "edge"].set_index(["source", "target"])
    assert edges["value"].to_dict() == {("L1H0", "L2H1"): 0.4, ("L2H1", "logits"): 0.25}
    assert graph.params["edge_note"] == ("arrows: path-patching edges, width = |sender's "
                                         "path-patching score|")
    heads_only = plots["circuits.circuit.attr.ioi"]
    assert (heads_only.data["element"] == "edge").sum() == 0
    assert heads_only.params["edge_note"] == ("no edges: attribution patching scores heads, "
                                              "not edges")
    assert heads_only.figure().layout.annotations[0].text == heads_only.params["edge_note"]
    faith = plots["faithfulness"].data.set_index("task")
    assert faith.loc["ioi", ["faithfulness", "random_lo", "random_hi", "n_random"]].tolist() == \
        [0.9, 0.1, 0.2, 2]
    assert faith.loc["ioi", "random_mean"] == pytest.approx(0.15)
    fig = plots["faithfulness"].figure()
    band = next(t for t in fig.data if t.type == "scatter" and t.fill == "toself")
    assert band.name == "random circuits (range of 2, mean)"
    assert max(y for y in band.y if y is not None) == pytest.approx(0.2)
    overlap = plots["overlap.path"]
    trace = overlap.figure().data[0]
    z = np.array(trace.z, dtype=float)
    assert np.isnan(z[0, 0]) and z[0, 1] == 0.25 and (trace.zmin, trace.zmax) == (0.0, 1.0)
    assert trace.text[0][1] == "0.25<br>(0.05)"


def write_spec(path, text: str):
    path.write_text(text)
    return path


def test_compose_writes_one_lettered_vector_pdf(browser, tmp_path, capsys):
    make_run(tmp_path / "runs", metrics=("score",))
    circuits_run(tmp_path)
    spec = write_spec(tmp_path / "fig.yaml", """
width: double
columns: 2
png_dpi: 50
panels:
  - {run: runs/fixture, figure: probe_a.heatmap.score}
  - {run: runs/circ, figure: faithfulness}
  - {run: runs/circ, figure: circuits.circuit.path.ioi, span: 2}
""")
    code, out, err = cli(capsys, "figures", "compose", str(spec))
    assert code == 0, err
    pdf = (tmp_path / "fig.pdf").read_bytes()
    width_pt, _ = pdf_page_points(pdf)
    assert width_pt == pytest.approx(7.16 * 72, abs=1)
    assert b"/Subtype /Image" not in pdf  # panels stay vector
    assert abs(png_size((tmp_path / "fig.png").read_bytes())[0] - 687 * 50 / 96) <= 1
    assert "wrote 3 panels to" in out


@pytest.mark.parametrize("body, message", [
    ("panels: []", "panels: List should have at least 1 item"),
    ("colour: red\npanels: [{run: runs/fixture, figure: x}]", "colour: Extra inputs are not "
                                                              "permitted"),
    ("panels: [{run: runs/fixture}]", "panels.0: Value error, give either run + figure, or "
                                      "sidecar"),
    ("width: triple\npanels: [{sidecar: a.json}]", "width: Input should be 'single' or 'double'"),
    ("panels: [{run: runs/fixture, figure: nope}]", "panels.0.figure: run "),
    ("columns: 1\npanels: [{sidecar: a.json, span: 2}]", "panels.0.span: 2 is more than columns"),
    ("panels: [\n  {", "not valid YAML at line 2"),
])
def test_compose_spec_errors_are_one_line(tmp_path, capsys, body, message):
    make_run(tmp_path / "runs", metrics=("score",))
    spec = write_spec(tmp_path / "bad.yaml", body)
    code, _, err = cli(capsys, "figures", "compose", str(spec))
    assert code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert message in line, line
    if "figure: run" in message:
        assert "it has probe_a.depth.score, probe_a.heatmap.score" in line
    assert not (tmp_path / "bad.pdf").exists()


def test_figures_needs_a_run_or_a_subcommand(tmp_path, capsys):
    code, _, err = cli(capsys, "figures", "--no-progress")
    assert code == 2 and "give --run RUN_DIR" in err
