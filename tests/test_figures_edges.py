"""Figures of an edge-level circuits run: the size-faithfulness curve with its random band, and the
chosen edge circuit (nodes by layer, width by |score|, IOI classes or node types as colours)."""

from __future__ import annotations

import pandas as pd
import pytest

from workbench.figures.edges import edge_circuit_plot, edge_curve_plot, parse_node
from workbench.heads import format_head


def rec(metric, value, condition=None, probe="eap-ig", segment="ioi"):
    return {"probe": probe, "metric": metric, "layer": None, "head": None, "segment": segment,
            "condition": condition, "value": float(value)}


def curve_rows():
    rows = []
    for size, f, grid in ((10, -0.1, 1), (100, 0.3, 1), (150, 0.7, 0), (180, 0.82, 0),
                          (200, 0.9, 1), (1000, 1.0, 1)):
        c = f"size={size}"
        rows += [rec("faithfulness_normalised", f, c), rec("faithfulness_normalised_low",
                                                            f - 0.1, c),
                 rec("faithfulness_normalised_high", f + 0.1, c), rec("on_grid", grid, c)]
    for size in (10, 100, 200, 1000):
        rows += [rec("faithfulness_random_draw", v, f"size={size}") for v in (-0.05, 0.05)]
    rows += [rec("target", 0.8), rec("chosen_size", 180), rec("reached", 1),
             rec("search_ranking", 0)]
    return pd.DataFrame(rows)


def test_curve_plot_has_every_measured_size_the_band_and_the_choice():
    plot = edge_curve_plot(curve_rows(), "eap-ig", "ioi")
    d = plot.data
    circuit = d[d.series == "circuit"]
    assert circuit["size"].tolist() == [10, 100, 150, 180, 200, 1000]
    assert circuit.set_index("size").loc[180, "faithfulness"] == pytest.approx(0.82)
    assert circuit["on_grid"].tolist() == [True, True, False, False, True, True]
    band = d[d.series == "random"].set_index("size")
    assert band.loc[100, "low"] == pytest.approx(-0.05) and band.loc[100, "high"] == 0.05
    assert plot.params["target"] == 0.8 and plot.params["chosen"] == 180
    assert plot.params["ranking"] == "absolute"
    fig = plot.figure("single")
    assert fig.layout.xaxis.type == "log"
    with pytest.raises(ValueError, match="faithfulness_normalised"):
        edge_curve_plot(curve_rows(), "eap", "ioi")


def member_rows():
    edges = {"embed->a0.1.q": -0.5, "a0.1->a2.kv1.v": -1.0, "a2.4->logits": -2.0,
             "m1->a2.4.q": 0.25, "embed->m1": 0.1, "a2.5->logits": 1.5}
    return pd.DataFrame([rec("edge_member", v, c) for c, v in edges.items()])


def test_circuit_plot_places_nodes_by_layer_and_colours_classes():
    classes = {(2, 4): "name_mover", (2, 5): "negative_name_mover"}
    plot = edge_circuit_plot(member_rows(), "eap-ig", "ioi", n_heads=6, n_kv=2, classes=classes)
    d = plot.data
    nodes = d[d.element == "node"].set_index("node")
    assert set(nodes.index) == {"embed", "a0.1", "a2.kv1", "a2.4", "m1", "a2.5", "logits"}
    assert (nodes.loc["a2.4", "x"], nodes.loc["a2.4", "y"]) == (2, 4)
    assert nodes.loc["a2.4", "label"] == format_head((2, 4))
    assert nodes.loc["m1", "x"] == 1.5 and nodes.loc["embed", "x"] == -1
    assert nodes.loc["logits", "x"] == 3.5
    assert nodes.loc["a2.kv1", "y"] == pytest.approx(-1.7)  # the second key/value row
    assert nodes.loc["m1", "y"] == 6  # the MLP row above the 6 heads
    assert nodes.loc["a2.4", "colour_key"] == "name_mover"
    assert nodes.loc["a0.1", "colour_key"] == "unclassified head"
    edges = d[d.element == "edge"]
    assert len(edges) == 6 and plot.params["n_edges"] == 6
    assert set(edges.target) == {"a0.1", "a2.kv1", "logits", "a2.4", "m1"}
    plain = edge_circuit_plot(member_rows(), "eap-ig", "ioi", n_heads=6, n_kv=2)
    assert set(plain.data[plain.data.element == "node"].colour_key) == {
        "head", "MLP", "key/value input", "embedding / logits"}
    plain.figure("double")


def test_circuit_plot_keeps_the_strongest_edges_and_says_so():
    plot = edge_circuit_plot(member_rows(), "eap-ig", "ioi", n_heads=6, n_kv=2, max_edges=3)
    edges = plot.data[plot.data.element == "edge"]
    assert sorted(edges["value"].abs()) == [1.0, 1.5, 2.0]
    assert (plot.params["n_drawn"], plot.params["n_edges"]) == (3, 6)


@pytest.mark.parametrize("name, want", [
    ("a3.5", {"kind": "head", "layer": 3, "head": 5}),
    ("a7.kv1.k", {"kind": "kv", "layer": 7, "group": 1}),
    ("m4", {"kind": "mlp", "layer": 4}), ("logits", {"kind": "logits"})])
def test_parse_node(name, want):
    assert parse_node(name) == want
    with pytest.raises(ValueError):
        parse_node("x9")


def edge_plots() -> list:
    """One plot of each edge-run kind (for tests/test_figures.py's every-kind checks)."""
    return [edge_curve_plot(curve_rows(), "eap-ig", "ioi"),
            edge_circuit_plot(member_rows(), "eap-ig", "ioi", n_heads=6, n_kv=2)]
