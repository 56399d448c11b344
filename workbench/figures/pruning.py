"""Figures of head importance, pruning curves and learned head gates (``workbench heads`` runs;
tables in :mod:`pruning.run`). Torch-free: the app draws them from parquet.

* :func:`pruning_curve`: the metric against the fraction of heads removed, importance order as a
  line, random orders as their mean (dashed) and min-max band, and the tolerance line.
* :func:`gate_frontier`: learned gates' held-out metric against the number of open heads, one
  point per lambda, with the unmodified model's value.
* The registered figure sets add layer x head heatmaps of importance and of each lambda's gates.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.grid import head_heatmap
from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set
from workbench.figures.shapes import parse_sweep, select
from workbench.figures.style import (LINE_PX, Width, axis_title, base_figure, categorical,
                                     translucent)


def _swept(df: pd.DataFrame, name: str) -> pd.Series:
    """The number of ``condition`` = ``name=<number>`` rows (NaN for other rows)."""
    return df["condition"].map(lambda c: (parse_sweep(c) or (None, np.nan))[1]
                               if (parse_sweep(c) or ("",))[0] == name else np.nan)


def pruning_curve(records, metric: str, *, tolerance: float = 0.05,
                  higher_is_better: bool | None = None, label: str | None = None,
                  unit: str | None = None, table: str | None = None,
                  name: str | None = None) -> Plot:
    """``mean_<metric>`` rows (``condition`` ``pruned=<fraction>``, ``segment`` the order) as a
    pruning curve. ``higher_is_better`` defaults to True for ``logit_diff``.

    Data columns: fraction, order (``importance`` / ``random``), mean, lo, hi, n (orders).

    Raises:
        ValueError: no ``pruned=`` rows of ``metric``.
    """
    df = select(records, metric, None, need=("condition", "segment"))
    df = df.assign(fraction=_swept(df, "pruned")).dropna(subset=["fraction"])
    if df.empty:
        raise ValueError(f"metric {metric!r}: no condition of the form pruned=<fraction>")
    df = df.assign(order=np.where(df["segment"].str.startswith("random"), "random",
                                  df["segment"]))
    data = (df.groupby(["order", "fraction"])["value"]
            .agg(mean="mean", lo="min", hi="max", n="count").reset_index())
    base = float(data[(data["fraction"] == 0)]["mean"].iloc[0])
    better = metric.endswith("logit_diff") if higher_is_better is None else higher_is_better
    params = {"metric": metric, "label": label or metric, "unit": unit, "base": base,
              "tolerance": tolerance, "higher_is_better": bool(better),
              "band": "min-max over the random orders (seeds)",
              "threshold": base * (1 - tolerance if better else 1 + tolerance) if base >= 0
              else base * (1 + tolerance if better else 1 - tolerance)}
    return Plot("pruning_curve", name or safe_name(table, "pruning_curve", metric), data, params)


@drawer("pruning_curve")
def draw_pruning_curve(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.66 if width == "single" else 0.38, showlegend=True)
    rand = data[data["order"] == "random"].sort_values("fraction")
    if len(rand):
        x = rand["fraction"].to_numpy()
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]),
                                 y=np.concatenate([rand["hi"], rand["lo"].to_numpy()[::-1]]),
                                 fill="toself", fillcolor=translucent(categorical(1)),
                                 line={"width": 0}, hoverinfo="skip", mode="lines",
                                 name=_orders(int(rand["n"].max()))))
        fig.add_trace(go.Scatter(x=x, y=rand["mean"], mode="lines", name="random mean",
                                 line={"color": categorical(1), "width": 1, "dash": "dash"}))
    imp = data[data["order"] == "importance"].sort_values("fraction")
    fig.add_trace(go.Scatter(x=imp["fraction"], y=imp["mean"], mode="lines+markers",
                             name="importance order", marker={"size": 4},
                             line={"color": categorical(0), "width": 1.25},
                             hovertemplate="%{x:.0%} removed: %{y:.4g}<extra></extra>"))
    fig.add_hline(y=params["threshold"], line={"color": "#777777", "width": LINE_PX,
                                               "dash": "dot"})
    fig.update_xaxes(title_text="heads removed (fraction)", tickformat=".0%",
                     range=[-0.02, 1.02], tickvals=[0, 0.25, 0.5, 0.75, 1])  # 100 % shown
    fig.update_yaxes(title_text=axis_title(params["label"], params["unit"],
                                           room_px=fig.layout.height - 70))
    return fig


def _orders(n: int) -> str:
    """The random band's legend entry: its number of orders, singular for one."""
    return f"random (min-max of {n} orders)" if n > 1 else "random (1 order)"


