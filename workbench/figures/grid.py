"""Heatmap figures: layer x head grids, attention patterns over tokens, task-overlap matrices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.shapes import group_mean, qualifier, select, token_label
from workbench.heads import format_head
from workbench.figures.style import (CHAR_EM, TICK_PT, Width, bar_room, base_figure, colorbar,
                                     colorbar_title, colour_scale, layer_ticks, plot_text, pt,
                                     width_px)



def head_heatmap(records, metric: str, *, where: dict | None = None, label: str | None = None,
                 unit: str | None = None, n_layers: int | None = None, n_heads: int | None = None,
                 scale: str = "auto", table: str | None = None, name: str | None = None) -> Plot:
    """Layer x head heatmap of ``metric``: per (layer, head), the mean over every matching row
    (all prompts and positions), with the number of rows and of distinct prompts (for hovering).

    Args:
        records: record frame; rows need ``layer`` and ``head``.
        where: equality filters on other record columns (e.g. ``{"segment": "IO"}``).
        n_layers, n_heads: grid size (default: the largest index present + 1).
        scale: ``auto`` (diverging centred on zero when values have both signs), ``sequential``,
            ``diverging``.

    Data columns: layer, head, value, n_rows, n_prompts.

    Raises:
        ValueError: no row of ``metric`` (matching ``where``) has a layer and a head.
    """
    df = select(records, metric, where, need=("layer", "head"))
    return heatmap_of_means(group_mean(df, ["layer", "head"]), metric, where=where, label=label,
                            unit=unit, n_layers=n_layers, n_heads=n_heads, scale=scale,
                            table=table, name=name)


def heatmap_of_means(means: pd.DataFrame, metric: str, *, where: dict | None = None,
                     label: str | None = None, unit: str | None = None,
                     n_layers: int | None = None, n_heads: int | None = None,
                     scale: str = "auto", table: str | None = None, name: str | None = None,
                     zrange: tuple[float, float] | None = None, rows: str = "head",
                     row_labels: list[str] | None = None) -> Plot:
    """The :func:`head_heatmap` of means computed elsewhere (the app aggregates a million records
    in pyarrow): ``means`` has one row per (layer, head) with ``value`` (the mean over rows),
    ``n_rows`` and ``n_prompts``. Arguments as for :func:`head_heatmap`; ``zrange`` widens the
    colour range to include these values (two heatmaps side by side on one colour scale).
    ``rows`` names the vertical axis and ``row_labels`` its ticks when the ``head`` column holds
    something else (a patching grid's positions: ``rows="position"``).

    Raises:
        ValueError: ``means`` lacks a column or is empty.
    """
    columns = ["layer", "head", "value", "n_rows", "n_prompts"]
    missing = [c for c in columns if c not in means.columns]
    if missing or means.empty:
        raise ValueError(f"per-head means of {metric!r} are empty or lack column(s) {missing}")
    data = means[columns].astype({"layer": "int64", "head": "int64", "value": "float64",
                                  "n_rows": "int64", "n_prompts": "int64"})
    data = data.sort_values(["layer", "head"], ignore_index=True)
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "scale": scale, "aggregate": "mean over rows (prompts and positions)",
              **({"zrange": [float(v) for v in zrange]} if zrange is not None else {}),
              "n_layers": int(n_layers or data["layer"].max() + 1),
              "n_heads": int(n_heads or data["head"].max() + 1),
              **({"rows": rows} if rows != "head" else {}),
              **({"row_labels": [str(x) for x in row_labels]} if row_labels else {})}
    return Plot("heatmap", name or safe_name(table, "heatmap", metric, qualifier(where)), data,
                params)


def _grid(data: pd.DataFrame, column: str, shape: tuple[int, int]) -> np.ndarray:
    z = np.full(shape, np.nan)
    z[data["head"].to_numpy(), data["layer"].to_numpy()] = data[column].to_numpy(dtype=float)
    return z


@drawer("heatmap")
def draw_heatmap(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    n_layers, n_heads = params["n_layers"], params["n_heads"]
    plot_w = width_px(width) - 100
    height = int(np.clip(plot_w * n_heads / n_layers * 1.5, 90, 0.5 * width_px(width))) + 60
    fig = base_figure(width, height=height)
    label, unit = plot_text(params["label"]), plot_text(params["unit"] or "")
    rows = params.get("rows", "head")
    # one value per head (no prompt ids, e.g. mean_* metrics): no "prompts: 0" in the hover
    prompts = "<br>prompts: %{customdata}" if (data["n_prompts"] > 0).any() else ""
    where = "L%{x}H%{y}" if rows == "head" else f"layer %{{x}}, {plot_text(rows)} %{{y}}"
    fig.add_trace(go.Heatmap(
        x=list(range(n_layers)), y=list(range(n_heads)),
        z=_grid(data, "value", (n_heads, n_layers)),
        customdata=_grid(data, "n_prompts", (n_heads, n_layers)),
        colorbar=colorbar(colorbar_title(params["label"], params["unit"],
                                         room_px=bar_room(fig))),
        hovertemplate=(f"{where}<br>{label}: %{{z:.4g}}"
                       f"{' ' + unit if unit else ''}{prompts}<extra></extra>"),
        **colour_scale(np.append(data["value"].to_numpy(), params.get("zrange") or []),
                       params["scale"])))
    fig.update_xaxes(title_text="layer", showline=False, **layer_ticks(n_layers))
    labels = params.get("row_labels")
    fig.update_yaxes(title_text=rows, showline=False, dtick=1 if n_heads <= 12 else None,
                     **({"tickvals": list(range(n_heads)), "ticktext": [plot_text(x) for x in labels]}
                        if labels else {}))
    return fig


def attention_pattern(records, tokens: pd.DataFrame, metric: str, prompt_id: str, layer: int,
                      head: int, *, where: dict | None = None, label: str | None = None,
                      unit: str | None = None, scale: str = "sequential", table: str | None = None,
                      name: str | None = None) -> Plot:
    """Attention pattern [query_pos, key_pos] of one head on one prompt, drawn over its tokens.

    Args:
        records: record frame; rows need ``query_pos`` and ``key_pos``.
        tokens: the run's ``tokens`` table (prompt_id, pos, token).

    Data columns: query_pos, key_pos, value, query_token, key_token (the labels drawn).

    Raises:
        ValueError: no such rows, or a position without a token in ``tokens``.
    """
    where_all = {"prompt_id": prompt_id, "layer": layer, "head": head, **(where or {})}
    df = select(records, metric, where_all, need=("query_pos", "key_pos"))
    data = group_mean(df, ["query_pos", "key_pos"])[["query_pos", "key_pos", "value"]]
    data = data.astype({"query_pos": "int64", "key_pos": "int64"})
    labels = tokens[tokens["prompt_id"] == prompt_id].set_index("pos")["token"].map(token_label)
    for side in ("query", "key"):
        data[f"{side}_token"] = data[f"{side}_pos"].map(labels)
        if data[f"{side}_token"].isna().any():
            raise ValueError(f"prompt {prompt_id!r}: {side} position(s) without a token in the "
                             "tokens table")
    params = {"metric": metric, "label": label or metric, "unit": unit, "where": where or {},
              "prompt_id": prompt_id, "layer": int(layer), "head": int(head), "scale": scale}
    stem = name or safe_name(table, "pattern", metric, prompt_id, format_head((layer, head)),
                             qualifier(where))
    return Plot("pattern", stem, data, params)


MAX_TOKEN_CHARS = 10  # a token label longer than this is cut (the sidecar has it whole)
LABEL_PT = TICK_PT - 1
LINE_EM = 1.25  # tick-label pitch a label needs, in em


def position_label(pos: int, token: str) -> str:
    """``pos:token`` as drawn on a pattern axis (positions disambiguate repeated tokens); tokens
    longer than :data:`MAX_TOKEN_CHARS` end in an ellipsis."""
    text = str(token)
    if len(text) > MAX_TOKEN_CHARS:
        text = text[:MAX_TOKEN_CHARS - 1] + "\u2026"
    return f"{pos}:{text}"


def _token_axis(data: pd.DataFrame, side: str, room_px: float) -> tuple[list[int], dict, float]:
    """Positions of one pattern axis, its tick settings (a ``pos:token`` label on every position
    when they fit in ``room_px``, else on every k-th) and the labels' longest extent in px."""
    labels = data.drop_duplicates(f"{side}_pos").set_index(f"{side}_pos")[f"{side}_token"]
    positions = list(range(int(labels.index.min()), int(labels.index.max()) + 1))
    pitch = pt(LABEL_PT) * LINE_EM
    step = max(1, -(-int(len(positions) * pitch) // max(int(room_px), 1)))
    ticks = [p for p in positions[::step] if p in labels.index]
    text = [position_label(p, labels[p]) for p in ticks]
    longest = max((len(t) for t in text), default=1) * pt(LABEL_PT) * CHAR_EM
    return positions, {"tickmode": "array", "tickvals": ticks,
                       "ticktext": [plot_text(t) for t in text],
                       "tickfont": {"size": pt(LABEL_PT)}}, longest


@drawer("pattern")
def draw_pattern(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    fig = base_figure(width, aspect=0.92)
    w, h = fig.layout.width, fig.layout.height
    guess = 60.0  # label extent before the labels are known
    queries, y_axis, y_extent = _token_axis(data, "query", h - guess - 40)
    keys, x_axis, x_extent = _token_axis(data, "key", w - y_extent - 110)
    if y_extent > guess or x_extent > guess:  # recompute the room with the real extents
        queries, y_axis, _ = _token_axis(data, "query", h - x_extent - 40)
    z = np.full((len(queries), len(keys)), np.nan)
    rows, cols = data["query_pos"].to_numpy() - queries[0], data["key_pos"].to_numpy() - keys[0]
    z[rows, cols] = data["value"].to_numpy()
    label = plot_text(params["label"])
    names = {side: dict(zip(data[f"{side}_pos"], data[f"{side}_token"]))
             for side in ("query", "key")}
    hover = [[[plot_text(f"{q}:{names['query'].get(q, '')}"),
               plot_text(f"{k}:{names['key'].get(k, '')}")] for k in keys] for q in queries]
    fig.add_trace(go.Heatmap(
        x=keys, y=queries, z=z, customdata=hover,
        colorbar=colorbar(colorbar_title(params["label"], params["unit"],
                                         room_px=bar_room(fig) - x_extent)),
        hovertemplate=(f"query %{{customdata[0]}}, key %{{customdata[1]}}<br>{label}: "
                       "%{z:.4g}<extra></extra>"),
        **colour_scale(data["value"].to_numpy(), params["scale"], from_zero=True)))
    fig.update_xaxes(title_text="key (position:token)", tickangle=-90, showline=False, **x_axis)
    fig.update_yaxes(title_text="query (position:token)", autorange="reversed", showline=False,
                     **y_axis)
    return fig


def overlap_matrix(overlap: pd.DataFrame, *, metric: str = "overlap", label: str | None = None,
                   unit: str | None = None, baseline: float | None = None,
                   order: list[str] | None = None, zmax: float | None = None,
                   table: str | None = None, name: str | None = None) -> Plot:
    """Overlap between tasks (e.g. the Jaccard index of their circuits' head sets) as a matrix.

    Args:
        overlap: long frame with columns ``task_a``, ``task_b``, ``value`` (and optionally
            ``baseline``: each pair's overlap expected by chance, printed in each cell in
            brackets), or a square frame whose index and columns are task names. Pairs absent
            from the frame (e.g. a task with itself) are left empty.
        baseline: one overlap expected by chance for every pair (shown under the matrix).
        order: task order on both axes (default: sorted).
        zmax: the top of the colour range, from 0 (e.g. 1 for a Jaccard index; default: the
            data's maximum).

    Data columns: task_a, task_b, value (and baseline when given per pair).
    """
    if not {"task_a", "task_b", "value"} <= set(overlap.columns):
        overlap = overlap.rename_axis(index="task_a", columns="task_b").stack().rename("value")
        overlap = overlap.reset_index()
    tasks = order or sorted(set(overlap["task_a"]) | set(overlap["task_b"]))
    rank = {t: i for i, t in enumerate(tasks)}
    columns = ["task_a", "task_b", "value"] + (["baseline"] if "baseline" in overlap.columns
                                               else [])
    data = overlap[columns].astype({"task_a": str, "task_b": str, "value": "float64",
                                    **({"baseline": "float64"} if "baseline" in columns
                                       else {})})
    data = data.sort_values(["task_a", "task_b"], key=lambda s: s.map(rank)).reset_index(drop=True)
    params = {"metric": metric, "label": label or metric, "unit": unit, "baseline": baseline,
              "tasks": list(tasks), "zmax": zmax}
    return Plot("overlap", name or safe_name(table, "overlap", metric), data, params)


@drawer("overlap")
def draw_overlap(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    tasks = params["tasks"]
    z = data.pivot(index="task_a", columns="task_b", values="value").reindex(
        index=tasks, columns=tasks)
    scale = colour_scale(np.append(z.to_numpy().ravel(), 0.0), "sequential")
    fig = base_figure(width, aspect=0.85)
    names = [plot_text(t) for t in tasks]
    text = {"texttemplate": "%{z:.2f}"}
    title = (f"random baseline: {params['baseline']:.2f}" if params.get("baseline") is not None
             else "")
    if "baseline" in data.columns:
        base = data.pivot(index="task_a", columns="task_b", values="baseline").reindex(
            index=tasks, columns=tasks).to_numpy()
        cells = [[f"{v:.2f}<br>({b:.2f})" if np.isfinite(v) else "" for v, b in zip(zr, br)]
                 for zr, br in zip(z.to_numpy(), base)]
        text = {"text": cells, "texttemplate": "%{text}"}
        title = "in brackets: random head sets of the same sizes"
    if params.get("zmax") is not None:  # a bounded quantity (Jaccard in [0, 1]): its full range
        scale.update(zmin=0.0, zmax=float(params["zmax"]))
    fig.add_trace(go.Heatmap(
        x=names, y=names, z=z.to_numpy(), **text, textfont={"size": pt(TICK_PT)},
        colorbar=colorbar(colorbar_title(params["label"], params["unit"],
                                         room_px=bar_room(fig))),
        hovertemplate="%{y} vs %{x}: %{z:.3f}<extra></extra>", **scale))
    fig.update_yaxes(autorange="reversed", showline=False)
    fig.update_xaxes(showline=False, tickangle=-45 if len(tasks) > 4 else 0, title_text=title)
    return fig
