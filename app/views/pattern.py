"""Live pattern: type any prompt, and see what the loaded model's heads attend to, computed on the
fly (as CircuitsVis): one head's pattern over the tokens, the text coloured by the attention one
token pays to the others, and every head as a thumbnail, a layer per row (BertViz's model view;
click one to enlarge it). With heads to scale, the same views before and after the live
intervention (``attn.hook_z`` x alpha, as on the Live intervention page). Loads the model through
``app.live`` (torch), like the Live intervention page."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import ui
from workbench.errors import WorkbenchError
from workbench.figures import attention_pattern, attention_text
from app.components import SCALES, model_view, token_view
from workbench.heads import format_head, parse_heads

RESULT_KEY = "pattern-result"
LAYER_KEY, HEAD_KEY, VIEW_KEY, QUERY_KEY = ("pattern-layer", "pattern-head", "pattern-view",
                                            "pattern-query")
VIEWS = ("One head", "All heads")
EXAMPLE = "The cat sat on the mat. The cat sat on the"


def form(default_model: str | None) -> dict | None:
    with st.form("pattern-form"):
        model = st.selectbox("Model", ui.model_choices(default_model), key="pattern-model")
        prompt = st.text_area("Prompt", EXAMPLE, key="pattern-prompt")
        left, right = st.columns(2)
        heads = left.text_input("Intervention: heads to scale (optional, e.g. L9H6, L10H7)",
                                "", key="pattern-heads")
        alpha = right.number_input("Weight alpha (0 = ablation)", 0.0, 10.0, 0.0, 0.25,
                                   key="pattern-alpha")
        if not st.form_submit_button("Show attention"):
            return None
    return {"model": model, "prompt": prompt, "heads": heads, "alpha": alpha}


def compute(inputs: dict) -> None:
    """Run the prompt; the result (or the error) replaces the previous one, so what is shown
    always belongs to the inputs above it."""
    from app.live import live_patterns

    st.session_state.pop(RESULT_KEY, None)
    heads = tuple(parse_heads(inputs["heads"])) if inputs["heads"].strip() else ()
    model, lock = ui.load_model(inputs["model"])
    with lock, st.spinner("Running the prompt ..."):
        st.session_state[RESULT_KEY] = live_patterns(model, inputs["prompt"], heads,
                                                     float(inputs["alpha"]))


def records(patterns, layer: int, head: int) -> pd.DataFrame:
    """One head's pattern as records (metric ``attn``), the shape the pattern figure reads."""
    p = patterns[layer, head]
    n = p.shape[0]
    q, k = [a.ravel() for a in np.indices((n, n))]
    keep = k <= q
    return pd.DataFrame({"metric": "attn", "layer": layer, "head": head, "prompt_id": "live",
                         "query_pos": q[keep], "key_pos": k[keep], "value": p[q[keep], k[keep]]})


def one_head(result, tokens: pd.DataFrame) -> None:
    n_layers, n_heads = result.before.shape[:2]
    left, mid, right = st.columns(3)
    layer = left.selectbox("Layer", range(n_layers), key=LAYER_KEY)
    head = mid.selectbox("Head", range(n_heads), key=HEAD_KEY)
    labels = [f"{i}:{t}" for i, t in enumerate(result.tokens)]
    if st.session_state.get(QUERY_KEY) not in range(len(labels)):
        st.session_state[QUERY_KEY] = len(labels) - 1
    query = right.selectbox("Attention from token", range(len(labels)), key=QUERY_KEY,
                            format_func=lambda i: labels[i])
    sides = [("before", result.before)] + ([("after", result.after)] if result.after is not None
                                           else [])
    columns = st.columns(len(sides))
    for column, (side, patterns) in zip(columns, sides):
        with column:
            if len(sides) > 1:
                st.caption(side if side == "before" else ui.literal(
                    f"after: heads {', '.join(map(format_head, result.heads))} x "
                    f"{result.alpha:g}"))
            ui.show_plot(attention_text(result.tokens, patterns[layer, head, query], query,
                                        f"{format_head((layer, head))}: attention from "
                                        f"{labels[query]}",
                                        name=f"live-text-{format_head((layer, head))}-{side}"),
                         key=f"pattern-text-{side}-{layer}-{head}-{query}")
            token_view(patterns[layer, head], result.tokens, key=f"pattern-tokens-{side}")
            ui.show_plot(attention_pattern(records(patterns, layer, head), tokens, "attn",
                                           "live", layer, head,
                                           name=f"live-pattern-{format_head((layer, head))}-{side}"),
                         key=f"pattern-one-{side}-{layer}-{head}")


def all_heads(result) -> None:
    def enlarge() -> None:
        clicked = (st.session_state.get("pattern-all") or {}).get("clicked")
        if clicked:
            st.session_state[LAYER_KEY] = int(clicked["layer"])
            st.session_state[HEAD_KEY] = int(clicked["head"])
            st.session_state[VIEW_KEY] = VIEWS[0]

    scale = st.radio("Colour", SCALES, horizontal=True, key="pattern-all-scale",
                     help="log: 0.001 to 1 on a log scale (legible at 128 tokens); per head: "
                          "each thumbnail from 0 to its own largest weight on keys after the "
                          "first (key 0 is the usual sink); linear: 0 to 1.")
    st.caption("Every head on this prompt, a layer per row (BertViz's model view). Hover: the "
               "head, the query and key tokens and the weight; click a thumbnail to enlarge it.")
    model_view(result.before, result.tokens, scale=scale, key="pattern-all", on_click=enlarge)


st.title("Live pattern")
st.caption("Type a prompt and see each head's attention, computed now with the loaded model.")
root = ui.runs_root()
default = None
try:
    run_id = st.session_state.get(ui.RUN_KEY)
    default = (root.manifest(run_id).get("model") or {}).get("name") if run_id else None
except WorkbenchError:
    pass
default = st.session_state.get("pattern-model-default") or default  # from the Atlas page
autorun = None
if st.session_state.pop("pattern-autorun", False):  # from the head page: run it at once
    if default in ui.model_choices(default):  # (a model that can be loaded here)
        st.session_state["pattern-model"] = default
        st.session_state.setdefault("pattern-prompt", EXAMPLE)
        st.session_state["pattern-heads"] = ""
        autorun = {"model": default, "prompt": st.session_state["pattern-prompt"], "heads": "",
                   "alpha": 0.0}
with ui.guard():
    inputs = form(default) or autorun
    if inputs:
        try:
            compute(inputs)
        except Exception:
            st.session_state.pop(RESULT_KEY, None)
            raise
result = st.session_state.get(RESULT_KEY)
if result is not None:
    st.caption(ui.literal(f"{result.model}, {len(result.tokens)} tokens:"))
    st.code(result.text, language=None, wrap_lines=True)
    tokens = pd.DataFrame({"prompt_id": "live", "pos": range(len(result.tokens)),
                           "token": result.tokens})
    view = st.radio("View", VIEWS, horizontal=True, key=VIEW_KEY)
    with ui.guard():
        if view == VIEWS[0]:
            one_head(result, tokens)
        else:
            all_heads(result)
