"""Heatmaps as vector cells for print: every finite cell becomes one filled rectangle.

Plotly.js draws a ``Heatmap`` trace as one bitmap (an ``<image>`` in SVG, an image XObject in PDF),
which blurs or pixelates when a figure is scaled in print. :func:`vector_cells` redraws each heatmap
of a figure as layout shapes (one ``rect`` per finite cell, filled with the colour the heatmap would
give it; above :data:`MAX_CELL_SHAPES` cells, one ``path`` per 8-bit colour holding the rectangles
of its cells, which plotly.js lays out much faster), plus an invisible marker trace carrying the
same colour bar and a text trace for cell labels (``texttemplate``). The screen figure (the app)
keeps its heatmap trace, which hovers and selects; :func:`workbench.figures.export.render`
applies this to every exported figure.
"""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale, unlabel_rgb

from workbench.figures.style import INK

SEAM_PX = 0.6  # outline in the cell's own colour: no hairline seams between touching cells
MAX_CELL_SHAPES = 1500  # above this, cells of one 8-bit colour share one path shape (speed)
_NUMBER_FORMAT = re.compile(r"^%\{z(?::([^}]*))?\}$")


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around sorted centres: midpoints, the ends extended by half a step."""
    if len(centres) == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def _positions(values, n: int) -> tuple[np.ndarray, list | None]:
    """Numeric cell centres for one axis, and the category names when the axis is categorical."""
    if values is None:
        return np.arange(n, dtype=float), None
    values = list(values)
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return np.asarray(values, dtype=float), None
    return np.arange(len(values), dtype=float), [str(v) for v in values]


def _text(template: str | None, z: float, text: str | None = None) -> str:
    if template == "%{text}":
        return text or ""
    match = _NUMBER_FORMAT.match(template or "")
    if not match:
        return ""
    spec = match.group(1) or ".3g"
    return format(z, spec)


def _cell(text, row: int, col: int) -> str | None:
    try:
        return str(text[row][col])
    except (TypeError, IndexError, KeyError):
        return None


def _ink_for(colour: str) -> str:
    r, g, b = unlabel_rgb(colour)[:3]
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 140 else INK


def _grouped(rows, cols, colours, x_edges, y_edges, xref: str, yref: str) -> list[dict]:
    """One ``path`` shape per 8-bit colour, each a union of its cells' rectangles (a large grid:
    plotly.js lays out thousands of shapes slowly; 8-bit colour is all a PNG or screen shows)."""
    groups: dict[str, list[str]] = {}
    for r, c, colour in zip(rows, cols, colours):
        rgb = "rgb({}, {}, {})".format(*(round(float(v)) for v in unlabel_rgb(colour)[:3]))
        x0, x1, y0, y1 = x_edges[c], x_edges[c + 1], y_edges[r], y_edges[r + 1]
        groups.setdefault(rgb, []).append(f"M{x0:.6g},{y0:.6g}H{x1:.6g}V{y1:.6g}H{x0:.6g}Z")
    return [{"type": "path", "xref": xref, "yref": yref, "layer": "below", "path": "".join(parts),
             "fillcolor": rgb, "line": {"width": SEAM_PX, "color": rgb}}
            for rgb, parts in sorted(groups.items())]


def _axis_name(ref: str, axis: str) -> str:
    return f"{axis}axis{ref[1:]}"


def _cells(trace: go.Heatmap) -> tuple[list[dict], go.Scatter | None, go.Scatter, dict]:
    """Shapes, text trace, colour-bar trace and axis updates for one heatmap trace."""
    z = np.asarray(trace.z, dtype=float)
    xs, x_names = _positions(trace.x, z.shape[1])
    ys, y_names = _positions(trace.y, z.shape[0])
    x_edges, y_edges = _edges(xs), _edges(ys)
    finite = z[np.isfinite(z)]
    lo = float(trace.zmin) if trace.zmin is not None else float(finite.min(initial=0.0))
    hi = float(trace.zmax) if trace.zmax is not None else float(finite.max(initial=1.0))
    rows, cols = np.nonzero(np.isfinite(z))
    values = z[rows, cols]
    where = np.clip((values - lo) / ((hi - lo) or 1.0), 0.0, 1.0)
    scale = [[float(at), colour] for at, colour in trace.colorscale]
    colours = sample_colorscale(scale, where.tolist()) if len(values) else []
    xref, yref = trace.xaxis or "x", trace.yaxis or "y"
    if len(values) <= MAX_CELL_SHAPES:
        shapes = [{"type": "rect", "xref": xref, "yref": yref, "layer": "below",
                   "x0": float(x_edges[c]), "x1": float(x_edges[c + 1]),
                   "y0": float(y_edges[r]), "y1": float(y_edges[r + 1]), "fillcolor": colour,
                   "line": {"width": SEAM_PX, "color": colour}}
                  for r, c, colour in zip(rows, cols, colours)]
    else:
        shapes = _grouped(rows, cols, colours, x_edges, y_edges, xref, yref)
    text = None
    if trace.texttemplate and len(values):
        text = go.Scatter(x=xs[cols], y=ys[rows], mode="text", hoverinfo="skip",
                          xaxis=xref, yaxis=yref, showlegend=False,
                          text=[_text(trace.texttemplate, v, _cell(trace.text, r, c))
                                for v, r, c in zip(values, rows, cols)],
                          textfont={**(trace.textfont.to_plotly_json() if trace.textfont else {}),
                                    "color": [_ink_for(c) for c in colours]})
    bar = go.Scatter(x=[None], y=[None], mode="markers", hoverinfo="skip", showlegend=False,
                     xaxis=xref, yaxis=yref,
                     marker={"colorscale": trace.colorscale, "cmin": lo, "cmax": hi,
                             "color": [lo], "showscale": trace.showscale is not False,
                             "colorbar": trace.colorbar.to_plotly_json()})
    axes = {}
    for ref, axis, edges, names in ((xref, "x", x_edges, x_names), (yref, "y", y_edges, y_names)):
        update = {"range": [float(edges[0]), float(edges[-1])], "type": "linear"}
        if names is not None:
            update.update(tickmode="array", tickvals=list(range(len(names))), ticktext=names)
        axes[_axis_name(ref, axis)] = update
    return shapes, text, bar, axes


def vector_cells(fig: go.Figure) -> go.Figure:
    """A copy of ``fig`` whose heatmap traces are drawn as one rectangle per finite cell (see the
    module docstring); figures without heatmaps come back unchanged (a copy)."""
    out = go.Figure(fig)
    if not any(t.type == "heatmap" for t in out.data):
        return out
    traces, shapes = [], list(out.layout.shapes or ())
    for trace in out.data:
        if trace.type != "heatmap":
            traces.append(trace)
            continue
        cells, text, bar, axes = _cells(trace)
        shapes += cells
        traces += [t for t in (text, bar) if t is not None]
        for name, update in axes.items():
            axis = out.layout[name]
            if axis.autorange == "reversed":
                update["range"] = update["range"][::-1]
            axis.update(autorange=False, **update)
    out.data = ()
    for trace in traces:
        out.add_trace(trace)
    out.layout.shapes = shapes
    return out
