"""The atlas figure: one small layer x head panel per role, shaded by the head's rank in that role,
with a dot on every head that holds it; cells are vector squares (print-sharp in PDF and SVG).

Ranks, not raw scores, share one colour bar across roles whose scores have different units
(attention fractions, L2 norms, logit-difference fractions); the sidecar CSV keeps each head's
score, rank and label. Torch-free: it reads the ``atlas.parquet`` frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.plot import Plot, drawer
from workbench.figures.style import (INK, SEQUENTIAL, TICK_PT, Width, colorbar, plot_text, pt,
                                     width_px)


def atlas_grid(heads: pd.DataFrame, roles: list[dict], *, name: str = "atlas") -> Plot:
    """The atlas as a :class:`Plot` of kind ``atlas``.

    Args:
        heads: ``atlas.parquet`` (``layer``, ``head``, ``<role>_score``, ``<role>_rank``,
            ``<role>``).
        roles: ``atlas.json``'s roles (name, label, rule, threshold); roles never measured (all
            scores NaN) are left out.

    Data columns: role, layer, head, score, rank, strength (1 for rank 1 down to 0 for the last
    rank), held (the role label).

    Raises:
        ValueError: no role has a score.
    """
    rows = []
    n = len(heads)
    for role in roles:
        name_ = role["name"]
        scores = heads[f"{name_}_score"]
        if scores.isna().all():
            continue
        ranks = heads[f"{name_}_rank"].astype("float64")
        rows.append(pd.DataFrame({
            "role": name_, "layer": heads["layer"].astype("int64"),
            "head": heads["head"].astype("int64"), "score": scores.astype("float64"),
            "rank": ranks, "strength": 1 - (ranks - 1) / max(n - 1, 1),
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


@drawer("atlas")
def draw_atlas(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    """Square cells drawn as vector markers (one path per head in PDF/SVG, no bitmap); panels in
    one row at double width, rows of five at single width."""
    roles, labels = params["roles"], params["labels"]
    n_layers, n_heads = params["n_layers"], params["n_heads"]
    per_row = len(roles) if width == "double" else min(len(roles), 5)
    rows = -(-len(roles) // per_row)
    spacing, gap_px = 0.012, 34  # room between rows for two-line panel titles
    margin = {"l": 40, "r": 46, "t": 34, "b": 30}
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
    for i, role in enumerate(roles):
        row, col = i // per_row + 1, i % per_row + 1
        d = data[data["role"] == role]
        known = d[d["strength"].notna()]
        fig.add_trace(go.Scatter(
            x=known["head"], y=known["layer"], mode="markers",
            customdata=np.stack([known["score"], known["rank"]], axis=-1),
            marker={"symbol": "square", "size": cell, "color": known["strength"],
                    "cmin": 0, "cmax": 1, "colorscale": SEQUENTIAL,
                    "line": {"width": 0.4, "color": "white"}, "showscale": i == 0,
                    "colorbar": {**colorbar("rank in role<br>(1 = top)"), "tickvals": [0, 1],
                                 "ticktext": ["last", "first"], "len": 1 / rows, "y": 1,
                                 "yanchor": "top"}},
            hovertemplate=(f"{plot_text(role)}: L%{{y}}H%{{x}}<br>score %{{customdata[0]:.4g}}, "
                           "rank %{customdata[1]}<extra></extra>")), row=row, col=col)
        held = d[d["held"]]
        fig.add_trace(go.Scatter(
            x=held["head"], y=held["layer"], mode="markers", hoverinfo="skip",
            marker={"size": max(cell * 0.45, 2), "color": "white",
                    "line": {"color": INK, "width": 0.6}}), row=row, col=col)
        fig.update_xaxes(row=row, col=col, showticklabels=False, ticks="", showline=False,
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
