"""Layers: any metric by depth, the mean per layer with its spread across heads and prompts."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, ui
from workbench.figures import by_depth
from workbench.figures.shapes import INTERVALS

MAX_VARIANTS = 4


def default_metrics(metrics: list[str], info) -> list[str]:
    """Up to two metrics, those with per-prompt records first (they have a spread)."""
    ranked = sorted(metrics, key=lambda m: "prompt_id" not in info.metrics[m].coords)
    return ranked[:2]


def layer_figures(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    by_layer = ui.metrics_with(infos, "layer")
    if not by_layer:
        st.info(ui.literal(f"This run has no records with a layer (its record tables: "
                           f"{', '.join(infos) or 'none'})."))
        return
    left, right = st.columns([1, 2])
    table = left.selectbox("Table", list(by_layer), key="layers-table")
    interval = left.selectbox("Interval", list(INTERVALS), key="layers-interval",
                              format_func=lambda k: f"{k}: {INTERVALS[k]}")
    metrics = right.multiselect("Metrics", by_layer[table], key=f"layers-metrics-{table}",
                                default=default_metrics(by_layer[table], infos[table]))
    units = root.manifest(run_id).get("units") or {}
    ref = root.table(run_id, table)
    numbers = []
    columns = st.columns(2)
    n = 0
    for metric in metrics:
        variants = list(infos[table].metrics[metric].variants) or [{}]
        if len(variants) > MAX_VARIANTS:
            st.caption(ui.literal(f"{metric}: showing {MAX_VARIANTS} of {len(variants)} "
                                  "segment/condition variants"))
        for variant in variants[:MAX_VARIANTS]:
            where = data.where_of(variant)
            units_frame = data.unit_means(ref, metric, where)
            if units_frame.empty:
                continue
            plot = by_depth(units_frame, metric, where=variant, interval=interval,
                            unit=units.get(metric), table=table)
            with columns[n % 2]:
                if variant:
                    st.caption(ui.literal(ui.variant_label(variant)))
                ui.show_plot(plot, key=ui.plot_key("layers", table, metric, variant, interval))
            n += 1
            numbers.append(plot.data.assign(metric=metric, variant=ui.variant_label(variant)))
    if numbers:
        with st.expander("The numbers drawn"):
            st.dataframe(pd.concat(numbers), hide_index=True, width="stretch")


root = ui.runs_root()
st.title("Layers")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        layer_figures(root, run_id, ui.infos(root, run_id))
