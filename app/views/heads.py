"""Heads: a layer x head heatmap of any per-head metric; one head's distribution over prompts, its
most extreme prompts, its attention pattern on a prompt (runs with pattern records) and every
other metric of that head."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, headline, ui
from app.patterns import stored_pattern
from app.shaping import extreme_prompts, head_summary, rank_of
from workbench.figures import distribution, heatmap_of_means
from workbench.figures.plot import safe_name
from workbench.figures.shapes import qualifier
from workbench.errors import InputError
from workbench.heads import format_head, parse_head

N_EXTREME = 5


def heatmap(root: data.RunsRoot, run_id: str, infos: dict) -> tuple | None:
    """Table / metric / variant pickers and the heatmap; returns (table, metric, where, means)."""
    per_head = ui.metrics_with(infos, "layer", "head")
    if not per_head:
        st.info(ui.literal(f"This run has no per-head records (its record tables: "
                           f"{', '.join(infos) or 'none'}); the Layers page shows layer-level "
                           "metrics."))
        return None
    left, mid, right = st.columns(3)
    manifest = root.manifest(run_id)
    table = left.selectbox("Table", list(per_head), key="heads-table")
    ref = root.table(run_id, table)
    first = headline.headline(manifest, table)
    metrics, constant = headline.offered(
        headline.order(ui.patterns_last(infos[table], per_head[table]), first),
        headline.constant_metrics(ref))
    if constant:
        st.caption(ui.literal(f"Not offered (the same value for every head, up to float noise): "
                              f"{', '.join(constant)}"))
    if not metrics:
        st.info("Every per-head metric of this table is constant across heads.")
        return None
    metric = mid.selectbox("Metric", metrics, key=f"heads-metric-{table}")
    with right:
        where = ui.pick_variant(infos[table].metrics[metric], key="heads-variant",
                                variants=data.with_heads(ref, metric,
                                                         infos[table].metrics[metric].variants))
    model = manifest.get("model") or {}
    means = data.head_means(ref, metric, where)
    if means.empty:
        st.info("No rows of this metric have a layer and a head for this choice.")
        return None
    unit = (manifest.get("units") or {}).get(metric)
    keys = head_keys(table, metric, where)
    default_head(means, keys)

    def select(layer: int, head: int) -> None:
        st.session_state[keys[0]], st.session_state[keys[1]] = layer, head

    ui.show_plot(heatmap_of_means(means, metric, where=dict(where), unit=unit, table=table,
                                  n_layers=model.get("n_layers"), n_heads=model.get("n_heads")),
                 key=ui.plot_key("heads", table, metric, dict(where)), on_click=select,
                 chosen=(st.session_state[keys[0]], st.session_state[keys[1]]))
    st.caption("Click a cell to select that head (outlined).")
    return table, metric, where, means


def head_keys(table: str, metric: str, where: tuple) -> tuple[str, str]:
    """Widget keys of the layer and head pickers: one pair per metric choice, so that a new
    metric starts on its own top head."""
    base = ui.plot_key("heads", table, metric, dict(where))
    return f"{base}-layer", f"{base}-head"


def default_head(means: pd.DataFrame, keys: tuple[str, str]) -> None:
    """Choose the head with the highest mean of the metric unless a head of the grid is chosen
    (by a click, the pickers or ``?head=``)."""
    cells = set(zip(means["layer"].astype(int), means["head"].astype(int)))
    wanted = head_from_query()
    if wanted in cells and st.session_state.get("heads-query-head") != wanted:
        st.session_state["heads-query-head"] = wanted
        st.session_state[keys[0]], st.session_state[keys[1]] = wanted
    if (st.session_state.get(keys[0]), st.session_state.get(keys[1])) not in cells:
        best = means.loc[means["value"].idxmax()]
        st.session_state[keys[0]], st.session_state[keys[1]] = int(best["layer"]), int(best["head"])


def head_from_query() -> tuple[int, int] | None:
    """The head named by ``?head=`` (``L18H6``, ``18.6``), if it parses."""
    try:
        return parse_head(st.query_params["head"]) if st.query_params.get("head") else None
    except InputError:
        return None


def pick_head(means: pd.DataFrame, keys: tuple[str, str]) -> tuple[int, int]:
    """Layer and head pickers (the head chosen by :func:`default_head` or a click)."""
    layers = sorted(int(v) for v in means["layer"].unique())
    left, right, _ = st.columns([1, 1, 4])
    layer = left.selectbox("Layer", layers, key=keys[0])
    heads = sorted(int(v) for v in means.loc[means["layer"] == layer, "head"].unique())
    if st.session_state.get(keys[1]) not in heads:
        st.session_state[keys[1]] = heads[0]
    head = right.selectbox("Head", heads, key=keys[1])
    st.query_params["head"] = format_head((layer, head))
    st.session_state["heads-query-head"] = (int(layer), int(head))  # not a new address
    return int(layer), int(head)


def over_prompts(root, run_id, table, metric, where, layer, head) -> None:
    ref = root.table(run_id, table)
    mine = (*where, ("layer", layer), ("head", head))
    rows = data.records(ref, metric, mine)
    if rows["prompt_id"].isna().all():
        st.info("This metric has one value per head (no per-prompt records), so there is no "
                "distribution over prompts.")
        return
    unit = (root.manifest(run_id).get("units") or {}).get(metric)
    ui.show_plot(distribution(rows, metric, over="prompts", unit=unit, table=table,
                              name=safe_name(table, "distribution", metric,
                                             format_head((layer, head)), qualifier(dict(where)))),
                 key=ui.plot_key("heads-dist", table, metric, dict(mine)))
    per_prompt = rows.groupby("prompt_id", as_index=False)["value"].mean()
    st.caption("Prompts where this head is most extreme (mean over the prompt's rows)")
    st.dataframe(extreme_prompts(per_prompt, data.prompts(root, run_id), N_EXTREME),
                 hide_index=True, width="stretch")


def every_metric(root, run_id, infos, layer, head, chosen) -> None:
    frames = []
    for table in infos:
        rows = data.frame(data.read(root.table(run_id, table),
                                    ("metric", "prompt_id", "segment", "condition", "value"),
                                    (("layer", layer), ("head", head))))
        frames.append(rows.assign(table=table))
    summary = head_summary(pd.concat(frames), root.manifest(run_id).get("units") or {})
    table, metric, where, means = chosen
    rank = rank_of(means, layer, head)
    if rank:
        st.caption(ui.literal(f"Head {format_head((layer, head))} ranks {rank[0]} of {rank[1]} "
                              f"heads on "
                              f"{metric} (highest first)."))
    st.dataframe(summary, hide_index=True, width="stretch")


root = ui.runs_root()
st.title("Heads")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        infos = ui.infos(root, run_id)
        chosen = heatmap(root, run_id, infos)
        if chosen:
            table, metric, where, means = chosen
            st.subheader("One head")
            layer, head = pick_head(means, head_keys(table, metric, where))
            shown = [("Over prompts", lambda: over_prompts(root, run_id, table, metric, where,
                                                           layer, head)),
                     ("Attention pattern", lambda: stored_pattern(root, run_id, infos, layer,
                                                                  head, "heads")),
                     ("Every metric", lambda: every_metric(root, run_id, infos, layer, head,
                                                           chosen))]
            if not (means["n_prompts"] > 0).any():  # one value per head (mean_*): no
                shown = shown[2:] + shown[1:2]      # distribution over prompts to show
            for tab, (_, draw) in zip(st.tabs([name for name, _ in shown]), shown):
                with tab, ui.guard():
                    draw()
