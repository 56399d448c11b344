"""Attention entropy: hand-computed cases, and every record against plain Hugging Face attentions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from probes import make_probes
from probes.entropy import attention_entropy, segment_entropy
from tests.conftest import DATA
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.tokens import tokenize_prompt_set


def test_entropy_hand_cases():
    pattern = torch.tensor([[[
        [1.0, 0.0, 0.0, 0.0],            # one key: 0
        [0.5, 0.5, 0.0, 0.0],            # uniform over 2: ln 2
        [0.5, 0.25, 0.25, 0.0],          # 1.5 ln 2
        [0.25, 0.25, 0.25, 0.25],        # uniform over 4: ln 4
    ]]])
    got = attention_entropy(pattern)[0, 0]
    want = torch.tensor([0.0, math.log(2), 1.5 * math.log(2), math.log(4)])
    assert torch.allclose(got, want, atol=1e-7)


def test_segment_entropy_hand_case():
    rows = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]])
    in_seg = torch.tensor([[False, True, False, True]])
    ent, mass = segment_entropy(rows, in_seg, renormalise=True)
    assert mass.item() == pytest.approx(0.6)
    assert ent.item() == pytest.approx(math.log(3) - (2 / 3) * math.log(2), abs=1e-6)
    raw, _ = segment_entropy(rows, in_seg, renormalise=False)
    assert raw.item() == pytest.approx(-(0.2 * math.log(0.2) + 0.4 * math.log(0.4)), abs=1e-6)
    none, zero = segment_entropy(rows, torch.zeros(1, 4, dtype=torch.bool))
    assert none.item() == 0.0 and zero.item() == 0.0


def hf_attentions(hf_model, input_ids: np.ndarray) -> list[np.ndarray]:
    """Per layer ``[head, query, key]`` float64 attention of one unpadded prompt, from plain HF."""
    with torch.inference_mode():
        out = hf_model(input_ids=torch.as_tensor(input_ids)[None], output_attentions=True)
    return [a[0].double().numpy() for a in out.attentions]


def reference_entropy(att: np.ndarray) -> np.ndarray:
    """``[head, query]`` entropy in nats, by the definition, in float64 numpy."""
    logs = np.where(att > 0, np.log(np.where(att > 0, att, 1.0)), 0.0)
    return -(att * logs).sum(-1)


def run_entropy(model, prompt_path, tmp_path, batch_size=2, **params):
    probes = make_probes(["attention_entropy"], {"attention_entropy": params})
    prompt_set = load_prompt_set(prompt_path)
    run = execute_run(model, prompt_set, probes,
                      RunOptions(runs_dir=tmp_path / "runs", batch_size=batch_size, progress=False))
    table = run.read_table("attention_entropy").to_pandas()
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos)
    return table, tokenized


def check_against_hf(table: pd.DataFrame, tokenized, hf_model, n_layers, atol):
    index = ["prompt_id", "layer", "head", "query_pos"]
    ent = table[table.metric == "entropy"].set_index(index).sort_index()
    norm = table[table.metric == "entropy_norm"].set_index(index).sort_index()
    expected_rows = 0
    worst = 0.0
    for tok in tokenized:
        atts = hf_attentions(hf_model, tok.input_ids)
        assert len(atts) == n_layers
        for layer, att in enumerate(atts):
            ref = reference_entropy(att)  # [head, query]
            heads, queries = np.meshgrid(np.arange(ref.shape[0]), np.arange(1, ref.shape[1]),
                                         indexing="ij")
            keys = list(zip([tok.id] * heads.size, [layer] * heads.size, heads.ravel(),
                            queries.ravel()))
            got = ent.loc[keys, "value"].to_numpy()
            want = ref[:, 1:].ravel()
            worst = max(worst, float(np.abs(got - want).max()))
            np.testing.assert_allclose(got, want, atol=atol, rtol=0)
            got_norm = norm.loc[keys, "value"].to_numpy()
            np.testing.assert_allclose(got_norm, want / np.log(queries.ravel() + 1), atol=atol,
                                       rtol=0)
            expected_rows += heads.size
    assert len(ent) == expected_rows == len(norm)  # padding and query 0 never recorded
    return worst


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_probe_matches_hugging_face_on_tiny_models(which, request, small_prompts, tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    model = request.getfixturevalue(which)
    hf = build_tiny_hf_model(TinyConfig(which.split("_")[1]),
                             len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))
    table, tokenized = run_entropy(model, small_prompts, tmp_path, batch_size=2)
    # fp32 patterns of the bridge and of HF differ by ~1e-6 (op order); 1e-4 is the bound
    worst = check_against_hf(table, tokenized, hf, model.n_layers, atol=1e-4)
    assert worst < 1e-4
    # run-level means are the mean over every recorded (prompt, query)
    ent = table[table.metric == "entropy"].groupby(["layer", "head"]).value.mean()
    means = table[table.metric == "mean_entropy"].set_index(["layer", "head"]).value
    assert means.isna().sum() == 0 and len(means) == model.n_layers * model.n_heads
    np.testing.assert_allclose(means.sort_index().to_numpy(), ent.sort_index().to_numpy(),
                               rtol=1e-12)
    assert table[table.metric == "mean_entropy"].prompt_id.isna().all()


def test_segment_entropy_matches_hugging_face(tiny_llama, small_prompts, tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    hf = build_tiny_hf_model(TinyConfig("llama"),
                             len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))
    table, tokenized = run_entropy(tiny_llama, small_prompts, tmp_path, segment="names")
    index = ["prompt_id", "layer", "head"]
    seg = table[table.metric == "segment_entropy"].set_index(index).sort_index()
    mass = table[table.metric == "segment_mass"].set_index(index).sort_index()
    assert (seg.segment == "names").all()
    for tok in tokenized:
        last = tok.n_tokens - 1
        keys = tok.segments["names"]
        assert (seg.loc[tok.id, "query_pos"] == last).all()
        for layer, att in enumerate(hf_attentions(hf, tok.input_ids)):
            row = att[:, last, :]  # [head, key]
            m = row[:, keys].sum(-1)
            p = row[:, keys] / m[:, None]
            want = -(p * np.log(p)).sum(-1)
            got = seg.loc[(tok.id, layer), "value"].to_numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
            np.testing.assert_allclose(mass.loc[(tok.id, layer), "value"].to_numpy(), m,
                                       atol=1e-6)


def test_batched_equals_one_prompt_per_batch(tiny_llama, small_prompts, tmp_path):
    a, _ = run_entropy(tiny_llama, small_prompts, tmp_path / "a", batch_size=3, segment="names")
    b, _ = run_entropy(tiny_llama, small_prompts, tmp_path / "b", batch_size=1, segment="names")
    key = ["metric", "prompt_id", "layer", "head", "query_pos"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b)
    np.testing.assert_allclose(a.value, b.value, atol=1e-5)


def test_hooks_leave_the_model_unchanged(tiny_llama, small_prompts, tmp_path):
    from workbench.models import PARITY_TEXT, encode

    ids = torch.tensor([encode(tiny_llama.tokenizer, PARITY_TEXT, prepend_bos=False)])
    with torch.inference_mode():
        before = tiny_llama.bridge(ids)
    run_entropy(tiny_llama, small_prompts, tmp_path, segment="names")
    with torch.inference_mode():
        after = tiny_llama.bridge(ids)
    assert torch.equal(before, after)
    assert not any(hp.fwd_hooks for hp in tiny_llama.bridge.hook_dict.values())


@pytest.mark.real_model
def test_real_model_entropy_matches_hugging_face(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M: every entropy record (30 layers x 9 heads x every query) to 1e-4."""
    from tests.conftest import write_jsonl

    natural = load_prompt_set(DATA / "natural.jsonl").prompts[:4]
    ioi = load_prompt_set(DATA / "ioi.jsonl").prompts[:4]
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"id": p.id, "text": p.text} for p in natural + ioi])
    table, tokenized = run_entropy(smollm2, path, tmp_path, batch_size=4)
    worst = check_against_hf(table, tokenized, smollm2_hf, 30, atol=1e-4)
    assert worst < 1e-4
