"""``workbench circuits --ioi-classes``: the table, the report, the refusal, the atlas column and
the class-lane figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.ioi_class_tasks import tiny_ioi_class_file, tiny_ioi_class_rows
from tests.test_circuits_cli import args
from tests.test_run import cli
from workbench.heads import format_head
from workbench.store import list_runs


@pytest.fixture(scope="module")
def ioi_run(tmp_path_factory):
    from typer.testing import CliRunner

    from workbench_cli.cli import app

    folder = tmp_path_factory.mktemp("ioi_cli")
    task = tiny_ioi_class_file(folder, n=4)
    runs = folder / "runs"
    result = CliRunner().invoke(app, args([task], runs, "--select", "top_k=3", "--spot-check",
                                          "0", "--ioi-classes", "--batch-size", "2"))
    assert result.exit_code == 0, result.output
    [(run, manifest)] = list_runs(runs)
    return run, manifest, result.output, task


def test_the_table_is_written_with_its_units_and_settings(ioi_run):
    from circuits.ioi_classes import UNITS

    run, manifest, out, _ = ioi_run
    assert "ioi_classes" in manifest["tables"]
    assert manifest["config_key"]["ioi_classes"]["tasks"] == ["tiny_ioi_classes"]
    assert manifest["config_key"]["ioi_classes"]["criteria"]["min_path"] == 0.02
    assert set(UNITS) <= set(manifest["units"])
    assert "ioi_classes.tiny_ioi_classes_s" in manifest["timings"]
    table = pq.read_table(run.table_path("ioi_classes")).to_pandas()
    assert set(table.probe) == {"ioi_classes"} and set(table.segment) == {"tiny_ioi_classes"}
    att = table[table.metric == "ioi_attention"]
    assert len(att) == 6 * 16 and att.value.between(0, 1).all()
    stage1 = table[(table.metric == "ioi_path_score")
                   & (table.condition == "stage=name_mover; receivers=logits")]
    assert len(stage1) == 12  # the default n_candidates
    assert "IOI head classes (Wang et al. 2022" in out
    assert "tiny_ioi_classes: " in out


def test_the_table_equals_the_function(ioi_run):
    from circuits.ioi_classes import ioi_classes
    from circuits.tasks import load_task
    from workbench.models import load_model

    run, _, _, task_file = ioi_run
    table = pq.read_table(run.table_path("ioi_classes")).to_pandas()
    model = load_model("tiny-llama", device="cpu")
    want = ioi_classes(model, load_task(str(task_file), model), batch_size=2).records()
    want = want.to_pandas()
    key = ["metric", "layer", "head", "condition"]
    merged = table.merge(want, on=key, suffixes=("", "_want"))
    assert len(merged) == len(table) == len(want)
    np.testing.assert_allclose(merged.value, merged.value_want, atol=1e-6)


def test_a_task_without_the_ioi_positions_is_refused(capsys, tmp_path):
    from tests.circuit_tasks import tiny_ioi_file

    task = tiny_ioi_file(tmp_path, n=2)  # the IO segment only
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *args([task], runs, "--ioi-classes"))
    assert code == 2
    assert "--ioi-classes: task 'tiny_ioi' has no IOI positions" in err
    assert "lacks the segment(s) S1, S2" in err
    assert not runs.exists()
    code, _, err = cli(capsys, *args([task], runs, "--ioi-classes", "--level", "edge"))
    assert code == 2 and "--ioi-classes applies at --level node" in err


def test_the_atlas_reads_the_classes(ioi_run):
    from atlas.scores import ioi_class_scores

    run, _, _, _ = ioi_run
    table = pq.read_table(run.table_path("ioi_classes")).to_pandas()
    grid, doc = ioi_class_scores(run, 4, 4)
    classes = table[table.metric == "ioi_class"]
    want = [None] * 16
    for r in classes.itertuples():
        want[r.layer * 4 + r.head] = r.condition
    assert grid.tolist() == want
    assert set(doc) == {"name_mover", "negative_name_mover", "backup_name_mover", "s_inhibition",
                        "induction", "duplicate_token", "previous_token"}
    assert "path patching to the logits >= 0.02 of the gap" in doc["name_mover"]["criterion"]
    for name, entry in doc.items():
        heads = classes[classes.condition == name]
        assert entry["heads"] == [format_head((r.layer, r.head)) for r in
                                  heads.sort_values(["layer", "head"]).itertuples()]


def _class_rows() -> pd.DataFrame:
    rows = [("ioi_class", 3, 0, "name_mover", 1.0),
            ("ioi_class", 3, 1, "negative_name_mover", 1.0),
            ("ioi_class", 2, 1, "s_inhibition", 1.0), ("ioi_class", 1, 2, "induction", 1.0),
            ("ioi_class", 0, 3, "previous_token", 1.0),
            ("ioi_class", 3, 2, "backup_name_mover", 1.0),
            ("ioi_path_score", 3, 0, "stage=name_mover; receivers=logits", 0.4),
            ("ioi_path_score", 3, 1, "stage=name_mover; receivers=logits", -0.2),
            ("ioi_path_score", 2, 1, f"stage=s_inhibition; receivers=q of {format_head((3, 0))}",
             0.1),
            ("ioi_path_score", 1, 2, "stage=induction; receivers=kv of "
             f"{format_head((2, 1))}", 0.05),
            ("ioi_path_score", 0, 3, f"stage=previous_token; receivers=k of {format_head((1, 2))}",
             0.03),
            ("ioi_backup_delta", 3, 2, "ablated=x", 0.3)]
    return pd.DataFrame(rows, columns=["metric", "layer", "head", "condition", "value"]).assign(
        segment="ioi")


def test_the_figure_lays_heads_out_by_class():
    from workbench.figures.ioi_sets import ioi_class_plot

    plot = ioi_class_plot(_class_rows(), "ioi", n_layers=4)
    nodes = plot.data[plot.data.element == "node"].set_index("node")
    lanes = plot.params["lanes"]
    assert lanes == ["previous_token", "induction", "s_inhibition", "negative_name_mover",
                     "name_mover", "backup_name_mover"]
    for head, cls in (((3, 0), "name_mover"), ((0, 3), "previous_token")):
        node = nodes.loc[format_head(head)]
        assert (node.cls, node.y, node.x) == (cls, lanes.index(cls), head[0])
    edges = plot.data[plot.data.element == "edge"]
    got = {(r.source, r.target): r.value for r in edges.itertuples()}
    assert got == {(format_head((3, 0)), "logits"): 0.4, (format_head((3, 1)), "logits"): -0.2,
                   (format_head((2, 1)), format_head((3, 0))): 0.1,
                   (format_head((1, 2)), format_head((2, 1))): 0.05,
                   (format_head((0, 3)), format_head((1, 2))): 0.03,
                   (format_head((3, 2)), "logits"): 0.3}
    fig = plot.figure("double")
    assert len(fig.layout.annotations) == len(edges) + 1  # the arrows and the note


def test_the_atlas_runs_the_classes_for_tasks_with_the_positions(tmp_path):
    from atlas import AtlasOptions
    from atlas.build import build_atlas
    from tests.circuit_tasks import tiny_ioi_rows
    from tests.conftest import write_jsonl
    from workbench.models import load_model

    ioi = write_jsonl(tmp_path / "ioi.jsonl", tiny_ioi_class_rows(4))  # the atlas's task names
    induction = write_jsonl(tmp_path / "induction.jsonl", tiny_ioi_rows(4, seed=3))  # no S1/S2
    options = dict(out=tmp_path / "atlas-ioi", tasks=(str(ioi), str(induction)), n_prompts=4,
                   circuit_size=3, n_random=0, batch_size=2, progress=False,
                   skip=("natural", "repeated", "context"))
    atlas = build_atlas(lambda: load_model("tiny-llama", device="cpu"), AtlasOptions(**options),
                        model_spec="tiny-llama")
    run_path = tmp_path / "atlas-ioi-circuits"
    from workbench.store import RunDir

    run = RunDir.open(run_path)
    assert run.read_manifest()["config_key"]["ioi_classes"]["tasks"] == ["ioi"]
    table = pq.read_table(run.table_path("ioi_classes")).to_pandas()
    assert set(table.segment) == {"ioi"}
    classes = {(r.layer, r.head): r.condition for r in
               table[table.metric == "ioi_class"].itertuples()}
    got = {(int(r.layer), int(r.head)): r.ioi_class for r in atlas.heads.itertuples()
           if r.ioi_class is not None}
    assert got == classes
    assert set(atlas.doc["ioi_classes"]) >= {"name_mover", "s_inhibition", "previous_token"}
    from workbench.figures.ioi_sets import LABELS

    [line] = [f for f in atlas.doc["findings"] if f.startswith("IOI head classes")]
    for name, entry in atlas.doc["ioi_classes"].items():  # every class, empty ones named too
        assert f"{LABELS[name]} {', '.join(entry['heads']) or 'none'}" in line
    again = build_atlas(lambda: load_model("tiny-llama", device="cpu"),
                        AtlasOptions(**options, resume=True), model_spec="tiny-llama")
    assert again.doc["runs"]["circuits"]["state"] == "kept"  # the classes are part of the key


def test_the_report_quotes_each_heads_evidence():
    """Fails on the first version, which selected rows with ``rows.head`` (the DataFrame method,
    not the column) and printed nan for every number."""
    from circuits.ioi_run import ioi_report_lines

    rows = pd.concat([_class_rows(), pd.DataFrame(
        [("ioi_attention", 3, 0, "END->IO", 0.6), ("ioi_attention", 3, 0, "END->S", 0.2),
         ("ioi_copy_score", 3, 0, "top_k=5", 0.9), ("ioi_path_score_lo", 3, 0,
                                                    "stage=name_mover; receivers=logits", 0.3),
         ("ioi_path_score_hi", 3, 0, "stage=name_mover; receivers=logits", 0.5)],
        columns=["metric", "layer", "head", "condition", "value"]).assign(segment="ioi")])
    lines = ioi_report_lines(rows)
    assert lines[1] == "  ioi: 6 heads classified"
    mover = next(line for line in lines if line.startswith("    name_mover: "))
    assert mover == (f"    name_mover: {format_head((3, 0))} (path +0.400 [+0.300, +0.500]; "
                     "END->IO 0.60, END->S 0.20; copy 0.90)")
