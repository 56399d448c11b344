"""The app's data layer and shaping, without Streamlit pages: every aggregate against pandas over
the raw records, paths confined to the runs folder, caches that see a rewritten table."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from app import data, shaping, tables
from tests.app_fixture import CIRCUITS, make_app_runs, overlap_sets
from tests.figure_fixture import PROMPTS, fixture_table, make_run
from workbench.errors import RunStateError
from workbench.heads import format_head
from workbench.records import conform, records


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("data")
    (base / "outside").mkdir()
    return make_app_runs(base / "runs", base / "outside")


@pytest.fixture(scope="module")
def root(runs) -> data.RunsRoot:
    return data.RunsRoot(runs)


def test_table_info_matches_the_records(root):
    info = data.table_info(root.table("fixture", "probe_a"))
    raw = fixture_table().to_pandas()
    assert info.n_rows == len(raw) and set(info.metrics) == set(raw.metric)
    for metric, mi in info.metrics.items():
        rows = raw[raw.metric == metric]
        assert mi.n_rows == len(rows)
        assert mi.coords == {c for c in data.COORDINATES if rows[c].notna().any()}
    assert info.metrics["seg_mass"].variants == ({"segment": "IO"}, {"segment": "S1"})
    assert info.metrics["effect"].variants == ({"condition": "clean"},)
    assert info.metrics["effect"].sweeps == ({},)  # alpha=0 ... alpha=2, no segment
    assert info.metrics["score"].variants == ({},) and info.metrics["score"].sweeps == ()


def test_table_info_from_row_group_statistics(tmp_path):
    """Row groups of one metric are summarised from their statistics, the others read: the
    result is the same as from every row (here 40-row groups, most holding one metric)."""
    table = fixture_table().sort_by([("metric", "ascending"), ("layer", "ascending")])
    pq.write_table(table, tmp_path / "small.parquet", row_group_size=40)
    ref = data.TableRef(str(tmp_path / "small.parquet"), 0, 0)
    summary, rest = data._from_statistics(pq.ParquetFile(ref.path))
    assert summary and rest  # both paths are taken
    info = data.table_info(ref)
    raw = table.to_pandas()
    for metric, mi in info.metrics.items():
        rows = raw[raw.metric == metric]
        assert mi.n_rows == len(rows)
        assert mi.coords == {c for c in data.COORDINATES if rows[c].notna().any()}
    assert info.metrics["seg_mass"].variants == ({"segment": "IO"}, {"segment": "S1"})
    assert info.metrics["effect"].variants == ({"condition": "clean"},)
    assert info.metrics["effect"].sweeps == ({},)


def test_head_and_unit_means_equal_pandas(root):
    ref = root.table("fixture", "probe_a")
    raw = fixture_table().to_pandas()
    rows = raw[(raw.metric == "seg_mass") & (raw.segment == "IO")]
    got = data.head_means(ref, "seg_mass", (("segment", "IO"),)).set_index(["layer", "head"])
    grouped = rows.groupby(["layer", "head"])
    np.testing.assert_allclose(got["value"], grouped.value.mean(), rtol=1e-12)
    assert (got["n_rows"] == grouped.size()).all() and (got["n_prompts"] == len(PROMPTS)).all()
    units = data.unit_means(ref, "attn").set_index(["layer", "head", "prompt_id"]).sort_index()
    want = raw[raw.metric == "attn"].groupby(["layer", "head", "prompt_id"]).value.mean()
    np.testing.assert_allclose(units["value"], want.sort_index(), rtol=1e-12)
    # a null filter: layer-level rows (head null) have no per-head means
    assert data.head_means(ref, "layer_norm").empty
    nulls = data.frame(data.read(ref, ("metric", "head"), (("head", None),)))
    assert set(nulls.metric) == {"layer_norm"}


def test_rewritten_table_is_read_again(tmp_path):
    run = make_run(tmp_path, "r", metrics=("score",))
    root = data.RunsRoot(tmp_path)
    first = root.table("r", "probe_a")
    assert set(data.table_info(first).metrics) == {"score"}
    table = conform(records("other", [1.0, 2.0], layer=0, head=[0, 1]), run_id="r",
                    probe="probe_a")
    run.write_table("probe_a", table)
    os.utime(run.path / "probe_a.parquet", ns=(first.mtime_ns + 10**9, first.mtime_ns + 10**9))
    second = root.table("r", "probe_a")
    assert second != first and set(data.table_info(second).metrics) == {"other"}


def test_names_and_symlinks_outside_are_refused(root, runs):
    for bad in ("", ".", "..", "../x", "a/b", ".hidden", "x\x00y", "a\\b"):
        with pytest.raises(data.OutsideRunsFolder):
            data.check_name(bad, "run id")
    with pytest.raises(data.OutsideRunsFolder, match="outside the runs folder"):
        root.run_dir("escape")
    with pytest.raises(RunStateError, match="no run 'nope'"):
        root.run_dir("nope")
    assert root.tables("leaky") == ["probe_a", "prompts", "tokens"]
    with pytest.raises(data.OutsideRunsFolder):
        root.table("leaky", "stolen")
    entries = {e.run_id: e for e in root.runs()}
    assert entries["escape"].manifest is None and "outside" in entries["escape"].problem
    assert entries["broken"].manifest is None and "not readable" in entries["broken"].problem
    # a runs folder given through a symlink still works: everything is compared resolved
    link = runs.parent / "link"
    link.symlink_to(runs, target_is_directory=True)
    assert data.RunsRoot(link).tables("fixture") == root.tables("fixture")


def test_unreadable_and_foreign_tables_are_reported(root, runs, tmp_path):
    info = data.table_info(root.table("corrupt", "probe_a"))
    assert info.problem.startswith("not a readable parquet file")
    with pytest.raises(RunStateError, match="cannot be read"):
        data.table_rows(root.table("corrupt", "probe_a"))
    pq.write_table(pq.read_table(runs / "fixture" / "prompts.parquet"),
                   runs / "fixture" / "foreign.parquet")
    try:
        assert "not a record table" in data.table_info(root.table("fixture", "foreign")).problem
    finally:
        (runs / "fixture" / "foreign.parquet").unlink()
    assert data.table_info(root.table("empty", "probe_a")).n_rows == 0


def test_roles_find_tables_by_name_then_by_shape(root):
    infos = {t: data.table_info(root.table("fixture", t)) for t in root.record_tables("fixture")}
    assert tables.find(tables.CIRCUIT_MEMBERS, infos) == [("circuits", ["member"])]
    assert tables.find(tables.INTERVENTIONS, infos) == [
        ("interventions", ["kl_divergence", "logit_diff"])]
    renamed = {"my_circuits" if t == "circuits" else t: i for t, i in infos.items()}
    assert tables.find(tables.CIRCUIT_MEMBERS, renamed) == [("my_circuits", ["member"])]
    assert tables.find(tables.OVERLAP, {"probe_a": infos["probe_a"]}) == []
    dla = data.TableInfo(10, {"dla": None, "dla_mean": None, "logit_diff": None})
    effects = {"head_effects": infos["head_effects"], "direct_logit_attribution": dla}
    assert tables.find(tables.HEAD_EFFECTS, effects)[1] == ("direct_logit_attribution", ["dla"])


def test_circuit_and_overlap_shaping(root):
    circuits = data.records(root.table("fixture", "circuits"), "member")
    edges = data.records(root.table("fixture", "circuits"), "edge")
    ioi = circuits[circuits.segment == "ioi"]
    graph = shaping.circuit_digraph(ioi, edges[edges.segment == "ioi"])
    assert set(n for n in graph.nodes if isinstance(n, tuple)) == set(CIRCUITS["ioi"])
    assert graph.has_edge((1, 2), (3, 0)) and graph.has_edge((3, 0), "logits")
    assert graph.nodes[(1, 2)]["value"] == pytest.approx(0.9)
    rows = data.frame(data.read(root.table("fixture", "overlap"), data.READ_COLUMNS))
    matrix = shaping.pair_matrix(rows[rows.metric == "jaccard"])
    assert len(matrix) == 2 * len(overlap_sets())  # both orders, no diagonal
    for (a, b), (jaccard, shared) in overlap_sets().items():
        both = matrix.set_index(["task_a", "task_b"])["value"]
        assert both[(a, b)] == both[(b, a)] == pytest.approx(jaccard)
    shared = shaping.shared_heads(rows[rows.metric == "shared"]).set_index(["task_a", "task_b"])
    assert shared.loc[("ioi", "colored_objects"), "n_shared"] == 2
    no_pair = pd.DataFrame({"segment": ["ioi"], "value": [1.0]})
    assert shaping.split_pairs(no_pair).empty


def test_attention_digraph_and_extremes():
    pattern = pd.DataFrame({"prompt_id": "p", "query_pos": [0, 1, 1, 1, 1],  # 2 heads at q=1
                            "key_pos": [0, 0, 1, 0, 1], "value": [1.0, 0.8, 0.2, 0.6, 0.4]})
    tokens = pd.DataFrame({"prompt_id": "p", "pos": [0, 1], "token": ["<s>", " a"]})
    graph = shaping.attention_digraph(pattern, tokens, "p", threshold=0.35)
    assert graph.nodes[0] == {"pos": 0, "token": "<s>"}
    # edges key -> query; means over the two heads: (q1, k0) 0.7 kept, (q1, k1) 0.3 dropped
    assert dict(graph.edges.items()) == {(0, 0): {"weight": 1.0},
                                         (0, 1): {"weight": pytest.approx(0.7)}}
    with pytest.raises(ValueError, match="no attention-pattern rows"):
        shaping.attention_digraph(pattern, tokens, "q", 0.1)
    per_prompt = pd.DataFrame({"prompt_id": list("abcde"), "value": [3.0, 1.0, 5.0, 2.0, 4.0]})
    prompts = pd.DataFrame({"prompt_id": list("abcde"), "text": list("ABCDE")})
    out = shaping.extreme_prompts(per_prompt, prompts, 2)
    assert out.prompt_id.tolist() == ["c", "e", "b", "d"] and out.text.tolist() == list("CEBD")


def test_compare_heads_statistics():
    a = pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "value": [1.0, 2.0, 3.0],
                      "n_rows": 4, "n_prompts": [2, 2, 2]})
    b = a.assign(value=[1.5, 1.0, 5.0], n_prompts=[3, 1, 3])
    diff, stats = shaping.compare_heads(a, b)
    assert diff.value.tolist() == [-0.5, 1.0, -2.0] and diff.n_prompts.tolist() == [2, 1, 2]
    assert stats["Spearman rank correlation"] == pytest.approx(0.5)  # ranks (1,2,3) vs (2,1,3)
    assert stats["mean |a - b|"] == f"{3.5 / 3:.4g}"  # rounded for the page
    assert stats["largest |a - b|"] == f"2 at {format_head((1, 0))}"  # unsigned (issue 15 defect 4)


def test_compare_by_depth_thirds():
    a = pd.DataFrame({"layer": [0, 1, 2], "head": 0, "value": [1.0, 2.0, 3.0]})
    b = pd.DataFrame({"layer": [0, 1, 2, 3, 4, 5], "head": 0, "value": [1.0] * 6})
    out = shaping.compare_by_depth(a, b, 3, 6).set_index("depth")
    assert out.loc["middle", "a mean"] == 2.0 and out.loc["middle", "b layers"] == "2-3"
    assert out.loc["late", "b - a"] == -2.0


def test_refused_tables_are_listed(root):
    """A table symlinked outside the runs folder is listed as refused, not hidden."""
    refused = root.refused_tables("leaky")
    assert list(refused) == ["stolen"] and "outside the runs folder" in refused["stolen"]
    assert "stolen" not in root.tables("leaky")


def test_malformed_fifo_and_dead_runs(tmp_path):
    """Malformed manifests and a named pipe called run.json are unreadable entries (the app does
    not crash or hang); a running run whose writer is gone reads interrupted."""
    import threading

    from workbench.runlock import RunLock
    from workbench.store import atomic_write_json, list_runs

    runs = tmp_path / "runs"
    good = {"run_id": "ok", "status": "complete", "created": "2026-01-01", "tables": {}}
    for name, change in (("ok", {}), ("created5", {"created": 5}), ("model", {"model": "x"}),
                         ("tables", {"tables": None}), ("dead", {"status": "running"})):
        atomic_write_json(runs / name / "run.json", {**good, "run_id": name, **change})
    RunLock(runs / "dead").acquire().release()  # it had a writer, now gone
    (runs / "fifo").mkdir()
    os.mkfifo(runs / "fifo" / "run.json")
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        app={e.run_id: e for e in data.RunsRoot(runs).runs()},
        cli={r.run_id: m for r, m in list_runs(runs)}), daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "reading the runs folder hangs on a named pipe"
    app, cli = result["app"], result["cli"]
    assert app["ok"].manifest["status"] == "complete" and cli["ok"]["status"] == "complete"
    for name, field in (("created5", "created"), ("model", "model"), ("tables", "tables"),
                        ("fifo", "regular file")):
        assert app[name].manifest is None and field in app[name].problem, name
        assert cli[name]["status"] == "unreadable" and field in cli[name]["error"], name
    assert app["dead"].manifest["status"] == "interrupted" == cli["dead"]["status"]
    table = shaping.runs_overview(list(app.values()))
    assert set(table.run) == set(app) and (table.status == "unreadable").sum() == 4
