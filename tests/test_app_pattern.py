"""The Live pattern page under AppTest with the tiny model: a typed prompt's patterns equal
``workbench.forward.attention_patterns``; the text view colours tokens by one row of it; all
heads as thumbnails; before/after a live intervention; an error clears the previous result."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.test_app import MAIN, box, charts

PROMPT = "a b c d a b c d"


@pytest.fixture
def page(tmp_path, monkeypatch):
    (tmp_path / "runs").mkdir()
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(tmp_path / "runs"))
    at = AppTest.from_file(MAIN, default_timeout=180)
    at.run()
    at.switch_page("views/pattern.py").run()
    return at


def submit(at, prompt=PROMPT, heads="", alpha=0.0):
    at.selectbox(key="pattern-model").set_value("tiny-llama")
    at.text_area(key="pattern-prompt").set_value(prompt)
    at.text_input(key="pattern-heads").set_value(heads)
    at.number_input(key="pattern-alpha").set_value(alpha)
    at.button[0].click().run()
    return at


def reference(prompt, heads=(), alpha=1.0):
    from app.live import _batch
    from app.ui import load_model
    from workbench.forward import attention_patterns
    from workbench.heads import scale_heads_hooks
    from workbench.prompts import Prompt

    model, _ = load_model("tiny-llama")
    _, batch = _batch(model, Prompt(id="x", text=prompt, source="app"))
    hooks = scale_heads_hooks(heads, alpha) if heads else ()
    return attention_patterns(model, batch, hooks).numpy()


def test_live_pattern_of_a_typed_prompt(page):
    from app.components import unpack

    at = submit(page)
    assert not at.exception and not at.error, [e.value for e in at.error]
    want = reference(PROMPT)
    box(at, "Layer").set_value(1).run()
    box(at, "Head").set_value(2).run()
    text, pattern = charts(at)[:2]
    z = np.array(pattern["data"][0]["z"], dtype=float)
    n = want.shape[-1]
    assert np.allclose(np.nan_to_num(z[:n, :n]), np.tril(want[1, 2]), atol=1e-6)
    query = box(at, "Attention from token").value
    colours = np.array(text["data"][0]["z"], dtype=float).ravel()
    assert np.allclose(colours[:n], want[1, 2, query], atol=1e-6)
    assert PROMPT in [c.value for c in at.code]
    # all heads: one canvas of every head's pattern (quantized to 1/65535, lower triangle)
    at.radio(key="pattern-view").set_value("All heads").run()
    assert not at.exception
    (view,) = at.get("bidi_component")[-1:]
    header, weights = unpack(view.proto.bytes)
    assert (header["n_layers"], header["n_heads"], header["n"]) == want.shape[:3]
    assert header["causal"] and header["tokens"][0].startswith("0:")
    lower = np.tril_indices(n)
    assert np.allclose(weights.reshape(*want.shape[:2], -1) / 65535,
                       want[..., lower[0], lower[1]], atol=1 / 65535)


def test_before_and_after_an_intervention_and_errors_clear_the_result(page):
    at = submit(page, heads="0.1", alpha=0.0)
    assert not at.exception and not at.error
    before, after = reference(PROMPT), reference(PROMPT, ((0, 1),), 0.0)
    box(at, "Layer").set_value(2).run()
    patterns = [c for c in charts(at) if c["layout"]["yaxis"].get("title", {}).get("text") ==
                "query (position:token)"]
    assert len(patterns) == 2
    n = before.shape[-1]
    for chart, want in zip(patterns, (before, after)):
        z = np.nan_to_num(np.array(chart["data"][0]["z"], dtype=float))[:n, :n]
        assert np.allclose(z, np.tril(want[2, 0]), atol=1e-6)
    at = submit(at, heads="99.0")  # a head outside the model: an error, no stale result
    assert at.error and not charts(at)
