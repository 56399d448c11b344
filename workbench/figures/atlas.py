"""The atlas figure: one small layer x head panel per role, each head shaded by its score on the
role's own scale, the heads that hold the role outlined; cells are vector squares (print-sharp in
PDF and SVG).

The shade is the role's *strength* in [0, 1], a fixed transform of the score that does not depend on
how the other heads rank (a random model stays dark; ranks would give every role the same ~135
bright cells): ``of_ceiling`` roles score / ceiling (the pattern's best possible score); ``above``
and ``below`` roles on a [0, 1] scale the score itself or 1 - score (low entropy is strong);
otherwise (``top_k``, ``member``, unbounded scores) score / the largest |score| of the role. The
sidecar CSV keeps each head's score, rank, strength and label. Torch-free: it reads the
``atlas.parquet`` frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.plot import Plot, drawer
from workbench.figures.style import (SEQUENTIAL, TICK_PT, Width, colorbar, plot_text, pt,
                                     width_px)

HELD = "#e8175d"  # the outline of heads that hold a role (visible on dark and bright cells)


def atlas_grid(heads: pd.DataFrame, roles: list[dict], *, name: str = "atlas") -> Plot:
    """The atlas as a :class:`Plot` of kind ``atlas``.

    Args:
        heads: ``atlas.parquet`` (``layer``, ``head``, ``<role>_score``, ``<role>_rank``,
            ``<role>``).
        roles: ``atlas.json``'s roles (name, label, rule, threshold, ceiling); roles never
            measured (all scores NaN) are left out.

    Data columns: role, layer, head, score, rank, strength (:func:`strength`, in [0, 1]), held
    (the role label).

    Raises:
        ValueError: no role has a score.
    """
    rows = []
    for role in roles:
        name_ = role["name"]
        scores = heads[f"{name_}_score"]
        if scores.isna().all():
            continue
        rows.append(pd.DataFrame({
            "role": name_, "layer": heads["layer"].astype("int64"),
            "head": heads["head"].astype("int64"), "score": scores.astype("float64"),
            "rank": heads[f"{name_}_rank"].astype("float64"),
            "strength": strength(scores.astype("float64"), role),
            "held": heads[name_].astype(bool)}))
    if not rows:
        raise ValueError("the atlas has no measured role to draw")
    data = pd.concat(rows, ignore_index=True)
    labels = {r["name"]: r["label"] for r in roles}
    params = {"roles": list(dict.fromkeys(data["role"])),
              "labels": [labels[r] for r in dict.fromkeys(data["role"])],
              "n_layers": int(heads["layer"].max()) + 1, "n_heads": int(heads["head"].max()) + 1,
              "model": str(heads["model"].iloc[0]) if "model" in heads else ""}
    return Plot("atlas", name, data, params)


def strength(scores: pd.Series, role: dict) -> pd.Series:
    """A role's scores as shades in [0, 1] (NaN stays NaN), on the role's own fixed scale (module
    docstring): independent of the other heads' ranks, so a role nobody holds stays dark."""
    s = scores.astype("float64")
    rule, ceiling = role.get("rule"), role.get("ceiling")
    finite = s[np.isfinite(s)]
    unit_range = len(finite) and finite.min() >= 0 and finite.max() <= 1
    if rule == "of_ceiling" and ceiling and np.isfinite(ceiling) and ceiling > 0:
        out = s / float(ceiling)
    elif rule == "below" and unit_range:
        out = 1 - s
    elif rule in ("above", "below") and unit_range:
        out = s
    else:
        top = float(np.abs(finite).max()) if len(finite) else 0.0
        out = s / top if top > 0 else s * 0
    return out.clip(0, 1)


