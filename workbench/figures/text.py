"""Live attention views (as CircuitsVis and BertViz draw them): the prompt's tokens coloured by
the attention one query token pays to each, and every head's pattern as a thumbnail, a layer per
row. Both take patterns computed elsewhere (``workbench.forward.attention_patterns``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.figures.plot import Plot, drawer
from workbench.heads import format_head
from workbench.figures.shapes import token_label
from workbench.figures.style import (INK, SEQUENTIAL, TICK_PT, Width, colorbar, plot_text, pt,
                                     width_px)


def attention_text(tokens: list[str], weights, query_pos: int, title: str, *,
                   name: str = "attention-text") -> Plot:
    """The tokens in a row, each coloured by the attention the query token ``query_pos`` pays it
    (``weights``: one value per token; 0 after the query in a causal model).

    Data columns: pos, token, weight."""
    data = pd.DataFrame({"pos": np.arange(len(tokens)), "token": [str(t) for t in tokens],
                         "weight": np.asarray(weights, dtype=float)})
    return Plot("attention_text", name, data, {"query_pos": int(query_pos), "title": title})


@drawer("attention_text")
def draw_attention_text(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    per_row = 12
    n = len(data)
    rows = -(-n // per_row)
    z = np.full((rows, per_row), np.nan)
    text = np.full((rows, per_row), "", dtype=object)
    for pos, token, weight in data[["pos", "token", "weight"]].itertuples(index=False):
        r, c = divmod(int(pos), per_row)
        z[r, c] = weight
        marker = "\u25b6 " if pos == params["query_pos"] else ""
        text[r, c] = f"{marker}{pos}:{plot_text(token_label(token))}"
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", textfont={"size": pt(TICK_PT + 1)},
        colorscale=SEQUENTIAL, zmin=0.0, zmax=max(float(np.nanmax(z)) if n else 1.0, 1e-9),
        xgap=2, ygap=2, colorbar=colorbar("attention<br>from \u25b6"),
        hovertemplate="%{text}: %{z:.3f}<extra></extra>"))
    fig.update_layout(template="none", width=width_px(width), height=60 + 34 * rows,
                      margin={"l": 10, "r": 60, "t": 30, "b": 10}, paper_bgcolor="white",
                      title={"text": plot_text(params["title"]), "font": {"size": pt(TICK_PT + 1)}})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    return fig


def pattern_grid(patterns, tokens: list[str], *, name: str = "all-heads") -> Plot:
    """Every head's pattern (``patterns`` ``[layer, head, query, key]``) as a thumbnail, a layer
    per row (BertViz's model view), on one colour scale from 0 to 1.

    Data columns: layer, head, query_pos, key_pos, value."""
    p = np.asarray(patterns, dtype=float)
    layer, head, q, k = np.indices(p.shape).reshape(4, -1)
    data = pd.DataFrame({"layer": layer, "head": head, "query_pos": q, "key_pos": k,
                         "value": p.reshape(-1)})
    return Plot("pattern_grid", name, data, {"n_layers": p.shape[0], "n_heads": p.shape[1],
                                             "tokens": [str(t) for t in tokens]})


@drawer("pattern_grid")
def draw_pattern_grid(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    n_layers, n_heads, n = params["n_layers"], params["n_heads"], len(params["tokens"])
    total = width_px(width)
    cell = (total - 60) / n_heads
    fig = make_subplots(rows=n_layers, cols=n_heads, horizontal_spacing=0.004,
                        vertical_spacing=min(0.004, 1 / max(n_layers - 1, 1)))
    labels = [f"{i}:{plot_text(token_label(t))}" for i, t in enumerate(params["tokens"])]
    for (layer, head), rows in data.groupby(["layer", "head"], sort=True):
        z = np.zeros((n, n))
        z[rows["query_pos"].to_numpy(), rows["key_pos"].to_numpy()] = rows["value"].to_numpy()
        fig.add_trace(go.Heatmap(
            z=z, x=labels, y=labels, zmin=0.0, zmax=1.0, colorscale=SEQUENTIAL,
            showscale=bool(layer == 0 and head == 0), colorbar=colorbar("attention"),
            hovertemplate=(f"{format_head((layer, head))}<br>query %{{y}}<br>key %{{x}}<br>"
                           "%{z:.3f}<extra></extra>")), row=int(layer) + 1, col=int(head) + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    for layer in range(n_layers):
        fig.update_yaxes(row=layer + 1, col=1, visible=True, showticklabels=False,
                         title_text=f"L{layer}", title_font={"size": pt(TICK_PT), "color": INK},
                         title_standoff=2, ticks="")
    fig.update_layout(template="none", width=total, height=int(cell * n_layers) + 40,
                      margin={"l": 40, "r": 60, "t": 20, "b": 10}, paper_bgcolor="white",
                      showlegend=False)
    return fig
