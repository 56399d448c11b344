"""One figure style for every workbench figure: print sizes, fonts, palettes, axis titles.

Sizes are in CSS pixels at 96 per inch, which is how kaleido lays out SVG and PDF pages: a
single-column figure is 3.5 in wide (336 px), a double-column one 7.16 in (687 px). Font sizes are
given in points and converted, so 8 pt text stays 8 pt when the figure is placed at its nominal
width. Palettes are colour-blind safe: viridis (sequential), ColorBrewer RdBu reversed (diverging,
centred on zero), Okabe-Ito (categorical).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale

from workbench.figures.checks import NOISE_REL

Width = Literal["single", "double"]
PX_PER_IN = 96
PX_PER_PT = PX_PER_IN / 72
WIDTHS_IN: dict[str, float] = {"single": 3.5, "double": 7.16}
FONT_PT = 8  # axis titles, colourbar titles, legend
TICK_PT = 7  # tick labels, annotations
FONT_FAMILY = "Liberation Sans, Arial, Helvetica, DejaVu Sans, sans-serif"
INK = "#222222"
LINE_PX = 0.75
CHAR_EM = 0.55  # mean character width of the sans-serif fonts, in em

SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"  # blue negative, white zero, red positive
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
             "#000000")
BAND_ALPHA = 0.22


def pt(points: float) -> float:
    """Points to CSS pixels (plotly's font unit)."""
    return round(points * PX_PER_PT, 2)


def width_px(width: Width) -> int:
    """Figure width in CSS pixels for a column width.

    Raises:
        ValueError: ``width`` is neither ``"single"`` nor ``"double"``.
    """
    if width not in WIDTHS_IN:
        raise ValueError(f"width {width!r} is not one of {sorted(WIDTHS_IN)}")
    return round(WIDTHS_IN[width] * PX_PER_IN)


def size(width: Width, aspect: float, *, min_height: int = 150) -> dict[str, int]:
    """``{"width", "height"}`` in pixels: height = aspect x width (at least ``min_height``)."""
    w = width_px(width)
    return {"width": w, "height": max(min_height, round(w * aspect))}


def plot_text(text: object) -> str:
    """``text`` as plotly draws it literally: plotly.js reads ``<br>``, ``<b>``, ``<a href>`` ...
    in titles, tick labels and hover text as markup, so ``&``, ``<`` and ``>`` become entities
    (which it turns back into the characters). Use it on every string that comes from data
    (metric names, units, tokens, task names)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


MAX_TITLE_LINES = 3


def short_unit(unit: str | None) -> str | None:
    """A unit as a title shows it: the part before the first ``"; "`` (what follows is a sign
    convention or a note, kept in the sidecar's params): ``"fraction of the LD gap; positive =
    the head carries the task"`` -> ``"fraction of the LD gap"``."""
    return unit.split("; ")[0].strip() if unit else unit


def wrap(text: str, room_px: float | None, *, max_lines: int = MAX_TITLE_LINES) -> list[str]:
    """``text`` broken at spaces into lines that fit ``room_px`` pixels at the title font (one
    line when ``room_px`` is None); a word longer than a line stays whole; beyond ``max_lines``
    the last line ends in an ellipsis."""
    if not room_px:
        return [text]
    width = max(8, int(room_px / (pt(FONT_PT) * CHAR_EM)))
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:max(1, width - 1)].rstrip() + "\u2026"
    return lines


def _fits(text: str, room_px: float | None) -> bool:
    return not room_px or len(text) * pt(FONT_PT) * CHAR_EM <= room_px


def _wrapped(label: str, unit: str | None, room_px: float | None,
             max_lines: int = MAX_TITLE_LINES) -> str:
    unit = short_unit(unit)
    lines = wrap(label, room_px, max_lines=2 if unit else max_lines)
    if unit:
        lines += wrap(f"({unit})", room_px, max_lines=max(1, max_lines - len(lines)))
    return "<br>".join(plot_text(line) for line in lines)


def axis_title(label: str, unit: str | None = None, *, room_px: float | None = None) -> str:
    """``"entropy (nats)"``; just the label when there is no unit. When the title would not fit
    in ``room_px`` pixels (the axis length), the unit goes on a second line, shortened to its
    first clause (:func:`short_unit`), and long lines are wrapped (at most 3 lines, see
    :func:`wrap`). Label and unit are drawn literally (see :func:`plot_text`)."""
    full = f"{label} ({unit})" if unit else label
    return plot_text(full) if _fits(full, room_px) else _wrapped(label, unit, room_px)


def colorbar_title(label: str, unit: str | None = None, *, room_px: float | None = None) -> str:
    """A colourbar title: the unit on a second line (the bar is narrow); with ``room_px`` (the
    bar's length) the unit is shortened and every line wrapped to fit, at most 4 lines, so a long
    unit is never clipped (see :func:`axis_title`)."""
    if unit and _fits(label, room_px) and _fits(f"({unit})", room_px):
        return f"{plot_text(label)}<br>({plot_text(unit)})"
    return _wrapped(label, unit, room_px, max_lines=MAX_TITLE_LINES + 1)


def bar_room(fig: go.Figure) -> float:
    """Pixels along a colour bar (the plot area's height): the room its title may take."""
    return max(40.0, (fig.layout.height or 500) - 50)


def colour_scale(values: np.ndarray, scale: str = "auto", *, from_zero: bool = False) -> dict:
    """Colour-scale settings for a heatmap or marker colour over ``values``.

    ``scale="auto"`` picks the diverging palette, centred on zero with a symmetric range, when the
    values have both signs, else the sequential palette; ``"sequential"`` / ``"diverging"`` force
    one; ``from_zero`` starts a sequential range at 0 (fractions such as attention weights).
    Values constant up to float noise (``checks.NOISE_REL``) get one colour (a range padded by
    half the value), never a colour bar magnifying rounding error.
    Returns ``colorscale``, ``zmid`` (diverging only), ``zmin`` and ``zmax`` (NaN ignored).
    """
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    lo = min(lo, 0.0) if from_zero else lo
    if scale == "auto":
        scale = "diverging" if lo < 0 < hi else "sequential"
    if scale == "diverging":
        bound = max(abs(lo), abs(hi)) or 1.0
        return {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -bound, "zmax": bound}
    if scale != "sequential":
        raise ValueError(f"scale {scale!r} is not one of auto, sequential, diverging")
    if hi - lo <= NOISE_REL * max(abs(lo), abs(hi), 1e-300):  # constant up to float noise
        pad = abs(lo) / 2 or 0.5
        lo, hi = lo - pad, hi + pad
    return {"colorscale": SEQUENTIAL, "zmin": lo, "zmax": hi}


def sequential_colours(n: int) -> list[str]:
    """``n`` colours along the sequential palette (e.g. one per layer), as ``rgb(...)`` strings."""
    return sample_colorscale(SEQUENTIAL, [i / max(n - 1, 1) for i in range(n)])


def layer_ticks(n_layers: int) -> dict:
    """Axis settings for a layer axis: every layer labelled when there are few."""
    return {"dtick": 1} if n_layers <= 12 else {}


def categorical(i: int) -> str:
    """The i-th categorical colour (Okabe-Ito, cycling)."""
    return OKABE_ITO[i % len(OKABE_ITO)]


def translucent(colour: str, alpha: float = BAND_ALPHA) -> str:
    """``"#0072B2"`` or ``"rgb(r, g, b)"`` -> ``"rgba(r, g, b, alpha)"``."""
    if colour.startswith("#"):
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (int(float(x)) for x in colour[colour.index("(") + 1:-1].split(",")[:3])
    return f"rgba({r}, {g}, {b}, {alpha})"


def colorbar(title: str) -> dict:
    """A thin colourbar with the title along its right side."""
    return {"title": {"text": title, "side": "right", "font": {"size": pt(FONT_PT)}},
            "thickness": 8, "outlinewidth": 0, "ticks": "outside", "ticklen": 2,
            "tickwidth": LINE_PX, "tickfont": {"size": pt(TICK_PT)}, "xpad": 4, "ypad": 0}


def _axis() -> dict:
    return {"showline": True, "linecolor": INK, "linewidth": LINE_PX, "mirror": False,
            "ticks": "outside", "ticklen": 3, "tickwidth": LINE_PX, "tickcolor": INK,
            "tickfont": {"size": pt(TICK_PT)}, "title": {"font": {"size": pt(FONT_PT)},
                                                          "standoff": 4},
            "showgrid": False, "zeroline": False, "automargin": True, "nticks": 8}


def _template() -> go.layout.Template:
    layout = go.Layout(
        font={"family": FONT_FAMILY, "size": pt(FONT_PT), "color": INK},
        paper_bgcolor="white", plot_bgcolor="white", colorway=list(OKABE_ITO),
        xaxis=_axis(), yaxis=_axis(), margin={"l": 8, "r": 8, "t": 8, "b": 8, "pad": 0},
        legend={"font": {"size": pt(TICK_PT)}, "bgcolor": "rgba(0,0,0,0)", "borderwidth": 0,
                "orientation": "h", "x": 0, "xanchor": "left", "y": 1.0, "yanchor": "bottom",
                "tracegroupgap": 0},
        hoverlabel={"font": {"family": FONT_FAMILY}}, showlegend=False,
    )
    return go.layout.Template(layout=layout)


TEMPLATE = _template()


def base_figure(width: Width, *, aspect: float | None = None, height: int | None = None,
                **layout) -> go.Figure:
    """An empty figure in the workbench template at a column width, ``height`` pixels tall (or
    ``aspect`` x the width)."""
    dims = size(width, aspect) if height is None else {"width": width_px(width), "height": height}
    fig = go.Figure(layout={"template": TEMPLATE, **dims})
    fig.update_layout(**layout)
    return fig
