"""Circuits: the circuit graph of each task, per-head effects, faithfulness, and the overlap between
tasks (matrix, shared heads, random baseline). Which tables and metrics: ``app/tables.py``."""

from __future__ import annotations

import streamlit as st

from app import data, tables, ui
from app.shaping import (circuit_digraph, pair_matrix, scalar_table, shared_heads,
                         split_pairs)
from workbench.figures import circuit_graph, heatmap_of_means, overlap_matrix
from workbench.figures.circuit_sets import grid_plot
from workbench.figures.plot import safe_name


def _missing(what: str, role: tables.Role) -> None:
    st.info(ui.literal(f"This run has no {what}: no table named {' / '.join(role.tables)} or "
                       f"holding the metric(s) {', '.join(role.metrics)}. Circuit runs "
                       "(workbench circuits) write them."))


def edge_graphs(root: data.RunsRoot, run_id: str, infos: dict) -> bool:
    """An edge-level circuit (``workbench circuits --level edge``): every circuit edge drawn with
    its own score as the arrow's weight. False when the run has none."""
    from circuits.edges.graph import edge_digraph  # torch-free

    table = next((t for t in sorted(infos) if "edge_member" in infos[t].metrics), None)
    if table is None:
        return False
    rows = data.frame(data.read(root.table(run_id, table), (*data.READ_COLUMNS, "probe"),
                                (("metric", "edge_member"),)))
    left, right = st.columns(2)
    method = left.selectbox("Method", sorted(rows["probe"].unique()), key="circuits-edge-method")
    rows = rows[rows["probe"] == method]
    task = right.selectbox("Task", sorted(rows[tables.TASK_COLUMN].unique()),
                           key="circuits-edge-task")
    mine = rows[rows[tables.TASK_COLUMN] == task]
    model = root.manifest(run_id).get("model") or {}
    n_heads, n_kv = int(model.get("n_heads", 1)), int(model.get("n_key_value_heads", 1))
    st.caption(ui.literal(f"{len(mine)} edges (arrow width and colour: each edge's own score; "
                          f"rows {n_heads}+: MLP, then key/value inputs)"))
    ui.show_plot(circuit_graph(edge_digraph(mine["condition"], mine["value"], n_heads, n_kv),
                               label="edge score", n_heads=n_heads + 1 + 2 * n_kv, table=table,
                               name=safe_name(table, "edge_circuit", method, task)),
                 key=ui.plot_key("edge-circuit", table, method, task))
    return True


