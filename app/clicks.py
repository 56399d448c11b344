"""Clickable figures on screen: Streamlit's chart selection reports the clicked points of scatter
traces only (a click on a plotly heatmap cell selects nothing: streamlit/streamlit#8760), and plotly
fades every unselected point to 20 % opacity once one is selected.

:func:`clickable` lays an invisible square marker over every cell of each heatmap trace, carrying
the heatmap's hover text, so a click on a cell selects a point with the cell's ``x`` and ``y``;
:func:`no_fading` keeps every trace at full opacity whatever is selected. Both only change the
on-screen figure (the downloads are drawn from the :class:`~workbench.figures.Plot` again).
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go

OVERLAY_NAME = "click-cells"  # the overlay traces' name (tests find them by it)


def _hover(template: str | None) -> str:
    """The heatmap's hover template rewritten for the overlay's points: ``%{z...}`` reads
    ``customdata[0]`` and the heatmap's own ``%{customdata...}`` reads ``customdata[1]``."""
    text = template or "x %{x}, y %{y}: %{z:.4g}<extra></extra>"
    text = re.sub(r"%\{customdata(\[\d+\])?", "%{customdata[1]", text)
    return re.sub(r"%\{z", "%{customdata[0]", text)


def _cell_px(fig: go.Figure, trace: go.Heatmap, nx: int, ny: int) -> float:
    """About one cell's size on screen in pixels (the marker size that covers it)."""
    layout = fig.layout
    width, height = layout.width or 700, layout.height or 450
    margin = layout.margin
    plot_w = width - (margin.l or 80) - (margin.r or 80)
    plot_h = height - (margin.t or 100) - (margin.b or 80)
    xaxis = layout[f"xaxis{(trace.xaxis or 'x')[1:]}"]
    yaxis = layout[f"yaxis{(trace.yaxis or 'y')[1:]}"]
    fx = (xaxis.domain[1] - xaxis.domain[0]) if xaxis.domain else 1
    fy = (yaxis.domain[1] - yaxis.domain[0]) if yaxis.domain else 1
    return float(max(4.0, min(plot_w * fx / max(nx, 1), plot_h * fy / max(ny, 1))))


def _keep_range(fig: go.Figure, axis_id: str, values: np.ndarray) -> None:
    """Pin an axis to its cells' extent (half a cell beyond the first and last), as the heatmap
    alone draws it; a range already set, or a reversed axis, is respected."""
    name = ("xaxis" if axis_id.startswith("x") else "yaxis") + axis_id[1:]
    axis = fig.layout[name]
    if axis.range is not None or not len(values):
        return
    lo, hi = float(np.min(values)) - 0.5, float(np.max(values)) + 0.5
    axis.range = [hi, lo] if axis.autorange == "reversed" else [lo, hi]


def clickable(fig: go.Figure) -> go.Figure:
    """``fig`` with an invisible, selectable square marker on every finite cell of each heatmap
    trace (same axes, same hover text); the heatmaps themselves stop answering hovers. Heatmaps
    without numeric ``x``/``y`` (categorical token axes) are left alone."""
    overlays = []
    for trace in fig.data:
        if not isinstance(trace, go.Heatmap) or trace.z is None:
            continue
        z = np.asarray(trace.z, dtype=float)
        if z.ndim != 2:
            continue
        ny, nx = z.shape
        try:
            xs = np.asarray(trace.x if trace.x is not None else range(nx), dtype=float)
            ys = np.asarray(trace.y if trace.y is not None else range(ny), dtype=float)
        except (TypeError, ValueError):
            continue
        cd = (np.asarray(trace.customdata, dtype=object) if trace.customdata is not None
              else np.full(z.shape, "", dtype=object))
        iy, ix = np.nonzero(np.isfinite(z))
        if not len(ix):
            continue
        size = _cell_px(fig, trace, nx, ny)
        _keep_range(fig, trace.xaxis or "x", xs)  # the markers must not widen the axes
        _keep_range(fig, trace.yaxis or "y", ys)
        overlays.append(go.Scatter(
            x=xs[ix], y=ys[iy], mode="markers", name=OVERLAY_NAME, showlegend=False,
            xaxis=trace.xaxis, yaxis=trace.yaxis,
            customdata=np.stack([z[iy, ix].astype(object), cd[iy, ix]], axis=-1),
            hovertemplate=_hover(trace.hovertemplate),
            marker={"symbol": "square", "size": size, "opacity": 0.01, "color": "white"},
            selected={"marker": {"opacity": 0.01}}, unselected={"marker": {"opacity": 0.01}}))
        trace.hoverinfo = "skip"
        trace.hovertemplate = None
    for overlay in overlays:
        fig.add_trace(overlay)
    return fig


def no_fading(fig: go.Figure) -> go.Figure:
    """Selected and unselected points of every scatter trace keep their own opacity (plotly's
    default fades the unselected ones to near white)."""
    for trace in fig.data:
        if isinstance(trace, go.Scatter) and trace.name != OVERLAY_NAME:
            opacity = trace.marker.opacity if trace.marker and trace.marker.opacity is not None \
                else 1
            if isinstance(opacity, (int, float)):
                trace.selected = {"marker": {"opacity": opacity}}
                trace.unselected = {"marker": {"opacity": opacity}}
    return fig


def highlight(fig: go.Figure, layer: int, head: int, xy: tuple[str, str] = ("layer", "head"),
              axes: list[tuple[str, str]] | None = None) -> go.Figure:
    """``fig`` with the chosen head outlined (a black square with a white rim) on every panel
    ``axes`` (pairs of axis ids such as ``("x2", "y2")``; default: the first panel)."""
    coords = {"layer": layer, "head": head}
    size = _cell_size(fig)
    for xaxis, yaxis in axes or [("x", "y")]:
        fig.add_trace(go.Scatter(
            x=[coords[xy[0]]], y=[coords[xy[1]]], mode="markers", xaxis=xaxis, yaxis=yaxis,
            hoverinfo="skip", showlegend=False, name="chosen head",
            marker={"symbol": "square-open", "size": size, "color": "black",
                    "line": {"width": 2.5, "color": "black"}}))
    return fig


def _cell_size(fig: go.Figure) -> float:
    """The outline's size in pixels: a cell's (the first scatter's square markers, else a
    heatmap cell), from 8 to 30."""
    for trace in fig.data:
        if isinstance(trace, go.Scatter) and trace.marker is not None \
                and isinstance(trace.marker.size, (int, float)):
            return float(np.clip(trace.marker.size, 8, 30))
    return 14.0
