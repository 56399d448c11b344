"""``workbench circuits --level edge`` end to end on a tiny model: tables, GraphML, overlap."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import pyarrow.parquet as pq

from circuits.effects import spearman
from circuits.overlap import overlap
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import write_jsonl
from tests.test_run import cli
from workbench.store import list_runs


def test_edge_level_run_writes_tables_graphml_and_overlap(capsys, tmp_path):
    first = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(4, seed=1))
    rows = [{**r, "id": r["id"].replace("ioi", "beta")} for r in tiny_ioi_rows(4, seed=2)]
    second = write_jsonl(tmp_path / "beta.jsonl", rows)
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, "circuits", "--model", "tiny-llama", "--device", "cpu",
                         "--runs-dir", str(runs), "--no-progress", "--task", str(first),
                         "--task", str(second), "--level", "edge", "--method", "eap",
                         "--method", "eap-ig", "--ig-steps", "2", "--n-boot", "50",
                         "--select", "top_n=40")
    assert code == 0, err
    assert "CPR" in out
    [(run, manifest)] = list_runs(runs)
    assert manifest["status"] == "complete"
    t = {n: pq.read_table(run.table_path(n)).to_pandas() for n in manifest["tables"]}
    assert set(t) == {"task_metrics", "edge_scores", "circuits", "faithfulness", "overlap",
                      "method_agreement", "edge_faithfulness_curve"}
    f = t["faithfulness"]
    full = f[(f.metric == "faithfulness") & (f.condition == "fraction=1")]
    np.testing.assert_allclose(full.value, 1.0, atol=1e-6)
    circ = t["circuits"]
    sets = {}
    for (probe, task), c in circ[circ.metric == "edge_member"].groupby(["probe", "segment"]):
        sets[probe, task] = {(name,) for name in c.condition}
        graph = nx.read_graphml(run.path / f"edge_circuit_{probe}_{task}.graphml")
        assert graph.number_of_edges() == len(c)
    n_edges = int(t["edge_scores"].query("metric == 'edge_score' and probe == 'eap' and "
                                         "segment == 'alpha'").shape[0])
    ov = t["overlap"]
    for probe in ("eap", "eap-ig"):
        want = overlap(sets.get((probe, "alpha"), set()), sets.get((probe, "beta"), set()),
                       n_edges)
        got = ov[(ov.probe == probe) & (ov.condition == "edges")].set_index("metric").value
        np.testing.assert_equal(got["jaccard"], want.jaccard)
        np.testing.assert_equal(got["expected_jaccard"], want.expected_jaccard)
        assert got["size_first"] == want.size_first
    scores = t["edge_scores"]
    nodes = scores[(scores.metric == "node_score") & scores["head"].notna()]
    for task in ("alpha", "beta"):
        a, b = (nodes[(nodes.probe == p) & (nodes.segment == task)].sort_values(
            ["layer", "head"]).value.to_numpy() for p in ("eap", "eap-ig"))
        ag = t["method_agreement"]
        assert ag[ag.segment == task].value.iloc[0] == spearman(a, b)


def test_edge_level_refuses_a_bad_metric(capsys, tmp_path):
    task = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(2, seed=1))
    code, out, err = cli(capsys, "circuits", "--model", "tiny-llama", "--device", "cpu",
                         "--runs-dir", str(tmp_path / "runs"), "--task", str(task),
                         "--level", "edge", "--metric", "bleu")
    assert code != 0 and "--metric" in out + err


def test_faithfulness_selection_records_the_search_and_its_circuit(capsys, tmp_path):
    """--select faithfulness=T: the table's chosen circuit is the circuits table's, its
    faithfulness equals an independent edge-patched forward of that circuit, it reaches T, and a
    measured prefix within the search tolerance below it does not."""
    from circuits.edges.faithfulness import CircuitEvaluator
    from circuits.edges.forward import GraphModel
    from circuits.edges.search import SEARCH_REL_TOL, faithfulness
    from circuits.tasks import load_task
    from workbench.models import load_model

    path = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(4, seed=3))
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, "circuits", "--model", "tiny-llama", "--device", "cpu",
                         "--runs-dir", str(runs), "--no-progress", "--task", str(path),
                         "--level", "edge", "--method", "eap", "--n-boot", "50",
                         "--select", "faithfulness=0.5", "--n-random", "2")
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    curve = pq.read_table(run.table_path("edge_faithfulness_curve")).to_pandas()
    circ = pq.read_table(run.table_path("circuits")).to_pandas()
    one = curve.set_index("metric")
    size = int(one.loc["chosen_size", "value"])
    members = circ[circ.metric == "edge_member"].condition.tolist()
    assert len(members) == size
    model = load_model("tiny-llama", device="cpu")
    task = load_task(str(path), model)
    gm = GraphModel(model)
    names = gm.graph.edge_names()
    index = np.sort([names.index(m) for m in members])
    ev = CircuitEvaluator(model, task, metric="logit_diff", ablation="corrupted", graph_model=gm)
    want = faithfulness(ev([index])[0], ev.model, ev.empty)
    assert one.loc["chosen_faithfulness", "value"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    points = curve[curve.metric == "faithfulness_normalised"]
    sizes = points.condition.str.removeprefix("size=").astype(int).to_numpy()
    f = points.value.to_numpy()
    assert f[sizes == size][0] == pytest.approx(want, rel=1e-6, abs=1e-9)
    if one.loc["reached", "value"] == 1:
        assert want >= 0.5
        below = sizes[(f < 0.5) & (sizes < size)]
        assert below.size and size - below.max() <= max(1, SEARCH_REL_TOL * size) + size * 0.5
    draws = curve[curve.metric == "faithfulness_random_draw"]
    assert len(draws) == 2 * curve[curve.metric == "faithfulness_random"].shape[0]