def gate_frontier(records, metric: str, *, label: str | None = None, unit: str | None = None,
                  table: str | None = None, name: str | None = None) -> Plot:
    """Learned gates per lambda: ``open_gates`` against ``mean_<metric>`` on held-out prompts
    (``records`` hold both metrics, ``condition`` ``lambda=<value>``; ``baseline`` the model).

    Data columns: lam, open_gates, value.

    Raises:
        ValueError: no ``lambda=`` rows of ``open_gates`` or ``metric``.
    """
    df = records[records["layer"].isna() & records["prompt_id"].isna()]
    df = df.assign(lam=_swept(df, "lambda"))
    wide = df.dropna(subset=["lam"]).pivot_table(index="lam", columns="metric", values="value")
    if wide.empty or "open_gates" not in wide or metric not in wide:
        raise ValueError(f"no lambda=<value> rows of open_gates and {metric!r}")
    data = pd.DataFrame({"lam": wide.index.to_numpy(), "open_gates": wide["open_gates"].to_numpy(),
                         "value": wide[metric].to_numpy()})
    base = df[(df["metric"] == metric) & (df["condition"] == "baseline")]["value"]
    params = {"metric": metric, "label": label or metric, "unit": unit,
              "base": float(base.iloc[0]) if len(base) else None,
              "n_heads": int(records[records["metric"] == "gate"][["layer", "head"]]
                             .drop_duplicates().shape[0]) or None}
    return Plot("gate_frontier", name or safe_name(table, "gate_frontier", metric), data, params)


@drawer("gate_frontier")
def draw_gate_frontier(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.66 if width == "single" else 0.38, showlegend=True)
    data = data.sort_values("open_gates")
    fig.add_trace(go.Scatter(x=data["open_gates"], y=data["value"], mode="lines+markers+text",
                             text=[f"λ={v:g}" for v in data["lam"]], textposition="top right",
                             textfont={"size": 8}, name="learned gates (held-out)",
                             marker={"size": 5, "color": categorical(0)},
                             line={"color": categorical(0), "width": 1},
                             hovertemplate="%{x} open heads: %{y:.4g}<extra></extra>"))
    if params.get("base") is not None:
        fig.add_hline(y=params["base"], line={"color": "#777777", "width": LINE_PX,
                                              "dash": "dot"})
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name="all heads",
                                 line={"color": "#777777", "width": LINE_PX, "dash": "dot"}))
    fig.update_xaxes(title_text="open heads (gate > 0)",
                     range=[0, params["n_heads"] * 1.05] if params.get("n_heads") else None)
    fig.update_yaxes(title_text=axis_title(params["label"], params["unit"],
                                           room_px=fig.layout.height - 70))
    return fig


def _objective_metric(source: RunSource) -> str:
    return (source.manifest.get("heads") or {}).get("metric", "lm_loss")


@register_figure_set("pruning_curve", covers=("lm_loss", "logit_diff", "mean_lm_loss",
                                              "mean_logit_diff", "degradation",
                                              "removable_fraction"))
def pruning_curve_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """The pruning curve of the run's metric (importance order against the random band)."""
    metric = f"mean_{_objective_metric(source)}"
    tolerance = (source.manifest.get("heads") or {}).get("tolerance", 0.05)
    return [pruning_curve(source.records(table, metric), metric, tolerance=tolerance,
                          **source.labels(table, metric))]


@register_figure_set("learned_gates", covers=("gate", "log_alpha", "open_gates",
                                              "expected_open_gates", "train_loss", "lm_loss",
                                              "logit_diff", "mean_lm_loss", "mean_logit_diff",
                                              "degradation"))
def learned_gates_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """The sparsity / held-out metric frontier and a layer x head heatmap of each lambda's gates."""
    metric = f"mean_{_objective_metric(source)}"
    summary = pd.concat([source.records(table, m) for m in ("open_gates", metric, "gate")])
    plots = [gate_frontier(summary, metric, **source.labels(table, metric))]
    gates = source.records(table, "gate")
    for cond in sorted(gates["condition"].dropna().unique())[:options.max_variants]:
        plots.append(head_heatmap(gates, "gate", where={"condition": cond}, scale="sequential",
                                  **source.grid(), **source.labels(table, "gate")))
    return plots


@register_figure_set("head_importance", covers=("gate_gradient", "importance", "importance_norm",
                                                "lm_loss", "logit_diff"))
def head_importance_figures(source: RunSource, table: str, options: FigureOptions
                            ) -> list[Plot]:
    """Layer x head heatmaps of the raw and the layer-normalised importance."""
    return [head_heatmap(source.records(table, m), m, scale="sequential", **source.grid(),
                         **source.labels(table, m)) for m in ("importance", "importance_norm")]
