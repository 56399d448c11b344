"""Position bias: position profiles by depth (records with a layer and a key position), and the
attention graph of a prompt (records with query and key positions) as an arc diagram."""

from __future__ import annotations

import streamlit as st

from app import data, ui
from app.shaping import attention_digraph
from workbench.figures import position_profile, weighted_graph
from workbench.figures.plot import safe_name
from workbench.heads import format_head

MEAN_OVER_HEADS = "mean over heads"
PROFILE_SCALES = {"linear": "linear", "log": "log scale", "no-key0": "exclude key 0"}


def profiles(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    found = [(t, m) for t, ms in ui.metrics_with(infos, "layer", "key_pos").items() for m in ms]
    if not found:
        st.info("This run has no position profiles (records with a layer and a key_pos), e.g. "
                "from the position-bias, attention-sink or attention_pattern probes.")
        return
    choice = st.selectbox("Profile metric", range(len(found)), key="position-profile",
                          format_func=lambda i: f"{found[i][0]} · {found[i][1]}")
    table, metric = found[choice]
    where = ui.pick_variant(infos[table].metrics[metric], key="position-profile-variant")
    scale = st.radio("Scale", list(PROFILE_SCALES), horizontal=True, key="position-scale",
                     format_func=PROFILE_SCALES.get,
                     help="Token 0 takes most of the attention in most heads and flattens the "
                          "other positions: a log axis or leaving key 0 out shows them.")
    manifest = root.manifest(run_id)
    rows = data.records(root.table(run_id, table), metric, where)
    ui.show_plot(position_profile(rows, metric, where=dict(where), table=table, scale=scale,
                                  unit=(manifest.get("units") or {}).get(metric),
                                  n_layers=(manifest.get("model") or {}).get("n_layers")),
                 key=ui.plot_key("position-profile", table, metric, dict(where), scale))


def graph(root: data.RunsRoot, run_id: str, infos: dict) -> None:
    found = [(t, m) for t, ms in ui.metrics_with(infos, "layer", "query_pos", "key_pos",
                                                 "prompt_id").items() for m in ms]
    if not found:
        st.info("This run has no attention matrices (records with query_pos and key_pos per "
                "prompt); add the attention_pattern probe to a run to draw attention graphs.")
        return
    tokens = data.tokens(root, run_id)
    if tokens is None:
        st.info("This run has no tokens table, so the graph cannot be labelled with tokens.")
        return
    cols = st.columns(4)
    choice = cols[0].selectbox("Matrix metric", range(len(found)), key="position-graph-metric",
                               format_func=lambda i: f"{found[i][0]} · {found[i][1]}")
    table, metric = found[choice]
    where = ui.pick_variant(infos[table].metrics[metric], key="position-graph-variant")
    filters, chosen = pick_matrix(root.table(run_id, table), metric, where, cols[1:])
    prompt_id, layer, head = chosen
    rows = data.records(root.table(run_id, table), metric, filters)
    every = attention_digraph(rows, tokens, prompt_id, 0.0)
    default = default_threshold(every)
    threshold = st.slider("Draw edges with weight above", 0.0, 1.0, default, 0.005,
                          key=ui.plot_key("position-graph-threshold", prompt_id, layer, head),
                          help="Default: the weight that keeps the strongest 2 x (tokens) edges.")
    ui.show_prompt(root, run_id, prompt_id)
    digraph = attention_digraph(rows, tokens, prompt_id, threshold)
    whose = (f"layer {layer}, mean over heads" if head == MEAN_OVER_HEADS
             else format_head((layer, head)))
    st.caption(ui.literal(f"{digraph.number_of_edges()} edges key -> query (self-loops not "
                          f"drawn) of prompt {prompt_id}, {whose}"))
    which = "mean" if head == MEAN_OVER_HEADS else f"H{head}"
    unit = (root.manifest(run_id).get("units") or {}).get(metric)
    ui.show_plot(weighted_graph(digraph, label=metric, unit=unit, node_label="token", table=table,
                                name=safe_name(table, "graph", metric, prompt_id,
                                               f"L{layer}{which}")),
                 key=ui.plot_key("position-graph", table, metric, prompt_id, layer, head))


def default_threshold(graph) -> float:
    """A threshold that keeps about the 2 x n strongest edges of ``graph`` (n = its nodes),
    self-loops aside, rounded down to the slider's step; 0.1 when the graph has no edge."""
    weights = sorted((w for u, v, w in graph.edges(data="weight") if u != v), reverse=True)
    if not weights:
        return 0.1
    keep = weights[min(len(weights), 2 * graph.number_of_nodes()) - 1]
    return max(0.0, float(int(keep * 200) / 200 - 0.005))


def pick_matrix(ref: data.TableRef, metric: str, where: tuple, cols: list) -> tuple:
    """Prompt, layer and head (or the mean over heads) pickers over the prompts and heads that
    have rows; returns the record filter and the choice."""
    index = data.frame(data.read(ref, ("prompt_id", "layer", "head"),
                                 (("metric", metric), *where)))
    prompt_id = cols[0].selectbox("Prompt", sorted(index["prompt_id"].dropna().unique()),
                                  key="position-graph-prompt")
    layers = sorted(int(v) for v in index["layer"].dropna().unique())
    layer = cols[1].selectbox("Layer", layers, key="position-graph-layer")
    heads = sorted(int(v) for v in index.loc[index["layer"] == layer, "head"].dropna().unique())
    head = cols[2].selectbox("Head", [MEAN_OVER_HEADS, *heads], key="position-graph-head")
    filters = (*where, ("prompt_id", prompt_id), ("layer", int(layer)))
    if head != MEAN_OVER_HEADS:
        filters = (*filters, ("head", int(head)))
    return filters, (prompt_id, layer, head)

root = ui.runs_root()
st.title("Position bias")
run_id = ui.chosen_run()
if run_id:
    with ui.guard():
        infos = ui.infos(root, run_id)
        st.subheader("Profiles by depth")
        with ui.guard():
            profiles(root, run_id, infos)
        st.subheader("Attention graph of a prompt")
        with ui.guard():
            graph(root, run_id, infos)
