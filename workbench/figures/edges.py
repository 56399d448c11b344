"""Figures of an edge-level circuits run (``workbench circuits --level edge``; tables in
``circuits/edges/run.py``): the size-faithfulness curve with the random-circuit band, and the
chosen edge circuit drawn for print.

* ``edge_curve``: normalised faithfulness ``(m(C) - m(empty)) / (m(model) - m(empty))`` against
  the circuit's edge count (log axis), every size the search measured (grid sizes as filled
  markers with their bootstrap interval, bisection steps open), the min-max band of random edge
  sets of the grid sizes, the target and the chosen size; the other ranking's grid curve (from
  the ``faithfulness`` table) as a thin dotted line.
* ``edge_circuit``: the circuit's nodes by layer (x = layer; a layer's MLP half a layer right of
  its heads, in the row above them; embedding left, logits right), heads at y = head index, a
  key/value group's input as a small diamond in a row below the heads; edge width = |score| (the strongest ``max_edges`` edges when
  the circuit is larger; the figure says so), colour = sign. Nodes are coloured by IOI class when
  the run has an ``ioi_classes`` table (metric ``ioi_class``, ``condition`` = the class), else by
  node type (head / MLP / embedding / logits / key-value input).

Torch-free: edge names (``"a3.5->a7.kv1.k"``) are parsed here, following
``circuits.edges.graph``'s naming.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set
from workbench.figures.style import (INK, LINE_PX, TICK_PT, Width, axis_title, base_figure,
                                     categorical, plot_text, pt, translucent)
from workbench.heads import format_head

MAX_EDGES = 200
SUPPORTS = "#D55E00"  # edges whose ablation lowers the metric (carry the task)
OPPOSES = "#0072B2"
RANDOM = "#777777"
TYPE_COLOURS = {"head": categorical(0), "mlp": categorical(2), "embed": "#000000",
                "logits": "#000000", "kv": "#999999"}
_NODE = re.compile(r"^a(\d+)\.(\d+)$|^a(\d+)\.kv(\d+)(?:\.[kv])?$|^m(\d+)$|^(embed|logits)$")


def parse_node(name: str) -> dict:
    """``"a3.5"`` / ``"a7.kv1.k"`` / ``"m4"`` / ``"embed"`` / ``"logits"`` -> kind, layer,
    head or group.

    Raises:
        ValueError: a name outside the edge graph's naming.
    """
    m = _NODE.match(name)
    if not m:
        raise ValueError(f"not an edge-graph node name: {name!r}")
    if m.group(1):
        return {"kind": "head", "layer": int(m.group(1)), "head": int(m.group(2))}
    if m.group(3):
        return {"kind": "kv", "layer": int(m.group(3)), "group": int(m.group(4))}
    if m.group(5):
        return {"kind": "mlp", "layer": int(m.group(5))}
    return {"kind": m.group(6)}


def edge_curve_plot(rows: pd.DataFrame, method: str, task: str, *, other: pd.DataFrame | None
                    = None, table: str | None = "edge_faithfulness_curve") -> Plot:
    """The size-faithfulness curve of one (method, task) from ``edge_faithfulness_curve`` rows
    (and the ``faithfulness`` table's rows for ``other``: the ranking not searched).

    Data columns: series (``circuit``, ``random``, ``other``), size (> 0: a log axis; the empty
    circuit is 0 by definition), faithfulness, low, high, on_grid. Params: target, chosen, reached, ranking.

    Raises:
        ValueError: no ``faithfulness_normalised`` rows for (method, task).
    """
    mine = rows[(rows["probe"] == method) & (rows["segment"] == task)]
    pts = mine[mine["metric"] == "faithfulness_normalised"]
    if pts.empty:
        raise ValueError(f"no faithfulness_normalised rows for {method!r}, {task!r}")

    def by_size(metric):
        part = mine[mine["metric"] == metric]
        return dict(zip(part["condition"], part["value"].astype(float)))

    low, high, grid = (by_size(m) for m in ("faithfulness_normalised_low",
                                           "faithfulness_normalised_high", "on_grid"))
    out = [{"series": "circuit", "size": int(c.split("=")[1]), "faithfulness": float(v),
            "low": low.get(c, np.nan), "high": high.get(c, np.nan),
            "on_grid": bool(grid.get(c, 1.0))} for c, v in zip(pts["condition"], pts["value"])]
    draws = mine[mine["metric"] == "faithfulness_random_draw"]
    for cond, group in draws.groupby("condition"):
        v = group["value"].astype(float)
        out.append({"series": "random", "size": int(cond.split("=")[1]),
                    "faithfulness": float(v.mean()), "low": float(v.min()),
                    "high": float(v.max()), "on_grid": True})
    one = {m: float(v) for m, v in zip(mine["metric"], mine["value"]) if m in (
        "target", "chosen_size", "reached", "search_ranking", "chosen_faithfulness")}
    ranking = "signed" if one.get("search_ranking") == 1.0 else "absolute"
    if other is not None and len(other):
        o = other[(other["probe"] == method) & (other["segment"] == task)]
        metric, sizes = (("faithfulness", "n_edges_kept") if ranking == "signed" else
                         ("faithfulness_signed", "n_edges_kept_signed"))
        f = dict(zip(o.loc[o["metric"] == metric, "condition"],
                     o.loc[o["metric"] == metric, "value"]))
        n = dict(zip(o.loc[o["metric"] == sizes, "condition"],
                     o.loc[o["metric"] == sizes, "value"]))
        out += [{"series": "other", "size": int(n[c]), "faithfulness": float(v), "low": np.nan,
                 "high": np.nan, "on_grid": True} for c, v in f.items() if c in n and n[c] > 0]
    data = pd.DataFrame(out)
    data = data[data["size"] > 0].sort_values(["series", "size"], ignore_index=True)  # log axis
    params = {"metric": "faithfulness_normalised", "label": "normalised faithfulness",
              "unit": "(m(C) - m(empty)) / (m(model) - m(empty))", "method": method,
              "task": task, "target": one.get("target"), "chosen": one.get("chosen_size"),
              "reached": one.get("reached"), "ranking": ranking, "table": table,
              "where": {"method": method, "task": task}}
    return Plot("edge_curve", safe_name(table, "curve", method, task), data, params)


@drawer("edge_curve")
def draw_edge_curve(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.68 if width == "single" else 0.4, showlegend=True)
    rnd = data[data["series"] == "random"]
    if len(rnd):
        fig.add_trace(go.Scatter(x=list(rnd["size"]) + list(rnd["size"])[::-1],
                                 y=list(rnd["high"]) + list(rnd["low"])[::-1], fill="toself",
                                 mode="lines",
                                 fillcolor=translucent(RANDOM), line={"width": 0},
                                 name="random edge sets (min-max)", hoverinfo="skip"))
    other = data[data["series"] == "other"]
    if len(other):
        name = "|score| ranking" if params["ranking"] == "signed" else "signed ranking"
        fig.add_trace(go.Scatter(x=other["size"], y=other["faithfulness"], mode="lines",
                                 line={"width": LINE_PX, "dash": "dot", "color": INK},
                                 name=plot_text(name)))
    c = data[data["series"] == "circuit"]
    colour = categorical(0)
    grid = c[c["on_grid"]]
    fig.add_trace(go.Scatter(
        x=c["size"], y=c["faithfulness"], mode="lines", line={"width": 1.2, "color": colour},
        name=plot_text(f"{params['ranking'].replace('absolute', '|score|')} ranking"),
        showlegend=False))
    fig.add_trace(go.Scatter(
        x=grid["size"], y=grid["faithfulness"], mode="markers",
        marker={"size": 5, "color": colour},
        error_y={"type": "data", "symmetric": False, "array": grid["high"] - grid["faithfulness"],
                 "arrayminus": grid["faithfulness"] - grid["low"], "thickness": LINE_PX,
                 "width": 2, "color": colour},
        name=plot_text(f"{params['ranking'].replace('absolute', '|score|')} ranking, 95% CI")))
    steps = c[~c["on_grid"]]
    if len(steps):
        fig.add_trace(go.Scatter(x=steps["size"], y=steps["faithfulness"], mode="markers",
                                 marker={"size": 5, "color": "white",
                                         "line": {"width": 1, "color": colour}},
                                 name="bisection steps"))
    if params.get("target") is not None:
        fig.add_hline(y=params["target"], line={"width": LINE_PX, "dash": "dash", "color": INK})
    if params.get("chosen"):
        fig.add_vline(x=max(params["chosen"], 1), line={"width": LINE_PX, "color": SUPPORTS})
        fig.add_annotation(x=np.log10(max(params["chosen"], 1)), y=1, yref="paper",
                           text=plot_text(f"{int(params['chosen']):,} edges"), showarrow=False,
                           xanchor="right", yanchor="top", font={"size": pt(TICK_PT)})
    fig.update_xaxes(type="log", title_text=axis_title("circuit edges (after pruning)"))
    fig.update_yaxes(title_text=axis_title(params["label"]))
    return fig


def edge_circuit_plot(members: pd.DataFrame, method: str, task: str, *, n_heads: int,
                      n_kv: int, classes: dict[tuple[int, int], str] | None = None,
                      max_edges: int = MAX_EDGES, table: str | None = "circuits") -> Plot:
    """The chosen edge circuit of one (method, task) from the ``circuits`` table's
    ``edge_member`` rows (``condition`` ``sender->receiver``, value = the edge's score).

    Data columns: element (node/edge), node, label, kind, colour_key, x, y, source, target, x1,
    y1, value. Params: n_edges (in the circuit), n_drawn, classes (bool).

    Raises:
        ValueError: no edge rows for (method, task).
    """
    mine = members[(members["probe"] == method) & (members["segment"] == task) &
                   (members["metric"] == "edge_member")]
    if mine.empty:
        raise ValueError(f"no edge_member rows for {method!r}, {task!r}")
    drawn = mine.reindex(mine["value"].abs().sort_values(ascending=False).index)[:max_edges]
    n_layers = 0
    nodes: dict[str, dict] = {}

    def place(name: str) -> dict:
        nonlocal n_layers
        if name in nodes:
            return nodes[name]
        p = parse_node(name)
        kind = p["kind"]
        if "layer" in p:
            n_layers = max(n_layers, p["layer"] + 1)
        if kind == "head":
            x, y, label = p["layer"], p["head"], format_head((p["layer"], p["head"]))
            key = (classes or {}).get((p["layer"], p["head"]), "head" if not classes else
                                      "unclassified head")
        elif kind == "kv":
            x, y, label, key = p["layer"] - 0.3, None, name, "key/value input"
        elif kind == "mlp":
            x, y, label, key = p["layer"] + 0.5, float(n_heads), name.upper(), "MLP"
        else:
            x, y, label, key = None, (n_heads - 1) / 2, name, "embedding / logits"
        nodes[name] = {"element": "node", "node": name, "label": label, "kind": kind,
                       "colour_key": key, "x": x, "y": y, **{k: p[k] for k in p if k == "group"}}
        return nodes[name]

    edges = []
    for cond, value in zip(drawn["condition"], drawn["value"].astype(float)):
        sender, receiver = str(cond).split("->")
        target = receiver
        if receiver.startswith("a") and receiver.endswith(".q"):
            target = receiver[:-2]
        elif receiver.startswith("a") and ".kv" in receiver:
            target = receiver.rsplit(".", 1)[0]
        place(sender), place(target)
        edges.append({"element": "edge", "source": sender, "target": target, "value": value,
                      "input": receiver.rsplit(".", 1)[-1] if receiver.startswith("a") else
                      receiver})
    for n in nodes.values():
        if n["kind"] == "kv":  # in rows below the heads, one per key/value group
            n["y"] = -1.0 - 0.7 * n["group"]
        if n["kind"] == "embed":
            n["x"] = -1.0
        if n["kind"] == "logits":
            n["x"] = float(n_layers) + 0.5
    for e in edges:
        a, b = nodes[e["source"]], nodes[e["target"]]
        e.update(x=a["x"], y=a["y"], x1=b["x"], y1=b["y"])
    columns = ["element", "node", "label", "kind", "colour_key", "x", "y", "source", "target",
               "input", "x1", "y1", "value"]
    data = pd.DataFrame(list(nodes.values()) + edges, columns=columns)
    for column in ("node", "label", "kind", "colour_key", "source", "target", "input"):
        data[column] = data[column].astype(object).fillna("").astype(str)
    data = data.astype({"x": "float64", "y": "float64", "x1": "float64", "y1": "float64",
                        "value": "float64"})
    params = {"metric": "edge_member", "label": "edge score", "method": method, "task": task,
              "n_edges": int(len(mine)), "n_drawn": int(len(drawn)), "n_heads": n_heads,
              "classes": bool(classes), "table": table,
              "where": {"method": method, "task": task}}
    return Plot("edge_circuit", safe_name(table, "edge_circuit", method, task), data, params)


@drawer("edge_circuit")
def draw_edge_circuit(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    nodes, edges = data[data["element"] == "node"], data[data["element"] == "edge"]
    fig = base_figure(width, aspect=0.8 if width == "single" else 0.5, showlegend=True)
    biggest = float(edges["value"].abs().max()) if len(edges) else 1.0
    for sign, colour, name in ((-1, SUPPORTS, "edge score < 0 (ablating it lowers the metric)"),
                               (1, OPPOSES, "edge score > 0 (ablating it raises the metric)")):
        part = edges[np.sign(edges["value"]) == sign]
        bins = np.ceil(4 * part["value"].abs() / (biggest or 1.0)).clip(1, 4)
        for i, (w, group) in enumerate(part.groupby(bins)):
            xs, ys = [], []
            for e in group.itertuples():
                xs += [e.x, e.x1, None]
                ys += [e.y, e.y1, None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                                     line={"width": 0.3 + 0.7 * float(w),
                                           "color": translucent(colour, 0.6)},
                                     name=plot_text(name), legendgroup=name,
                                     showlegend=i == 0))
    for i, (key, group) in enumerate(nodes.groupby("colour_key", sort=True)):
        colour = (TYPE_COLOURS.get({"MLP": "mlp", "head": "head", "key/value input": "kv",
                                    "embedding / logits": "embed"}.get(key, ""))
                  if not params.get("classes") or key in ("MLP", "key/value input",
                                                          "embedding / logits")
                  else categorical(i + 1))
        colour = colour or "#BBBBBB"
        symbol = {"kv": "diamond", "mlp": "square"}
        fig.add_trace(go.Scatter(
            x=group["x"], y=group["y"], mode="markers+text",
            text=[plot_text(lab) if k in ("head", "embed", "logits") else ""
                  for lab, k in zip(group["label"], group["kind"])],
            textposition="top center", textfont={"size": pt(TICK_PT - 2)},
            marker={"size": [4 if k == "kv" else 7 for k in group["kind"]],
                    "symbol": [symbol.get(k, "circle") for k in group["kind"]],
                    "color": colour, "line": {"width": 0.4, "color": INK}},
            name=plot_text(key.replace("_", " ")), hovertext=group["node"],
            hovertemplate="%{hovertext}<extra></extra>"))
    note = (f"the {params['n_drawn']} strongest of {params['n_edges']:,} edges"
            if params["n_drawn"] < params["n_edges"] else f"{params['n_edges']} edges")
    fig.add_annotation(text=plot_text(f"{params['method']} {params['task']}: {note}; width = "
                                      "|edge score|"), xref="paper", yref="paper", x=1, y=0,
                       xanchor="right", yanchor="bottom", showarrow=False,
                       font={"size": pt(TICK_PT - 1)})
    fig.update_xaxes(title_text="layer")
    kv_rows = nodes.loc[nodes["kind"] == "kv", "y"]
    low = float(kv_rows.min()) - 0.6 if len(kv_rows) else -0.8
    fig.update_yaxes(title_text="head (MLPs in the top row, key/value inputs below)",
                     range=[low, params["n_heads"] + 0.6],
                     tickvals=list(range(params["n_heads"])))
    return fig


def run_classes(source: RunSource) -> dict[tuple[int, int], str] | None:
    """``(layer, head) -> class`` from the run's ``ioi_classes`` table (``ioi_class`` rows), or
    None when the run has none."""
    if "ioi_classes" not in source.run.tables():
        return None
    rows = source.records("ioi_classes", "ioi_class")
    rows = rows[rows["layer"].notna() & rows["head"].notna()]
    return {(int(r.layer), int(r.head)): str(r.condition) for r in rows.itertuples()} or None


@register_figure_set("edge_faithfulness_curve", covers=(
    "faithfulness_normalised", "faithfulness_normalised_low", "faithfulness_normalised_high",
    "n_edges_requested", "on_grid", "faithfulness_random", "faithfulness_random_draw",
    "chosen_size", "chosen_faithfulness", "chosen_random_draw", "chosen_random_mean", "target",
    "reached", "search_ranking", "size_for_target", "forwards_curves", "forwards_random",
    "forwards_search"))
def edge_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Per (method, task): the size-faithfulness curve and the chosen edge circuit."""
    cols = ["probe", "metric", "layer", "head", "segment", "condition", "value"]
    rows = source.run.read_table(table, columns=cols).to_pandas()
    tables = source.run.tables()
    other = source.run.read_table("faithfulness", columns=cols).to_pandas() \
        if "faithfulness" in tables else None
    members = source.run.read_table("circuits", columns=cols).to_pandas() \
        if "circuits" in tables else None
    n_heads = source.n_heads or 1
    n_kv = source.manifest.get("model", {}).get("n_key_value_heads") or n_heads
    classes = run_classes(source)
    plots = []
    pairs = rows[rows["metric"] == "faithfulness_normalised"][["probe", "segment"]]
    for method, task in pairs.drop_duplicates().itertuples(index=False):
        plots.append(edge_curve_plot(rows, method, task, other=other, table=table))
        if members is not None and ((members["probe"] == method) &
                                    (members["segment"] == task) &
                                    (members["metric"] == "edge_member")).any():
            plots.append(edge_circuit_plot(members, method, task, n_heads=n_heads, n_kv=n_kv,
                                           classes=classes))
    return plots