def graphs(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    if edge_graphs(root, run_id, infos):
        return
    found = tables.find(tables.CIRCUIT_MEMBERS, infos)
    if not found:
        _missing("circuit", tables.CIRCUIT_MEMBERS)
        return
    table, (member, *_) = found[0]
    ref = root.table(run_id, table)
    members = data.records(ref, member)
    tasks = sorted(members[tables.TASK_COLUMN].dropna().unique()) or [None]
    task = st.selectbox("Task", tasks, key="circuits-task")
    mine = members if task is None else members[members[tables.TASK_COLUMN] == task]
    edges = None
    edge_tables = [t for t, _ in tables.find(tables.CIRCUIT_EDGES, infos) if t == table]
    if edge_tables:
        edges = data.records(ref, tables.CIRCUIT_EDGES.metrics[0])
        edges = edges if task is None else edges[edges[tables.TASK_COLUMN] == task]
    model = root.manifest(run_id).get("model") or {}
    st.caption(ui.literal(f"{len(mine)} heads (colour: the value of their {member} rows); "
                          f"{len(edges) if edges is not None else 0} edges"))
    ui.show_plot(circuit_graph(circuit_digraph(mine, edges), label=member,
                               n_heads=model.get("n_heads"), table=table,
                               name=safe_name(table, "circuit", task)),
                 key=ui.plot_key("circuit", table, task))


def effects(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    found = tables.find(tables.HEAD_EFFECTS, infos)
    if not found:
        _missing("per-head effects", tables.HEAD_EFFECTS)
        return
    options = [(t, m) for t, ms in found for m in ms]
    left, right = st.columns(2)
    choice = left.selectbox("Effect", range(len(options)), key="circuits-effect",
                            format_func=lambda i: f"{options[i][0]} · {options[i][1]}")
    table, metric = options[choice]
    info = infos[table].metrics[metric]
    ref = root.table(run_id, table)
    variants = data.with_heads(ref, metric, info.variants)
    if not variants:
        st.info(ui.literal(f"{table} · {metric} has no per-head rows."))
        return
    with right:  # only variants with heads (DLA's attn_bias, constant and embed rows have none)
        where = ui.pick_variant(info, key=f"circuits-effect-variant-{table}-{metric}",
                                variants=variants)
    means = data.head_means(ref, metric, where)
    manifest = root.manifest(run_id)
    model = manifest.get("model") or {}
    ui.show_plot(heatmap_of_means(means, metric, where=dict(where), scale="diverging",
                                  unit=(manifest.get("units") or {}).get(metric), table=table,
                                  n_layers=model.get("n_layers"), n_heads=model.get("n_heads")),
                 key=ui.plot_key("circuits-effect", table, metric, dict(where)))


def faithfulness(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    found = tables.find(tables.FAITHFULNESS, infos) + tables.find(tables.TASK_METRICS, infos)
    if not found:
        _missing("faithfulness", tables.FAITHFULNESS)
        return
    for table, _ in found:
        rows = data.frame(data.read(root.table(run_id, table), data.READ_COLUMNS))
        st.caption(ui.literal(f"{table}: values per task (columns)"))
        st.dataframe(scalar_table(rows), width="stretch")


def overlap(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    found = tables.find(tables.OVERLAP, infos)
    if not found:
        _missing("overlap between tasks", tables.OVERLAP)
        return
    table, metrics = found[0]
    rows = data.frame(data.read(root.table(run_id, table), data.READ_COLUMNS))
    metric = st.selectbox("Overlap metric", metrics, key="circuits-overlap-metric")
    mine = rows[(rows["metric"] == metric) & rows["layer"].isna()]
    baseline_rows = rows[rows["metric"].isin(tables.OVERLAP_BASELINE)]
    baseline = float(baseline_rows["value"].mean()) if len(baseline_rows) else None
    matrix = pair_matrix(mine)
    if matrix.empty:
        st.info(ui.literal(f"{table}.{metric} names no pair of tasks (segment 'A"
                           f"{tables.PAIR_SEPARATOR}B')."))
        return
    units = root.manifest(run_id).get("units") or {}
    bounded = metric in tables.OVERLAP.metrics  # Jaccard, overlap coefficient: in [0, 1]
    ui.show_plot(overlap_matrix(matrix, metric=metric, unit=units.get(metric), baseline=baseline,
                                table=table, zmax=1.0 if bounded else None),
                 key=ui.plot_key("overlap", table, metric))
    pairs = split_pairs(rows[rows["layer"].isna()])
    per_pair = pairs.pivot_table(index=["task_a", "task_b"], columns="metric", values="value")
    st.caption("Every stored number per pair of tasks (the random baseline among them)")
    st.dataframe(per_pair, width="stretch")
    shared = tables.find(tables.SHARED_HEADS, infos)
    if shared:
        st.caption("Heads shared by both circuits")
        rows = data.records(root.table(run_id, shared[0][0]), tables.SHARED_HEADS.metrics[0])
        st.dataframe(shared_heads(rows), hide_index=True, width="stretch")


def grids(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    """Patching grids (``workbench circuits --grids``): layer x position per task and component."""
    rows = data.frame(data.read(root.table(run_id, tables.PATCHING_GRID), data.READ_COLUMNS))
    left, right = st.columns(2)
    task = left.selectbox("Task", sorted(rows[tables.TASK_COLUMN].unique()),
                          key="circuits-grid-task")
    rows = rows[rows[tables.TASK_COLUMN] == task]
    condition = right.selectbox("Component; direction", sorted(rows["condition"].unique()),
                                key="circuits-grid-condition")
    model = root.manifest(run_id).get("model") or {}
    unit = (root.manifest(run_id).get("units") or {}).get("score")
    ui.show_plot(grid_plot(rows[rows["condition"] == condition], n_layers=model.get("n_layers"),
                           tokens=data.tokens(root, run_id), unit=unit,
                           table=tables.PATCHING_GRID),
                 key=ui.plot_key("circuits-grid", task, condition))


root = ui.runs_root()
st.title("Circuits")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        infos = ui.infos(root, run_id)
        sections = [("Circuit graph", graphs), ("Per-head effects", effects),
                    ("Faithfulness", faithfulness), ("Overlap between tasks", overlap)]
        if tables.PATCHING_GRID in infos:
            sections.insert(2, ("Patching grids (layer x position)", grids))
        for title, section in sections:
            st.subheader(title)
            with ui.guard():
                section(root, run_id, infos)
