"""Runs: every run of the runs folder with its manifest; the chosen run in detail; two runs
compared (the same metric per head on two models or two prompt sets)."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from app import data, headline, ui
from app.shaping import (compare_by_depth, compare_heads, manifest_facts, runs_overview,
                           same_grid)
from workbench.figures import heatmap_of_means
from workbench.figures.plot import safe_name


def details(root: data.RunsRoot, run_id: str) -> None:
    manifest = root.manifest(run_id)
    st.subheader("Chosen run")
    st.code(run_id, language=None)
    if manifest.get("error"):
        st.error(ui.literal(f"The run failed: {manifest['error']}"))
    st.dataframe(manifest_facts(manifest), hide_index=True, width="stretch")
    probes = [{"probe": p.get("name"), "parameters": json.dumps(p.get("params"), sort_keys=True)}
              for p in manifest.get("probes") or [] if isinstance(p, dict)]
    if probes:
        st.dataframe(pd.DataFrame(probes), hide_index=True, width="stretch")
    timings = manifest.get("timings") or {}
    if timings:
        st.dataframe(pd.DataFrame([timings]), hide_index=True)
    tables = []
    for table in root.tables(run_id):
        listed = (manifest.get("tables") or {}).get(table) or {}
        tables.append({"table": table, "rows": data.table_rows(root.table(run_id, table)),
                       "metrics": ", ".join(listed.get("metrics") or [])})
    if tables:
        st.dataframe(pd.DataFrame(tables), hide_index=True, width="stretch")
    else:
        st.info("This run has no tables yet (it may still be running, or it failed).")
    with st.expander("Full manifest (run.json)"):
        st.json(manifest, expanded=False)


def compare(root: data.RunsRoot, run_a: str, run_b: str) -> None:
    st.subheader("Compare two runs")
    st.code(f"a: {run_a}\nb: {run_b}", language=None)
    infos_a, infos_b = ui.infos(root, run_a), ui.infos(root, run_b)
    heads_a, heads_b = ui.metrics_with(infos_a, "layer", "head"), ui.metrics_with(infos_b,
                                                                                   "layer", "head")
    common = {t: [m for m in ms if m in heads_b.get(t, [])] for t, ms in heads_a.items()}
    common = {t: ms for t, ms in common.items() if ms}
    if not common:
        st.info("The two runs share no per-head metric (same table and metric name), so there "
                "is nothing to compare head by head.")
        return
    table = st.selectbox("Table", list(common), key="compare-table")
    metric = st.selectbox("Metric", headline.order(
        ui.patterns_last(infos_a[table], common[table]),
        headline.headline(root.manifest(run_a), table)), key="compare-metric")
    where = ui.pick_variant(infos_a[table].metrics[metric], key="compare-variant")
    means_a = data.head_means(root.table(run_a, table), metric, where)
    means_b = data.head_means(root.table(run_b, table), metric, where)
    unit = (root.manifest(run_a).get("units") or {}).get(metric)
    models = [root.manifest(r).get("model") or {} for r in (run_a, run_b)]
    values = pd.concat([means_a["value"], means_b["value"]])
    ranges = ("one for both", "each its own")
    shared = st.radio("Colour range", ranges, horizontal=True, key="compare-range",
                      index=0 if same_grid(*models) else 1,
                      help="One range makes the two heatmaps comparable cell by cell; each its "
                           "own keeps a model whose values are all small from washing out "
                           "(the default when the models differ).") == ranges[0]
    zrange = (float(values.min()), float(values.max())) if len(values) and shared else None
    left, right = st.columns(2)
    for column, run_id, means, grid in ((left, run_a, means_a, models[0]),
                                        (right, run_b, means_b, models[1])):
        with column:
            st.caption(ui.literal(run_id))
            ui.show_plot(heatmap_of_means(means, metric, where=dict(where), unit=unit,
                                          n_layers=grid.get("n_layers"),
                                          n_heads=grid.get("n_heads"), table=table,
                                          name=safe_name(run_id, table, "heatmap", metric),
                                          zrange=zrange),
                         key=ui.plot_key("compare", run_id, table, metric, dict(where)))
    if not same_grid(*models):
        st.warning(ui.literal(
            f"The models differ ({models[0].get('name')} {models[0].get('n_layers')}x"
            f"{models[0].get('n_heads')} vs {models[1].get('name')} {models[1].get('n_layers')}x"
            f"{models[1].get('n_heads')}): head indices are not comparable, so heads are "
            "aligned by relative depth (layer / n_layers, in thirds)."))
        n_a = models[0].get("n_layers") or int(means_a["layer"].max()) + 1
        n_b = models[1].get("n_layers") or int(means_b["layer"].max()) + 1
        st.dataframe(compare_by_depth(means_a, means_b, n_a, n_b), hide_index=True)
        return
    diff, stats = compare_heads(means_a, means_b)
    st.caption("Same layer x head grid: heads matched by index." if models[0].get("name") ==
               models[1].get("name") else ui.literal(
                   f"Different models ({models[0].get('name')}, {models[1].get('name')}) with the "
                   "same layer x head grid: heads matched by index."))
    st.dataframe(pd.DataFrame([{k: str(v) for k, v in stats.items()}]), hide_index=True)
    if diff.empty:
        st.info("The runs have no head in common.")
        return
    st.caption("Difference a - b per head (hover: prompts in the smaller run)")
    ui.show_plot(heatmap_of_means(diff, metric, where=dict(where), label=f"{metric} (a - b)",
                                  unit=unit, scale="diverging", table=table,
                                  name=safe_name("compare", table, metric)),
                 key=ui.plot_key("compare-diff", table, metric, dict(where)))


root = ui.runs_root()
st.title("Runs")
entries = root.runs()
if not root.exists():
    st.error(ui.literal(f"The runs folder {root.given} does not exist; start the app with "
                        "--runs-dir pointing at a folder of runs."))
elif not entries:
    st.info("No runs in this folder yet. Make one with: workbench run --model smollm2-135m "
            "--prompts data/ioi.jsonl --runs-dir <this folder>")
else:
    st.dataframe(runs_overview(entries), hide_index=True, width="stretch")
    run_id = ui.chosen_run()
    if run_id:
        with ui.guard():
            details(root, run_id)
        other = ui.compared_run()
        if other:
            with ui.guard():
                compare(root, run_id, other)
