"""Issue 27's smaller defects (item 9): sweeps ordered headline first without twins, the overlap
matrix on the Jaccard index's own range, run comparison on the headline metric with a colour range
per run when the models differ, every token labelled under an attention graph, findings and
pruning legends that read as sentences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from app.data import MetricInfo, TableInfo
from app.shaping import sweep_order
from tests.test_app import box, charts, open_app, runs  # noqa: F401


def test_sweeps_headline_first_without_twins():
    """8 swept metrics: the mean_ summaries first (they were left out past the first 6,
    alphabetically), a per-prompt metric with a mean_ twin not drawn twice."""
    names = ["accuracy", "entropy", "kl_divergence", "logit_diff", "loss", "mean_kl_divergence",
             "mean_logit_diff", "rank"]
    sweep = ({"segment": "ioi"},)
    info = TableInfo(100, {m: MetricInfo(10, frozenset({"condition"}), (), sweep) for m in names})
    found, twins = sweep_order(info, ("mean_logit_diff",))
    metrics = [m for m, _ in found]
    assert metrics[:2] == ["mean_logit_diff", "mean_kl_divergence"]
    assert sorted(twins) == ["kl_divergence", "logit_diff"]
    assert len(metrics) == len(set(metrics)) == 6
    assert found[0][1] == (("segment", "ioi"),)


def test_overlap_matrix_on_the_full_jaccard_range(open_app):
    at = open_app("views/circuits.py", run="fixture")
    assert not at.exception
    overlap = next(c for c in charts(at) if c["data"][0].get("hovertemplate", "").startswith(
        "%{y} vs %{x}"))
    assert (overlap["data"][0]["zmin"], overlap["data"][0]["zmax"]) == (0.0, 1.0)


def test_compare_opens_on_the_headline_metric(open_app):
    at = open_app(run="fixture", compare="second")
    assert not at.exception
    assert box(at, "Metric").value == "score"  # the probe's headline (manifest)
    assert at.radio(key="compare-range").value == "one for both"  # same grid


def test_attention_graph_labels_every_token():
    import networkx as nx

    from workbench.figures import weighted_graph

    graph = nx.DiGraph()
    for i in range(60):
        graph.add_node(i, pos=i, token=f"t{i}")
    for i in range(1, 60):
        graph.add_edge(i - 1, i, weight=0.5)
    fig = weighted_graph(graph, label="w", node_label="token").figure("double")
    assert len(fig.layout.xaxis.ticktext) == 60  # every other one before


def test_findings_and_pruning_legend_read_as_sentences():
    from atlas.findings import _position_line
    from workbench.figures.pruning import _orders

    line = _position_line({"product": [0.5, 0.95], "rollout": [0.2, 0.6]})
    assert "at never" not in line
    assert "reaches 0.9 at depth 1 (product of attention matrices) and never by the residual-aware " \
           "rollout (max 0.60)" in line
    assert _orders(1) == "random (1 order)" and _orders(5) == "random (min-max of 5 orders)"


def test_pruning_axis_shows_100_percent():
    from workbench.figures.pruning import pruning_curve

    rows = pd.DataFrame({"metric": "mean_logit_diff", "segment": ["importance"] * 3,
                         "condition": ["pruned=0", "pruned=0.5", "pruned=1"],
                         "value": [3.0, 2.0, 0.5], "layer": np.nan, "head": np.nan})
    fig = pruning_curve(rows, "mean_logit_diff").figure("double")
    assert 1 in list(fig.layout.xaxis.tickvals) and fig.layout.xaxis.range[1] > 1


@pytest.mark.parametrize("name", ["9.6", "L9H6", "l9h6", "9:6"])
def test_every_typed_style_parses(name):
    from workbench.heads import format_head, parse_head

    assert format_head(parse_head(name)) == "L9H6"
