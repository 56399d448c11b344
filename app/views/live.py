"""Live intervention: load a model once, scale chosen heads by alpha on a typed prompt, compare the
next-token distribution and the logit difference before and after, and save it as a run. The only
page that imports torch (through ``app.live``)."""

from __future__ import annotations

import datetime as dt
import pandas as pd
import streamlit as st

from app import data, ui
from workbench.errors import WorkbenchError
from workbench.heads import format_head, parse_heads

RESULT_KEY = "live-result"
SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
EXAMPLE = "When Mary and John went to the store, John gave a drink to"


def form(default_model: str | None) -> dict | None:
    with st.form("live-form"):
        model = st.selectbox("Model", ui.model_choices(default_model), key="live-model")
        prompt = st.text_area("Prompt", EXAMPLE, key="live-prompt")
        left, right = st.columns(2)
        answer = left.text_input("Answer (optional)", " Mary", key="live-answer")
        distractor = right.text_input("Distractor (optional)", " John", key="live-distractor")
        heads = left.text_input("Heads (layer.head, comma-separated)", "0.0", key="live-heads")
        alpha = right.number_input("Weight alpha (0 = ablation, 1 = unchanged)", 0.0, 10.0,
                                   0.0, 0.25, key="live-alpha")
        top_k = left.slider("Top tokens", 3, 30, 10, key="live-top-k")
        sweep = right.checkbox(f"Also sweep alpha over {', '.join(f'{a:g}' for a in SWEEP)}",
                               key="live-sweep")
        if not st.form_submit_button("Run"):
            return None
    return {"model": model, "prompt": prompt, "answer": answer, "distractor": distractor,
            "heads": heads, "alpha": alpha, "top_k": top_k, "sweep": sweep}


def run(inputs: dict) -> None:
    from app.live import LiveSpec, run_live

    spec = LiveSpec(prompt=inputs["prompt"], heads=tuple(parse_heads(inputs["heads"])),
                    alpha=float(inputs["alpha"]), answer=inputs["answer"] or None,
                    distractor=inputs["distractor"] or None, top_k=int(inputs["top_k"]),
                    sweep=SWEEP if inputs["sweep"] else ())
    st.session_state.pop(RESULT_KEY, None)  # an error leaves no earlier result on screen
    model, lock = ui.load_model(inputs["model"])
    with lock, st.spinner("Running the prompt ..."):
        st.session_state[RESULT_KEY] = run_live(model, spec)


def show(result) -> None:
    spec = result.spec
    heads = ", ".join(map(format_head, spec.heads))
    st.caption(ui.literal(f"{result.model['name']}: heads {heads} scaled by alpha = "
                          f"{spec.alpha:g} at attn.{spec.point}, on the prompt:"))
    st.code(spec.prompt, language=None, wrap_lines=True)
    numbers = [{"quantity": "KL(baseline || intervened) (nats)", "value": result.kl}]
    numbers += [{"quantity": f"logit difference, {c} (logits)", "value": v}
                for c, v in result.logit_diff.items() if c in ("baseline", f"alpha={spec.alpha:g}")]
    st.dataframe(pd.DataFrame(numbers), hide_index=True)
    left, right = st.columns(2)
    left.caption("Next token, baseline")
    left.dataframe(result.baseline, hide_index=True, width="stretch")
    right.caption(ui.literal(f"Next token, alpha = {spec.alpha:g}"))
    right.dataframe(result.intervened, hide_index=True, width="stretch")
    if result.sweep is not None:
        from workbench.figures import dose_response

        metric = "logit_diff" if "logit_diff" in result.sweep.columns else "kl_divergence"
        st.dataframe(result.sweep, width="stretch")
        from app.live import UNITS

        ui.show_plot(dose_response(data.frame(result.records), metric, unit=UNITS[metric],
                                   table="live"), key="live-sweep")


def save(result) -> None:
    from app.live import save_run

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with st.form("live-save"):
        run_id = st.text_input("Run id", f"live-{stamp}", key="live-run-id")
        if not st.form_submit_button("Save as run"):
            return
    root = ui.runs_root()
    data.check_name(run_id, "run id")
    root.inside(root.root / run_id, f"run {run_id!r}")
    if (root.root / run_id).exists():
        st.error(ui.literal(f"A run named {run_id} already exists in {root.root}; choose "
                            "another run id."))
        return
    run = save_run(root.root, run_id, result)
    st.success(ui.literal(f"Saved as run {run.run_id} in {root.root}; choose it in the sidebar "
                          "(Interventions page) to see it with the other runs."))


st.title("Live intervention")
st.caption("Multiply the output of chosen heads (attn.hook_z) by alpha on one prompt: alpha = 0 "
           "ablates them, 1 leaves the model unchanged, 2 doubles them.")
root = ui.runs_root()
run_id = st.session_state.get(ui.RUN_KEY)
default = None
if run_id:
    try:
        default = (root.manifest(run_id).get("model") or {}).get("name")
    except WorkbenchError:
        pass
with ui.guard():
    inputs = form(default)
    if inputs:
        run(inputs)
result = st.session_state.get(RESULT_KEY)
if result is not None:
    with ui.guard():
        show(result)
    with ui.guard():
        save(result)
