"""Circuit graphs: a networkx DiGraph of heads drawn at (layer, head), edges as arrows."""

from __future__ import annotations

import re
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.style import (INK, TICK_PT, Width, base_figure, categorical,
                                     colorbar, colorbar_title, colour_scale, pt)

_HEAD_NAME = re.compile(r"^\s*L?(\d+)\s*[.H:]\s*(\d+)\s*$", re.IGNORECASE)
NEGATIVE_EDGE = "#0072B2"
POSITIVE_EDGE = "#555555"
OTHER_NODE = "#999999"


def _head_of(node: Any, attrs: dict) -> tuple[int, int] | None:
    if attrs.get("layer") is not None and attrs.get("head") is not None:
        return int(attrs["layer"]), int(attrs["head"])
    if isinstance(node, tuple) and len(node) == 2 and all(isinstance(v, (int, np.integer))
                                                          for v in node):
        return int(node[0]), int(node[1])
    match = _HEAD_NAME.match(str(node))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _node_rows(graph: nx.DiGraph, value: str, n_heads: int | None) -> list[dict]:
    heads = {node: _head_of(node, attrs) for node, attrs in graph.nodes(data=True)}
    layers = [h[0] for h in heads.values() if h] or [0]
    mid = ((n_heads or max([h[1] for h in heads.values() if h] or [0]) + 1) - 1) / 2
    rows = []
    for node, attrs in graph.nodes(data=True):
        head = heads[node]
        if head:
            x, y, label = head[0], head[1], f"L{head[0]}H{head[1]}"
        else:  # embeddings / logits and the like sit before the first or after the last layer
            x = min(layers) - 1 if graph.in_degree(node) == 0 else max(layers) + 1
            y, label = mid, str(node)
        v = attrs.get(value)
        rows.append({"element": "node", "node": str(node), "label": label,
                     "layer": head[0] if head else None, "head": head[1] if head else None,
                     "x": float(x), "y": float(y), "value": float(v) if v is not None else None})
    return rows


def circuit_graph(graph: nx.DiGraph, *, value: str = "value", weight: str = "weight",
                  label: str = "effect", unit: str | None = None, n_heads: int | None = None,
                  table: str | None = None, name: str | None = None) -> Plot:
    """A circuit (a DiGraph whose nodes are heads) drawn with heads at x = layer, y = head.

    Nodes are heads when they carry ``layer`` and ``head`` attributes, are ``(layer, head)``
    tuples, or are named like ``"L9H6"`` / ``"9.6"``; other nodes (``"embed"``, ``"logits"``) sit
    left of the first layer when they have no inputs, else right of the last. Node colour is the
    node attribute ``value`` (diverging when signed), arrow width is |edge ``weight``| (grey
    positive, blue negative).

    Data columns: element (node/edge), node, label, layer, head, x, y, value, source, target,
    x1, y1 (edges: from (x, y) to (x1, y1), value = weight).

    Raises:
        ValueError: the graph has no nodes.
    """
    if graph.number_of_nodes() == 0:
        raise ValueError("the circuit graph has no nodes")
    nodes = _node_rows(graph, value, n_heads)
    where = {r["node"]: (r["x"], r["y"]) for r in nodes}
    edges = [{"element": "edge", "source": str(a), "target": str(b),
              "x": where[str(a)][0], "y": where[str(a)][1], "x1": where[str(b)][0],
              "y1": where[str(b)][1], "value": float(attrs.get(weight, 1.0))}
             for a, b, attrs in graph.edges(data=True)]
    columns = ["element", "node", "label", "layer", "head", "x", "y", "value", "source",
               "target", "x1", "y1"]
    data = pd.DataFrame(nodes + edges, columns=columns).sort_values(
        ["element", "node", "source", "target"], ignore_index=True, na_position="first")
    data = data.astype({"layer": "float64", "head": "float64", "value": "float64",
                        "x1": "float64", "y1": "float64"})
    for column in ("node", "label", "source", "target"):
        data[column] = data[column].fillna("").astype(str)
    params = {"label": label, "unit": unit, "value_attr": value, "weight_attr": weight,
              "n_heads": n_heads}
    return Plot("circuit", name or safe_name(table, "circuit"), data, params)


@drawer("circuit")
def draw_circuit(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    nodes, edges = data[data["element"] == "node"], data[data["element"] == "edge"]
    fig = base_figure(width, aspect=0.7 if width == "single" else 0.42)
    biggest = float(edges["value"].abs().max()) if len(edges) else 1.0
    for _, e in edges.iterrows():
        fig.add_annotation(x=e["x1"], y=e["y1"], ax=e["x"], ay=e["y"], xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
                           arrowwidth=0.5 + 1.0 * abs(e["value"]) / (biggest or 1.0),
                           arrowcolor=NEGATIVE_EDGE if e["value"] < 0 else POSITIVE_EDGE,
                           standoff=5, startstandoff=5, text="")
    valued = nodes["value"].notna()
    if valued.any():
        colours = colour_scale(nodes.loc[valued, "value"].to_numpy())
        _add_nodes(fig, nodes[valued], {
            "color": nodes.loc[valued, "value"].to_numpy(), "colorscale": colours["colorscale"],
            "cmin": colours["zmin"], "cmax": colours["zmax"], "showscale": True,
            "colorbar": colorbar(colorbar_title(params["label"], params["unit"]))})
    if (~valued).any():
        rest = nodes[~valued]
        _add_nodes(fig, rest, {"color": [categorical(0) if h else OTHER_NODE
                                         for h in rest["layer"].notna()]})
    heads = nodes[nodes["layer"].notna()]
    layers = range(int(heads["layer"].min()), int(heads["layer"].max()) + 1) if len(heads) else []
    step = max(1, -(-len(layers) // 10))
    fig.update_xaxes(title_text="layer", tickmode="array", tickvals=list(layers)[::step])
    fig.update_yaxes(title_text="head")
    return fig


def _add_nodes(fig: go.Figure, nodes: pd.DataFrame, marker: dict) -> None:
    fig.add_trace(go.Scatter(x=nodes["x"], y=nodes["y"], mode="markers+text", text=nodes["label"],
                             textposition="top center", textfont={"size": pt(TICK_PT - 1)},
                             marker={"size": 9, "line": {"width": 0.5, "color": INK}, **marker},
                             hovertemplate="%{text}<extra></extra>"))
