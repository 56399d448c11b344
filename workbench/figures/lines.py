"""Line and bar figures: metric by depth, position profiles by depth, dose-response curves,
distributions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.shapes import (INTERVAL_LABELS, INTERVALS, group_mean, histogram,
                                      parse_sweep, qualifier, select, spread, unit_means)
from workbench.figures.style import (LINE_PX, SEQUENTIAL, Width, axis_title, base_figure,
                                     categorical, colorbar, layer_ticks, sequential_colours,
                                     translucent)

MAX_SERIES = 8  # dose-response curves drawn per head before pooling the heads


def by_depth(records, metric: str, *, where: dict | None = None, interval: str = "q10-q90",
             label: str | None = None, unit: str | None = None, table: str | None = None,
             name: str | None = None) -> Plot:
    """``metric`` by layer: the mean and an interval across heads and prompts.

    Each (layer, head, prompt) is first reduced to its mean over positions (a unit of spread;
    layer-level metrics have no head, aggregates no prompt); per layer the figure shows the mean
    of those units and the ``interval`` (see ``shapes.INTERVALS``) of their distribution. A
    layer-level summary (one value per layer: ``spread_over`` is empty) is drawn as a line
    without a band.

    Data columns: layer, mean, lo, hi, n (units of spread per layer).

    Raises:
        ValueError: no row of ``metric`` has a layer, or an unknown interval.
    """
    df = select(records, metric, where, need=("layer",))
    units = unit_means(df, ["layer", "head", "prompt_id"])
    data = spread(units, ["layer"], interval).astype({"layer": "int64"})
    spans = [c for c in ("head", "prompt_id") if c in df.columns and df[c].notna().any()]
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "interval": interval, "interval_means": INTERVALS[interval],
              "spread_over": spans}
    return Plot("by_depth", name or safe_name(table, "depth", metric, qualifier(where)), data,
                params)


def _band(x, lo, hi, colour: str, name: str) -> go.Scatter:
    return go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                      fill="toself", fillcolor=translucent(colour), line={"width": 0},
                      hoverinfo="skip", name=name, showlegend=True, mode="lines")


@drawer("by_depth")
def draw_by_depth(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    spread = bool(params["spread_over"]) and not (data["n"] <= 1).all()
    fig = base_figure(width, aspect=0.62 if width == "single" else 0.36, showlegend=spread)
    x = data["layer"].to_numpy()
    colour = categorical(0)
    spans = " x ".join("heads" if s == "head" else "prompts" if s == "prompt_id" else s
                       for s in params["spread_over"])
    if spread:
        fig.add_trace(_band(x, data["lo"].to_numpy(), data["hi"].to_numpy(), colour,
                            f"{INTERVAL_LABELS[params['interval']]} over {spans}"))
    fig.add_trace(go.Scatter(x=x, y=data["mean"], mode="lines+markers", name="mean",
                             line={"color": colour, "width": 1.25}, marker={"size": 3},
                             hovertemplate="layer %{x}: %{y:.4g}<extra></extra>"))
    fig.update_xaxes(title_text="layer", **layer_ticks(int(x.max()) + 1))
    fig.update_yaxes(title_text=_y_title(fig, params))
    return fig


PROFILE_SCALES = ("linear", "log", "no-key0")


def position_profile(records, metric: str, *, where: dict | None = None,
                     label: str | None = None, unit: str | None = None, n_layers: int | None = None,
                     scale: str = "linear", table: str | None = None, name: str | None = None
                     ) -> Plot:
    """``metric`` against key position, one curve per layer (colour = depth): per (layer,
    key_pos), the mean over heads, prompts and queries.

    Args:
        scale: ``linear``; ``log`` (log y axis, so the first token, which takes most of the
            attention, does not flatten the rest); ``no-key0`` (key position 0 left out of the
            data and the figure, a linear axis over the rest).

    Data columns: layer, key_pos, value, n_rows, n_prompts.

    Raises:
        ValueError: no row of ``metric`` has a layer and a key_pos, or an unknown ``scale``.
    """
    if scale not in PROFILE_SCALES:
        raise ValueError(f"profile scale {scale!r} is not one of {', '.join(PROFILE_SCALES)}")
    df = select(records, metric, where, need=("layer", "key_pos"))
    if scale == "no-key0":
        df = df[df["key_pos"] != 0]
        if df.empty:
            raise ValueError(f"metric {metric!r} has no key position other than 0")
    data = group_mean(df, ["layer", "key_pos"]).astype({"layer": "int64", "key_pos": "int64"})
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "n_layers": int(n_layers or data["layer"].max() + 1), "scale": scale,
              "aggregate": "mean over heads, prompts and queries"}
    suffix = "" if scale == "linear" else scale
    return Plot("position_profile", name or safe_name(table, "profile", metric, qualifier(where),
                                                      suffix), data, params)


@drawer("position_profile")
def draw_position_profile(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.7 if width == "single" else 0.4)
    n_layers = params["n_layers"]
    colours = sequential_colours(n_layers)
    for layer, rows in data.groupby("layer", sort=True):
        fig.add_trace(go.Scatter(x=rows["key_pos"], y=rows["value"], mode="lines",
                                 name=f"layer {layer}", line={"color": colours[layer],
                                                              "width": LINE_PX * 1.5},
                                 hovertemplate=f"layer {layer}, key %{{x}}: %{{y:.4g}}"
                                               "<extra></extra>"))
    # an invisible marker trace carries the depth colourbar
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip",
                             name="depth", marker={"colorscale": SEQUENTIAL, "cmin": 0,
                                                   "cmax": n_layers - 1, "color": [0],
                                                   "showscale": True,
                                                   "colorbar": colorbar("layer")}))
    scale = params.get("scale", "linear")
    fig.update_xaxes(title_text=axis_title("key position", "token, 0 left out" if
                                           scale == "no-key0" else "token"))
    fig.update_yaxes(title_text=_y_title(fig, params), type="log" if scale == "log" else "linear",
                     exponentformat="power" if scale == "log" else "B")
    return fig


def dose_response(records, metric: str, *, where: dict | None = None, interval: str = "ci95",
                  label: str | None = None, unit: str | None = None,
                  param_unit: str | None = None, log_x: bool = False, table: str | None = None,
                  name: str | None = None) -> Plot:
    """``metric`` against a swept parameter carried in ``condition`` (``"alpha=2"``): the mean and
    ``interval`` over prompts, one curve per head when at most 8 heads are present, else pooled.

    Rows whose condition is not ``name=number`` are left out; every kept row must sweep the same
    parameter.

    Data columns: series, x, mean, lo, hi, n.

    Raises:
        ValueError: no sweep rows, or more than one swept parameter.
    """
    df = select(records, metric, where, need=("condition",))
    sweep = df["condition"].map(parse_sweep)
    df = df[sweep.notna()]
    if df.empty:
        raise ValueError(f"metric {metric!r}: no condition of the form name=number")
    names = sorted({s[0] for s in sweep.dropna()})
    if len(names) != 1:
        raise ValueError(f"metric {metric!r} sweeps several parameters {names}; filter with where=")
    df = df.assign(x=sweep.dropna().map(lambda s: s[1]), series=_series(df))
    units = unit_means(df, ["series", "x", "prompt_id"])
    data = spread(units, ["series", "x"], interval)
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "param": names[0], "param_unit": param_unit, "interval": interval,
              "interval_means": INTERVALS[interval], "log_x": log_x}
    return Plot("dose_response", name or safe_name(table, "dose", metric,
                                                   qualifier(where)), data, params)


def _series(df: pd.DataFrame) -> pd.Series:
    if "head" in df.columns and df["head"].notna().all():
        heads = df["layer"].astype("int64").astype(str).radd("L") + df["head"].astype(
            "int64").astype(str).radd("H")
        if heads.nunique() <= MAX_SERIES:
            return heads
    return pd.Series("all", index=df.index)


@drawer("dose_response")
def draw_dose_response(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    series = list(dict.fromkeys(data["series"]))
    fig = base_figure(width, aspect=0.66 if width == "single" else 0.38,
                      showlegend=len(series) > 1)
    for i, (key, rows) in enumerate(data.groupby("series", sort=False)):
        mean = rows["mean"].to_numpy()
        fig.add_trace(go.Scatter(
            x=rows["x"], y=mean, name=key, mode="lines+markers",
            line={"color": categorical(i), "width": 1.25}, marker={"size": 4},
            error_y={"type": "data", "symmetric": False, "array": rows["hi"].to_numpy() - mean,
                     "arrayminus": mean - rows["lo"].to_numpy(), "thickness": LINE_PX,
                     "width": 2},
            hovertemplate=f"{key}, {params['param']}=%{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_xaxes(title_text=axis_title(params["param"], params["param_unit"]),
                     type="log" if params["log_x"] else "linear")
    fig.update_yaxes(title_text=_y_title(fig, params))
    return fig


def distribution(records, metric: str, *, over: str = "heads", where: dict | None = None,
                 bins: int | None = None, label: str | None = None, unit: str | None = None,
                 table: str | None = None, name: str | None = None) -> Plot:
    """Histogram of ``metric`` over heads (one value per (layer, head): the mean over prompts and
    positions) or over prompts (one value per prompt; restrict to a head with ``where``).

    Data columns: bin_start, bin_end, count.

    Raises:
        ValueError: ``over`` is not heads/prompts, or no matching rows.
    """
    keys = {"heads": ["layer", "head"], "prompts": ["prompt_id"]}
    if over not in keys:
        raise ValueError(f"over={over!r} is not one of {sorted(keys)}")
    df = select(records, metric, where, need=tuple(keys[over]))
    values = unit_means(df, keys[over])["value"].to_numpy()
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "over": over, "n_values": int(len(values)), "bins": bins,
              "value_means": ("mean over prompts and positions per (layer, head)" if over == "heads"
                              else "mean over heads and positions per prompt")}
    return Plot("distribution", name or safe_name(table, "hist", metric, over,
                                                  qualifier(where)),
                histogram(values, bins), params)


@drawer("distribution")
def draw_distribution(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.6 if width == "single" else 0.34, bargap=0)
    start, end = data["bin_start"].to_numpy(), data["bin_end"].to_numpy()
    fig.add_trace(go.Bar(x=(start + end) / 2, y=data["count"], width=end - start,
                         marker={"color": categorical(0), "line": {"width": 0.5,
                                                                   "color": "white"}},
                         hovertemplate="%{x:.3g}: %{y}<extra></extra>"))
    fig.update_xaxes(title_text=axis_title(params["label"], params["unit"],
                                           room_px=fig.layout.width - 70))
    fig.update_yaxes(title_text=f"number of {params['over']}")
    return fig


def _y_title(fig: go.Figure, params: dict) -> str:
    """The metric's axis title, wrapped when longer than the plot is tall."""
    return axis_title(params["label"], params["unit"], room_px=fig.layout.height - 70)
