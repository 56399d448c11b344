"""Interventions: stored results (each metric per condition) and sweeps (conditions
``name=number``, e.g. ``alpha=0.5``) as dose-response curves. The live page runs new ones."""

from __future__ import annotations

import streamlit as st

from app import data, headline, tables, ui
from app.shaping import sweep_order
from workbench.figures import dose_response

MAX_SWEEPS = 6


def intervention_tables(infos: dict) -> list[str]:
    """The role's tables, then every other table with a sweep."""
    named = [t for t, _ in tables.find(tables.INTERVENTIONS, infos)]
    swept = [t for t, info in infos.items()
             if t not in named and any(m.sweeps for m in info.metrics.values())]
    return named + swept


def stored(root: data.RunsRoot, run_id: str, table: str) -> None:
    rows = data.frame(data.read(root.table(run_id, table), data.READ_COLUMNS))
    if rows.empty:
        st.info(ui.literal(f"Table {table} is empty."))
        return
    rows = rows.assign(segment=rows["segment"].fillna(""),
                       condition=rows["condition"].fillna("(none)"))
    summary = rows.pivot_table(index=["metric", "segment"], columns="condition", values="value",
                               aggfunc="mean")
    st.caption("Mean over prompts and heads per metric (rows) and condition (columns)")
    st.dataframe(summary, width="stretch")


def sweeps(root: data.RunsRoot, run_id: str, table: str, info: data.TableInfo) -> None:
    keyed, twins = sweep_order(info, headline.headline(root.manifest(run_id), table))
    found = [(m, dict(s)) for m, s in keyed]
    if twins:
        st.caption(ui.literal(f"Not drawn twice: {', '.join(twins)} (drawn as its mean_ "
                              "summary)."))
    if not found:
        st.info(ui.literal(f"Table {table} has no sweep (conditions of the form name=number, "
                           "e.g. alpha=0.5)."))
        return
    labels = [f"{m} · {ui.variant_label(w)}" if w else m for m, w in found]
    shown = list(range(len(found)))
    if len(found) > MAX_SWEEPS:
        shown = st.multiselect(f"Sweeps to draw ({len(found)} in this table)", shown,
                               default=shown[:MAX_SWEEPS], format_func=lambda i: labels[i],
                               key=ui.plot_key("sweeps-shown", run_id, table))
    units = root.manifest(run_id).get("units") or {}
    columns = st.columns(2)
    for i, (metric, where) in enumerate(found[j] for j in shown):
        rows = data.records(root.table(run_id, table), metric, data.where_of(where))
        with columns[i % 2]:
            if where:
                st.caption(ui.literal(ui.variant_label(where)))
            ui.show_plot(dose_response(rows, metric, where=where, unit=units.get(metric),
                                       table=table),
                         key=ui.plot_key("sweep", table, metric, where))


root = ui.runs_root()
st.title("Interventions")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        infos = ui.infos(root, run_id)
        found = intervention_tables(infos)
        if not found:
            st.info(ui.literal(
                f"This run has no intervention results: no table named "
                f"{' / '.join(tables.INTERVENTIONS.tables)} and no sweep (conditions such as "
                "alpha=0.5). Run one with workbench intervene, or try one on the Live "
                "intervention page and save it as a run."))
        else:
            table = st.selectbox("Table", found, key="interventions-table")
            st.subheader("Stored results")
            with ui.guard():
                stored(root, run_id, table)
            st.subheader("Sweeps (dose-response)")
            with ui.guard():
                sweeps(root, run_id, table, infos[table])
