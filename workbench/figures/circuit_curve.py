"""The faithfulness curve of faithfulness-sized circuits (``workbench circuits --select
faithfulness=F``; tables ``faithfulness_curve`` and ``circuit_search``, :mod:`circuits.sized`).

One figure per task: the normalised faithfulness ``(circuit - empty) / (model - empty)`` of the
ranking's prefixes against their size (log axis), one line per method; the random circuits of each
grid size as a band (min to max of the draws) with their mean dashed; the target as a dotted line;
each method's chosen circuit (after refinement) as a star. Torch-free: the app draws it too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set
from workbench.figures.style import (LINE_PX, Width, axis_title, base_figure, categorical,
                                     translucent)

_COLUMNS = ["probe", "metric", "segment", "condition", "value"]
SHORT = {"attribution_patching": "attribution", "activation_patching": "activation",
         "eap_ig_nodes": "EAP-IG"}
SEARCH_METRICS = (
    "target", "reached", "cap", "prefix_size", "prefix_faithfulness", "size",
    "faithfulness_normalised", "n_added", "n_removed", "evaluations_curve", "evaluations_search",
    "evaluations_random", "evaluations_refine", "forwards_refine", "refine_out_of_budget",
    "held_out_prompts",
    "held_out_faithfulness", "held_out_faithfulness_lo", "held_out_faithfulness_hi",
    "held_out_faithfulness_normalised", "held_out_faithfulness_normalised_lo",
    "held_out_faithfulness_normalised_hi", "held_out_random", "refine_step", "mlp_member",
    "mlp_score")


def _size(condition) -> float:
    head = str(condition).split(";", 1)[0]
    return float(head[5:]) if head.startswith("size=") else np.nan


def curve_plot(curve: pd.DataFrame, search: pd.DataFrame | None, task: str, *,
               table: str | None = "faithfulness_curve") -> Plot:
    """The faithfulness curve of one task (module docstring) from the two tables' records.

    Data columns: method, size, faithfulness, random_mean, random_lo, random_hi, n_random,
    chosen (True on the refined circuit's row, whose ``size`` is its node count).

    Raises:
        ValueError: no ``faithfulness_normalised`` rows for ``task``.
    """
    mine = curve[curve["segment"] == task].assign(size=lambda d: d["condition"].map(_size))
    f = mine[mine["metric"] == "faithfulness_normalised"]
    if f.empty:
        raise ValueError(f"no faithfulness_normalised rows for task {task!r}")
    rows, targets = [], {}
    for method, part in f.groupby("probe", sort=False):
        draws = mine[(mine["probe"] == method) & (mine["metric"] == "faithfulness_random_draw")]
        band = draws.groupby("size")["value"].agg(["mean", "min", "max", "count"])
        for r in part.sort_values("size").itertuples():
            b = band.loc[r.size] if r.size in band.index else None
            rows.append({"method": method, "size": r.size, "faithfulness": r.value,
                         "random_mean": np.nan if b is None else b["mean"],
                         "random_lo": np.nan if b is None else b["min"],
                         "random_hi": np.nan if b is None else b["max"],
                         "n_random": 0 if b is None else int(b["count"]), "chosen": False})
        if search is not None:
            s = search[(search["probe"] == method) & (search["segment"] == task)
                       & search["condition"].isna()].set_index("metric")["value"]
            if "size" in s:
                rows.append({"method": method, "size": float(s["size"]),
                             "faithfulness": float(s["faithfulness_normalised"]),
                             "random_mean": np.nan, "random_lo": np.nan, "random_hi": np.nan,
                             "n_random": 0, "chosen": True})
                targets[method] = float(s["target"])
    data = pd.DataFrame(rows).astype({"n_random": "int64", "chosen": bool})
    params = {"metric": "faithfulness_normalised", "task": task,
              "label": "normalised faithfulness", "unit": "(circuit - empty) / (model - empty)",
              "methods": list(dict.fromkeys(data["method"])),
              "target": max(targets.values()) if targets else None,
              "band": "min to max of random circuits of each size, dashed at their mean",
              "where": {"segment": task}}
    return Plot("faithfulness_curve", safe_name(table, "curve", task), data, params)


@drawer("faithfulness_curve")
def draw_faithfulness_curve(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.66 if width == "single" else 0.38, showlegend=True)
    curve = data[~data["chosen"]]
    band = curve.dropna(subset=["random_mean"]).drop_duplicates("size").sort_values("size")
    if len(band):
        x = band["size"].to_numpy()
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]),
                                 y=np.concatenate([band["random_hi"],
                                                   band["random_lo"].to_numpy()[::-1]]),
                                 fill="toself", fillcolor=translucent("#777777"),
                                 line={"width": 0}, hoverinfo="skip", mode="lines",
                                 name=f"random ({int(band['n_random'].max())} per size)"))
        fig.add_trace(go.Scatter(x=x, y=band["random_mean"], mode="lines", name="random mean",
                                 line={"color": "#777777", "width": 1, "dash": "dash"}))
    for j, method in enumerate(params["methods"]):
        part = curve[curve["method"] == method].sort_values("size")
        part = part[part["size"] > 0]
        fig.add_trace(go.Scatter(x=part["size"], y=part["faithfulness"], mode="lines+markers",
                                 name=SHORT.get(method, method) + " prefixes",
                                 marker={"size": 4, "color": categorical(j)},
                                 line={"color": categorical(j), "width": 1.25},
                                 hovertemplate="%{x} nodes: %{y:.3f}<extra></extra>"))
        chosen = data[data["chosen"] & (data["method"] == method)]
        if len(chosen):
            fig.add_trace(go.Scatter(x=chosen["size"], y=chosen["faithfulness"], mode="markers",
                                     name=f"chosen ({int(chosen['size'].iloc[0])} nodes)",
                                     marker={"size": 10, "symbol": "star",
                                             "color": categorical(j)}))
    if params.get("target") is not None:
        fig.add_hline(y=params["target"], line={"color": "#444444", "width": LINE_PX,
                                                "dash": "dot"})
    fig.update_xaxes(title_text="circuit size (nodes, log scale)", type="log")
    fig.update_yaxes(title_text=axis_title(params["label"], None, room_px=fig.layout.height - 70))
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0,
                              "font": {"size": 7}})
    return fig


@register_figure_set("faithfulness_curve", covers=(
    "faithfulness_normalised", "faithfulness_random_mean", "faithfulness_random_sd",
    "faithfulness_random_draw"))
def curve_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """One faithfulness curve per task (module docstring)."""
    curve = source.run.read_table(table, columns=_COLUMNS).to_pandas()
    search = (source.run.read_table("circuit_search", columns=_COLUMNS).to_pandas()
              if "circuit_search" in source.run.tables() else None)
    return [curve_plot(curve, search, task, table=table)
            for task in dict.fromkeys(curve["segment"])]


@register_figure_set("circuit_search", covers=SEARCH_METRICS)
def search_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Scalars of the search: drawn on the ``faithfulness_curve`` figures, nothing apart."""
    return []