@drawer("atlas")
def draw_atlas(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    """Square cells drawn as vector markers (one path per head in PDF/SVG, no bitmap); panels in
    one row at double width, rows of five at single width."""
    roles, labels = params["roles"], params["labels"]
    n_layers, n_heads = params["n_layers"], params["n_heads"]
    per_row = len(roles) if width == "double" else min(len(roles), 5)
    rows = -(-len(roles) // per_row)
    spacing, gap_px = 0.012, 48  # room between rows for head ticks and two-line panel titles
    margin = {"l": 40, "r": 46, "t": 34, "b": 40}
    total_w = width_px(width)
    plot_w = total_w - margin["l"] - margin["r"]
    cell = plot_w * (1 - spacing * (per_row - 1)) / per_row / n_heads  # px per head, square
    plot_h = cell * n_layers * rows + gap_px * (rows - 1)
    height = round(plot_h) + margin["t"] + margin["b"]
    fig = make_subplots(rows=rows, cols=per_row, shared_yaxes=True, horizontal_spacing=spacing,
                        vertical_spacing=gap_px / plot_h if rows > 1 else None,
                        subplot_titles=[_title(lab) for lab in labels])
    fig.update_layout(template="none", width=total_w, height=height, margin=margin,
                      paper_bgcolor="white", plot_bgcolor="white", font={"size": pt(TICK_PT)},
                      showlegend=False)
    tick_step = 1 if n_heads <= 6 else (2 if n_heads <= 12 else 4)
    for i, role in enumerate(roles):
        row, col = i // per_row + 1, i % per_row + 1
        d = data[data["role"] == role]
        known = d[d["strength"].notna()]
        fig.add_trace(go.Scatter(
            x=known["head"], y=known["layer"], mode="markers",
            customdata=np.stack([known["score"], known["rank"],
                                 np.where(known["held"], "holds the role", "")], axis=-1),
            marker={"symbol": "square", "size": cell, "color": known["strength"],
                    "cmin": 0, "cmax": 1, "colorscale": SEQUENTIAL,
                    "line": {"width": 0.4, "color": "white"}, "showscale": i == 0,
                    "colorbar": {**colorbar("role strength<br>(score on the<br>role's scale)"),
                                 "tickvals": [0, 0.5, 1], "len": min(1.0, 300 / plot_h),
                                 "lenmode": "fraction", "y": 1, "yanchor": "top"}},
            hovertemplate=(f"{plot_text(role)}: L%{{y}}H%{{x}}<br>score %{{customdata[0]:.4g}}, "
                           "rank %{customdata[1]}<br>%{customdata[2]}<extra></extra>")),
            row=row, col=col)
        held = d[d["held"]]
        fig.add_trace(go.Scatter(  # the heads holding the role: outlined cells
            x=held["head"], y=held["layer"], mode="markers", hoverinfo="skip",
            marker={"symbol": "square-open", "size": max(cell - 1, 3), "color": HELD,
                    "line": {"color": HELD, "width": max(1.2, min(2.5, cell / 6))}}),
            row=row, col=col)
        fig.update_xaxes(row=row, col=col, showticklabels=True, ticks="outside", ticklen=2,
                         tickvals=list(range(0, n_heads, tick_step)),
                         tickfont={"size": pt(TICK_PT - 1)}, showline=False,
                         showgrid=False, zeroline=False, range=[-0.5, n_heads - 0.5],
                         title_text="head" if i == (rows - 1) * per_row else None,
                         title_font={"size": pt(TICK_PT)}, title_standoff=2)
        first = col == 1
        fig.update_yaxes(row=row, col=col, ticks="outside" if first else "", ticklen=2,
                         title_text="layer" if first else None,
                         title_font={"size": pt(TICK_PT + 1)}, tickfont={"size": pt(TICK_PT)},
                         dtick=5 if n_layers > 12 else 1)
    fig.update_yaxes(range=[n_layers - 0.5, -0.5], showgrid=False, zeroline=False)
    for ann in fig.layout.annotations:
        ann.font = {"size": pt(TICK_PT)}
    return fig


def atlas_plot(path) -> Plot:
    """The atlas figure of the atlas folder ``path`` (``atlas.parquet`` + ``atlas.json``).

    Raises:
        RunStateError: the folder holds no finished atlas.
    """
    import json
    from pathlib import Path

    from workbench.errors import RunStateError

    path = Path(path)
    if not (path / "atlas.parquet").is_file() or not (path / "atlas.json").is_file():
        raise RunStateError(f"{path} holds no finished atlas (atlas.parquet and atlas.json)")
    doc = json.loads((path / "atlas.json").read_text())
    return atlas_grid(pd.read_parquet(path / "atlas.parquet"), doc["roles"])


def _title(label: str) -> str:
    """A panel title: the role without "head", on two lines where it has two words
    ("previous-token" -> "previous-<br>token", "IOI circuit" -> "IOI<br>circuit")."""
    text = plot_text(label.removesuffix(" head"))
    return text.replace("-", "-<br>", 1) if "-" in text else text.replace(" ", "<br>", 1)
