"""Bar figures: circuit faithfulness per task and method, against the random-circuit band."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.style import (INK, LINE_PX, Width, axis_title, base_figure, categorical,
                                     plot_text, translucent)

RANDOM_COLOUR = "#777777"


def faithfulness_bars(rows: pd.DataFrame, *, label: str = "faithfulness",
                      unit: str | None = "circuit LD / model LD", table: str | None = None,
                      name: str | None = None) -> Plot:
    """Faithfulness of each (task, method) circuit as a bar, with the faithfulness of random
    circuits of the same size as a band (their minimum to maximum) and a tick at their mean.

    Faithfulness is Wang et al.'s F(C) / F(M) (arXiv 2211.00593): the mean logit difference with
    every head outside the circuit mean-ablated over that of the full model (1 = the full model).

    Args:
        rows: the ``faithfulness`` table's records with a ``probe`` column (the method):
            ``faithfulness``, ``faithfulness_random`` and, when the run stored them,
            ``faithfulness_random_draw`` (one per random circuit), ``segment`` = the task.

    Data columns: task, method, faithfulness, random_mean, random_lo, random_hi, n_random
    (``random_lo``/``random_hi`` equal the mean when the run stored no draws: ``n_random`` 0).

    Raises:
        ValueError: no ``faithfulness`` rows.
    """
    faith = rows[rows["metric"] == "faithfulness"]
    if faith.empty:
        raise ValueError("no faithfulness rows (is this a `workbench circuits` run?)")
    out = []
    for (method, task), group in faith.groupby(["probe", "segment"], sort=False):
        mine = rows[(rows["probe"] == method) & (rows["segment"] == task)]
        draws = mine.loc[mine["metric"] == "faithfulness_random_draw", "value"].to_numpy(float)
        mean = mine.loc[mine["metric"] == "faithfulness_random", "value"].to_numpy(float)
        random_mean = float(draws.mean()) if len(draws) else (float(mean[0]) if len(mean)
                                                             else float("nan"))
        out.append({"task": str(task), "method": str(method),
                    "faithfulness": float(group["value"].iloc[0]), "random_mean": random_mean,
                    "random_lo": float(draws.min()) if len(draws) else random_mean,
                    "random_hi": float(draws.max()) if len(draws) else random_mean,
                    "n_random": int(len(draws))})
    data = pd.DataFrame(out).astype({"n_random": "int64"})
    params = {"metric": "faithfulness", "label": label, "unit": unit,
              "tasks": list(dict.fromkeys(data["task"])),
              "methods": list(dict.fromkeys(data["method"])),
              "random": "min to max of random circuits of the circuit's size, tick at the mean"}
    return Plot("faithfulness", name or safe_name(table, "faithfulness"), data, params)


def _rect(x0: float, x1: float, y0: float, y1: float) -> tuple[list, list]:
    return [x0, x1, x1, x0, x0, None], [y0, y0, y1, y1, y0, None]


@drawer("faithfulness")
def draw_faithfulness(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    tasks, methods = params["tasks"], params["methods"]
    fig = base_figure(width, aspect=0.62 if width == "single" else 0.36, showlegend=True)
    bar_w = 0.8 / len(methods)
    band_x, band_y, tick_x, tick_y = [], [], [], []
    for j, method in enumerate(methods):
        rows = data[data["method"] == method].set_index("task").reindex(tasks)
        x = np.arange(len(tasks)) + (j - (len(methods) - 1) / 2) * bar_w
        fig.add_trace(go.Bar(x=x, y=rows["faithfulness"], width=bar_w * 0.9,
                             name=plot_text(method), marker={"color": categorical(j),
                                                             "line": {"width": 0}},
                             hovertemplate="%{y:.3f}<extra></extra>"))
        for xi, (_, r) in zip(x, rows.iterrows()):
            if np.isfinite(r["random_mean"]):
                xs, ys = _rect(xi - bar_w * 0.45, xi + bar_w * 0.45, r["random_lo"],
                               r["random_hi"])
                band_x += xs
                band_y += ys
                tick_x += [xi - bar_w * 0.45, xi + bar_w * 0.45, None]
                tick_y += [r["random_mean"], r["random_mean"], None]
    n_random = int(data["n_random"].max()) if len(data) else 0
    band_name = (f"random circuits (range of {n_random}, mean)" if n_random
                 else "random circuits (mean)")
    fig.add_trace(go.Scatter(x=band_x, y=band_y, fill="toself", mode="lines",
                             fillcolor=translucent(RANDOM_COLOUR, 0.35),
                             line={"width": 0, "color": RANDOM_COLOUR}, hoverinfo="skip",
                             name=band_name, legendgroup="random"))
    fig.add_trace(go.Scatter(x=tick_x, y=tick_y, mode="lines", hoverinfo="skip",
                             line={"color": INK, "width": LINE_PX * 1.5}, showlegend=False,
                             legendgroup="random"))
    fig.add_hline(y=1.0, line={"color": INK, "width": LINE_PX, "dash": "dot"})
    fig.update_xaxes(tickmode="array", tickvals=list(range(len(tasks))),
                     ticktext=[plot_text(t) for t in tasks], title_text="task",
                     range=[-0.6, len(tasks) - 0.4])
    fig.update_yaxes(title_text=axis_title(params["label"], params["unit"],
                                           room_px=fig.layout.height - 70), rangemode="tozero")
    return fig
