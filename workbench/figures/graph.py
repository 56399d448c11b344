"""Circuit graphs: a networkx DiGraph of heads drawn at (layer, head), edges as arrows."""

from __future__ import annotations

import re
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.heads import format_head
from workbench.figures.style import (INK, TICK_PT, Width, bar_room, base_figure, categorical,
                                     colorbar, colorbar_title, colour_scale, plot_text, pt)

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
            x, y, label = head[0], head[1], format_head(head)
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
        data[column] = data[column].astype(object).fillna("").astype(str)
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
            "colorbar": colorbar(colorbar_title(params["label"], params["unit"],
                                                room_px=bar_room(fig)))})
    if (~valued).any():
        rest = nodes[~valued]
        _add_nodes(fig, rest, {"color": [categorical(0) if h else OTHER_NODE
                                         for h in rest["layer"].notna()]})
    heads = nodes[nodes["layer"].notna()]
    layers = range(int(heads["layer"].min()), int(heads["layer"].max()) + 1) if len(heads) else []
    step = max(1, -(-len(layers) // 10))
    fig.update_xaxes(title_text="layer", tickmode="array", tickvals=list(layers)[::step])
    fig.update_yaxes(title_text="head")
    if params.get("n_heads"):
        fig.update_yaxes(range=[-0.7, params["n_heads"] - 0.3], dtick=1 if params["n_heads"] <= 12
                         else None)
    if params.get("edge_note"):
        fig.update_layout(margin={"t": 8 + pt(TICK_PT) * 1.6})
        fig.add_annotation(text=plot_text(params["edge_note"]), xref="paper", yref="paper",
                           x=0, y=1, xanchor="left", yanchor="bottom", showarrow=False,
                           font={"size": pt(TICK_PT - 1)})
    return fig


def _add_nodes(fig: go.Figure, nodes: pd.DataFrame, marker: dict) -> None:
    """Markers at (layer, head); only nodes that are not heads (embed, logits) carry a text label
    (a head's place on the axes names it, and labels of neighbouring heads would collide)."""
    heads = nodes["layer"].notna()
    shown = {} if heads.all() else {"texttemplate": ["" if h else "%{text}" for h in heads]}
    fig.add_trace(go.Scatter(x=nodes["x"], y=nodes["y"],
                             mode="markers" if heads.all() else "markers+text", **shown,
                             text=[plot_text(label) for label in nodes["label"]],
                             textposition="top center", textfont={"size": pt(TICK_PT - 1)},
                             marker={"size": 9, "line": {"width": 0.5, "color": INK}, **marker},
                             hovertemplate="%{text}<extra></extra>"))


ARC_POINTS = 17  # points per drawn arc
WEIGHT_BINS = 5  # arc widths / colours


def weighted_graph(graph: nx.DiGraph, *, weight: str = "weight", label: str = "weight",
                   unit: str | None = None, node_label: str = "label",
                   order: list | None = None, table: str | None = None,
                   name: str | None = None) -> Plot:
    """Any weighted DiGraph as an arc diagram: the nodes on a line in ``order`` (default: sorted,
    e.g. token positions), each edge an arc above the line whose colour and width grow with
    ``weight`` (e.g. the attention graph of a prompt: an edge key -> query per attention weight
    above a threshold, Wu et al. 2025, arXiv 2502.01951). Self-loops are kept in the data but not
    drawn. Node labels come from the node attribute ``node_label`` (else the node itself).

    Data columns: element (node/edge), node, label, x, source, target, x1, value (edges: the
    weight; nodes: empty).

    Raises:
        ValueError: the graph has no nodes, or ``order`` misses a node.
    """
    if graph.number_of_nodes() == 0:
        raise ValueError("the graph has no nodes")
    order = list(order) if order is not None else sorted(graph.nodes)
    where = {node: i for i, node in enumerate(order)}
    missing = [n for n in graph.nodes if n not in where]
    if missing:
        raise ValueError(f"order= misses node(s) {missing[:5]}")
    nodes = [{"element": "node", "node": str(n), "label": str(graph.nodes[n].get(node_label, n)),
              "x": float(where[n])} for n in order if n in graph]
    edges = [{"element": "edge", "source": str(a), "target": str(b), "x": float(where[a]),
              "x1": float(where[b]), "value": float(attrs.get(weight, 1.0))}
             for a, b, attrs in graph.edges(data=True)]
    columns = ["element", "node", "label", "x", "source", "target", "x1", "value"]
    data = pd.DataFrame(nodes + edges, columns=columns).astype({"x1": "float64",
                                                                "value": "float64"})
    for column in ("node", "label", "source", "target"):
        data[column] = data[column].astype(object).fillna("").astype(str)
    params = {"label": label, "unit": unit, "weight_attr": weight, "n_edges": len(edges)}
    return Plot("digraph", name or safe_name(table, "graph", label), data, params)


def _arc(x0: float, x1: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0.0, 1.0, ARC_POINTS)
    return x0 + (x1 - x0) * t, abs(x1 - x0) / 2 * 4 * t * (1 - t)


MAX_TOKEN_TICKS = 80  # token labels under an arc diagram before they are thinned


@drawer("digraph")
def draw_weighted_graph(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    nodes, edges = data[data["element"] == "node"], data[data["element"] == "edge"]
    edges = edges[edges["x"] != edges["x1"]].sort_values("value")
    fig = base_figure(width, aspect=0.55 if width == "single" else 0.34)
    values = edges["value"].to_numpy() if len(edges) else np.zeros(1)
    # non-negative weights (attention fractions) get a range from 0, never one padded around a
    # single value (0.6-1.4 for weights that are all 1)
    scale = colour_scale(values, "sequential", from_zero=bool((values >= 0).all()))
    lo, hi = scale["zmin"], scale["zmax"]
    bins = np.clip(((edges["value"] - lo) / ((hi - lo) or 1.0) * WEIGHT_BINS).astype(int),
                   0, WEIGHT_BINS - 1)
    colours = sample_colorscale(scale["colorscale"], [(b + 0.5) / WEIGHT_BINS
                                                       for b in range(WEIGHT_BINS)])
    for b in range(WEIGHT_BINS):
        xs, ys = [], []
        for _, e in edges[bins == b].iterrows():
            x, y = _arc(e["x"], e["x1"])
            xs += [*x, None]
            ys += [*y, None]
        if xs:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                     line={"color": colours[b], "width": 0.5 + 0.6 * b}))
    tops = [_arc(e["x"], e["x1"]) for _, e in edges.iterrows()]
    hover = [f"{plot_text(e['source'])} \u2192 {plot_text(e['target'])}: {e['value']:.3g}"
             for _, e in edges.iterrows()]
    fig.add_trace(go.Scatter(
        x=[x[ARC_POINTS // 2] for x, _ in tops], y=[y[ARC_POINTS // 2] for _, y in tops],
        mode="markers", hovertext=hover, hoverinfo="text",
        marker={"size": 3, "opacity": 0.8, "color": edges["value"].to_numpy(),
                "colorscale": scale["colorscale"], "cmin": lo, "cmax": hi, "showscale": True,
                "colorbar": colorbar(colorbar_title(params["label"], params["unit"],
                                                room_px=bar_room(fig)))}))
    fig.add_trace(go.Scatter(x=nodes["x"], y=np.zeros(len(nodes)), mode="markers",
                             marker={"size": 4, "color": INK}, hoverinfo="text",
                             hovertext=[plot_text(t) for t in nodes["label"]]))
    step = -(-len(nodes) // MAX_TOKEN_TICKS)  # every token up to 80 (then every other ...)
    ticks = nodes.iloc[::step]
    fig.update_xaxes(tickmode="array", tickvals=ticks["x"].tolist(), tickangle=-90,
                     ticktext=[plot_text(t) for t in ticks["label"]], showline=False,
                     tickfont={"size": pt(TICK_PT - 1 if len(ticks) <= 40 else TICK_PT - 2)})
    fig.update_yaxes(visible=False, rangemode="tozero")
    return fig
