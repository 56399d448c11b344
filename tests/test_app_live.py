"""The live intervention: its numbers against plain Hugging Face with a hand-made hook on the
o_proj input, the Live page under AppTest, and the saved run as the other pages read it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from streamlit.testing.v1 import AppTest

from app.live import LiveSpec, run_live
from tests.conftest import ROOT
from workbench.errors import InputError
from workbench.models import encode
from workbench.heads import format_head

PROMPT = "When Mary and John went to the store, John gave a drink to"
HEADS = ((1, 0), (2, 3))


def hf_reference(hf, model, heads, alpha, answer=" Mary", distractor=" John"):
    """Next-token probabilities and logit difference from plain HF, with each head's slice of
    the o_proj input (GPT-2: c_proj) multiplied by ``alpha``."""
    d_head = model.info.d_head
    handles = []
    for layer, head in heads:
        block = hf.model.layers[layer].self_attn.o_proj if hasattr(hf, "model") else \
            hf.transformer.h[layer].attn.c_proj

        def pre(module, args, head=head):
            x = args[0].clone()
            x[..., head * d_head:(head + 1) * d_head] *= alpha
            return (x, *args[1:])
        handles.append(block.register_forward_pre_hook(pre))
    ids = encode(model.tokenizer, PROMPT, prepend_bos=model.info.prepend_bos)
    try:
        with torch.inference_mode():
            logits = hf(input_ids=torch.tensor([ids])).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
    a = model.tokenizer(answer, add_special_tokens=False).input_ids[0]
    d = model.tokenizer(distractor, add_special_tokens=False).input_ids[0]
    return torch.softmax(logits, -1), float(logits[a] - logits[d])


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_live_numbers_match_hugging_face(which, request):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    model = request.getfixturevalue(which)
    hf = build_tiny_hf_model(TinyConfig(which.split("_")[1]),
                             len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))
    spec = LiveSpec(PROMPT, HEADS, 0.5, " Mary", " John", top_k=5, sweep=(0.0, 1.0, 2.0))
    result = run_live(model, spec)
    p_base, ld_base = hf_reference(hf, model, HEADS, 1.0)
    p_new, ld_new = hf_reference(hf, model, HEADS, 0.5)
    assert result.logit_diff["baseline"] == pytest.approx(ld_base, abs=1e-4)
    assert result.logit_diff["alpha=0.5"] == pytest.approx(ld_new, abs=1e-4)
    assert abs(ld_new - ld_base) > 1e-3  # the intervention changed something
    for table, probs in ((result.baseline, p_base), (result.intervened, p_new)):
        assert table["token_id"].tolist() == probs.topk(5).indices.tolist()
        np.testing.assert_allclose(table["probability"], probs.topk(5).values.numpy(),
                                   atol=1e-6)
    kl = float((p_base * (p_base.log() - p_new.log())).sum())
    assert result.kl == pytest.approx(kl, abs=1e-5)
    assert result.logit_diff["alpha=1"] == result.logit_diff["baseline"]  # alpha = 1: a no-op
    assert result.sweep.loc["alpha=1", "kl_divergence"] == 0.0
    for alpha in (0.0, 2.0):
        assert result.sweep.loc[f"alpha={alpha:g}", "logit_diff"] == pytest.approx(
            hf_reference(hf, model, HEADS, alpha)[1], abs=1e-4)


def test_live_bad_input(tiny_gpt2):
    with pytest.raises(InputError, match=f"head {format_head((9, 0))} is out of range"):
        run_live(tiny_gpt2, LiveSpec(PROMPT, ((9, 0),), 0.0))
    with pytest.raises(InputError, match="both an answer and a distractor"):
        run_live(tiny_gpt2, LiveSpec(PROMPT, ((0, 0),), 0.0, answer=" Mary"))
    with pytest.raises(InputError, match="at least one head"):
        run_live(tiny_gpt2, LiveSpec(PROMPT, (), 0.0))


def test_live_page_runs_and_saves_a_run(tmp_path, monkeypatch, tiny_gpt2):
    runs = tmp_path / "runs"
    runs.mkdir()
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    at.switch_page("views/live.py").run()
    assert not at.exception
    at.selectbox(key="live-model").set_value("tiny-gpt2")
    at.text_input(key="live-heads").set_value("1.0, 2.3")
    at.number_input(key="live-alpha").set_value(0.5)
    at.checkbox(key="live-sweep").check()
    at.button[0].click().run()  # the form's Run button
    assert not at.exception and not at.error, [e.value for e in at.error]
    expected = run_live(tiny_gpt2, LiveSpec(PROMPT, HEADS, 0.5, " Mary", " John", top_k=10))
    numbers = at.dataframe[0].value.set_index("quantity")["value"]
    assert numbers["logit difference, alpha=0.5 (logits)"] == pytest.approx(
        expected.logit_diff["alpha=0.5"], abs=1e-9)
    assert at.dataframe[2].value["token_id"].tolist() == expected.intervened["token_id"].tolist()
    assert len(at.get("plotly_chart")) == 1  # the sweep's dose-response curve
    at.text_input(key="live-run-id").set_value("../escape")
    at.button[1].click().run()
    assert "not a plain name" in " ".join(e.value for e in at.error).replace("\\", "")
    at.text_input(key="live-run-id").set_value("live-test")
    at.button[1].click().run()
    assert not at.exception and at.success
    manifest = json.loads((runs / "live-test" / "run.json").read_text())
    assert manifest["kind"] == "live_intervention" and manifest["status"] == "complete"
    assert manifest["intervention"]["heads"] == [format_head((1, 0)), format_head((2, 3))]
    table = pq.read_table(runs / "live-test" / "live_intervention.parquet").to_pandas()
    saved = table[(table.metric == "logit_diff") & (table.condition == "alpha=0.5")]
    assert saved.value.iloc[0] == pytest.approx(expected.logit_diff["alpha=0.5"], abs=1e-9)
    assert {"prompts", "tokens"} <= {p.stem for p in (runs / "live-test").glob("*.parquet")}
    # the saved run is a run like any other: its sweep shows on the Interventions page
    at.run()  # the sidebar was drawn before the save
    at.sidebar.selectbox(key="run").set_value("live-test").run()
    at.switch_page("views/interventions.py").run()
    assert not at.exception and not at.error
    assert at.selectbox(key="interventions-table").value == "live_intervention"
    assert len(at.get("plotly_chart")) == 2  # logit_diff and kl_divergence sweeps


def test_live_results_are_tied_to_their_inputs(tmp_path, monkeypatch, tiny_gpt2):
    """Issue 15 defect 7: the prompt is shown with the result; an error leaves no earlier result
    (nor its Save button) on screen; a duplicate run id gets a GUI message, not --resume."""
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "taken").mkdir()
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=120)
    at.run()
    at.switch_page("views/live.py").run()
    at.selectbox(key="live-model").set_value("tiny-gpt2")
    at.text_input(key="live-heads").set_value("1.0")
    at.button[0].click().run()
    assert not at.error and at.dataframe
    assert PROMPT in [c.value for c in at.code]
    at.text_input(key="live-run-id").set_value("taken")
    at.button[1].click().run()
    message = " ".join(e.value for e in at.error).replace("\\", "")
    assert "already exists" in message and "--resume" not in message
    at.text_input(key="live-heads").set_value("9.0")  # outside the model
    at.button[0].click().run()
    assert at.error and not at.dataframe and len(at.button) == 1
