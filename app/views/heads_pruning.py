"""Head pruning: the pruning curve (importance order against random orders), the learned gates'
sparsity / held-out frontier with each lambda's gate map, and head importance; from the tables of
``workbench heads`` runs (parquet only; the learned specs load on the Live intervention page)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import data, ui
from workbench.figures import head_heatmap
from workbench.figures.pruning import gate_frontier, pruning_curve

TABLES = ("pruning_curve", "learned_gates", "head_importance")


def _metric(root: data.RunsRoot, run_id: str) -> str:
    return (root.manifest(run_id).get("heads") or {}).get("metric", "lm_loss")


def curve(root: data.RunsRoot, run_id: str, units: dict, grid: dict) -> None:
    ref = root.table(run_id, "pruning_curve")
    metric = f"mean_{_metric(root, run_id)}"
    rows = data.records(ref, metric)
    tolerance = (root.manifest(run_id).get("heads") or {}).get("tolerance", 0.05)
    ui.show_plot(pruning_curve(rows, metric, tolerance=tolerance, unit=units.get(metric),
                               table="pruning_curve"), key=ui.plot_key("pruning", metric))
    fractions = data.records(ref, "removable_fraction")[["segment", "value"]]
    st.caption(ui.literal(f"Fraction of heads removable with at most {tolerance:.0%} "
                          "degradation, per removal order"))
    st.dataframe(fractions.rename(columns={"segment": "order", "value": "fraction"}),
                 hide_index=True)


def gates(root: data.RunsRoot, run_id: str, units: dict, grid: dict) -> None:
    ref = root.table(run_id, "learned_gates")
    metric = f"mean_{_metric(root, run_id)}"
    summary = pd.concat([data.records(ref, m) for m in ("open_gates", metric, "gate")])
    ui.show_plot(gate_frontier(summary, metric, unit=units.get(metric), table="learned_gates"),
                 key=ui.plot_key("frontier", metric))
    gate_rows = data.records(ref, "gate")
    lambdas = sorted(gate_rows["condition"].dropna().unique())
    if lambdas:
        chosen = st.selectbox("Gates of", lambdas, key="pruning-lambda")
        ui.show_plot(head_heatmap(gate_rows, "gate", where={"condition": chosen},
                                  scale="sequential", unit=units.get("gate"),
                                  table="learned_gates", **grid),
                     key=ui.plot_key("gates", chosen))
        specs = root.manifest(run_id).get("specs") or {}
        if specs:
            st.caption("Specs (load with workbench intervene --spec, or on the Live page)")
            st.code("\n".join(str(v) for v in specs.values()), language=None)


def importance(root: data.RunsRoot, run_id: str, units: dict, grid: dict) -> None:
    ref = root.table(run_id, "head_importance")
    metric = st.radio("Importance", ["importance_norm", "importance"], horizontal=True,
                      key="pruning-importance")
    ui.show_plot(head_heatmap(data.records(ref, metric), metric, scale="sequential",
                              unit=units.get(metric), table="head_importance", **grid),
                 key=ui.plot_key("importance", metric))


root = ui.runs_root()
st.title("Head pruning")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        present = [t for t in TABLES if t in root.record_tables(run_id)]
        manifest = root.manifest(run_id)
        units = manifest.get("units") or {}
        model = manifest.get("model") or {}
        grid = {"n_layers": model.get("n_layers"), "n_heads": model.get("n_heads")}
        if not present:
            st.info(ui.literal("This run has no head-pruning tables (pruning_curve, "
                               "learned_gates, head_importance). Make them with workbench heads "
                               "prune / learn-gates / importance."))
        for table, title, show in (("pruning_curve", "Pruning curve", curve),
                                   ("learned_gates", "Learned gates", gates),
                                   ("head_importance", "Head importance", importance)):
            if table in present:
                st.subheader(title)
                with ui.guard():
                    show(root, run_id, units, grid)
