"""attention_pattern: every stored entry against plain Hugging Face ``output_attentions``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from probes import make_probes
from probes.pattern import pattern_entries
from tests.conftest import DATA, write_jsonl
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.tokens import tokenize_prompt_set


def run_pattern(model, prompt_path, tmp_path, batch_size=2, **params):
    probes = make_probes(["attention_pattern"], {"attention_pattern": params})
    prompt_set = load_prompt_set(prompt_path)
    run = execute_run(model, prompt_set, probes,
                      RunOptions(runs_dir=tmp_path / "runs", batch_size=batch_size, progress=False))
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos)
    return run, run.read_table("attention_pattern").to_pandas(), tokenized


def hf_attentions(hf_model, input_ids: np.ndarray) -> list[np.ndarray]:
    """Per layer ``[head, query, key]`` float64 attention of one unpadded prompt, from plain HF."""
    with torch.inference_mode():
        out = hf_model(input_ids=torch.as_tensor(input_ids)[None], output_attentions=True)
    return [a[0].double().numpy() for a in out.attentions]


def check_against_hf(table: pd.DataFrame, tokenized, hf_model, heads, max_tokens, atol) -> int:
    """Every stored entry equals HF's attention; every visible entry of the chosen heads is there
    (the upper triangle never is). Returns the number of rows checked."""
    got = table.set_index(["prompt_id", "layer", "head", "query_pos", "key_pos"])["value"]
    assert got.index.is_unique
    expected = 0
    for tok in tokenized:
        n = min(tok.n_tokens, max_tokens)
        query, key = np.tril_indices(n)
        for layer, att in enumerate(hf_attentions(hf_model, tok.input_ids)):
            for head in [h for (lay, h) in heads if lay == layer]:
                index = pd.MultiIndex.from_arrays([[tok.id] * len(query), [layer] * len(query),
                                                   [head] * len(query), query, key])
                np.testing.assert_allclose(got.loc[index].to_numpy(), att[head, query, key],
                                           atol=atol, rtol=0)
                expected += len(query)
    assert len(table) == expected
    return expected


def test_pattern_entries_hand_case():
    pattern = torch.tensor([[[1.0, 0.0, 0.0], [0.25, 0.75, 0.0], [0.2, 0.3, 0.5]]])
    slot, query, key, value = pattern_entries(pattern, None)
    assert query.tolist() == [0, 1, 1, 2, 2, 2] and key.tolist() == [0, 0, 1, 0, 1, 2]
    assert value.tolist() == pytest.approx([1.0, 0.25, 0.75, 0.2, 0.3, 0.5])
    assert slot.tolist() == [0] * 6
    _, query, key, _ = pattern_entries(pattern, 2)  # a sliding window of 2 keys drops (2, 0)
    assert list(zip(query.tolist(), key.tolist())) == [(0, 0), (1, 0), (1, 1), (2, 1), (2, 2)]


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_pattern_matches_hugging_face(which, request, small_prompts, tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    model = request.getfixturevalue(which)
    hf = build_tiny_hf_model(TinyConfig(which.split("_")[1]),
                             len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))
    # prompts a (15 tokens) and b are batched with padding; b is longer than max_tokens
    run, table, tokenized = run_pattern(model, small_prompts, tmp_path, heads="0.1,1.0,1.3",
                                        max_tokens=12)
    chosen = [t for t in tokenized if t.id in ("a", "b")]  # the first 2 prompts of the file
    assert check_against_hf(table, chosen, hf, [(0, 1), (1, 0), (1, 3)], 12, atol=1e-5) > 0
    assert set(table.prompt_id) == {"a", "b"} and (table.metric == "pattern").all()
    sums = table.groupby(["prompt_id", "layer", "head", "query_pos"]).value.sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)  # whole rows are stored
    params = run.read_manifest()["probes"][0]["params"]
    assert params["prompt_ids"] == "a,b" and params["max_tokens"] == 12


def test_all_heads_and_chosen_prompt(tiny_gpt2, small_prompts, tmp_path):
    _, table, tokenized = run_pattern(tiny_gpt2, small_prompts, tmp_path, prompt_ids="c")
    [tok] = [t for t in tokenized if t.id == "c"]
    n = tok.n_tokens
    assert set(table.prompt_id) == {"c"}
    assert len(table) == tiny_gpt2.n_layers * tiny_gpt2.n_heads * n * (n + 1) // 2


@pytest.mark.parametrize("params, message", [
    ({"heads": "9.0"}, "head L9H0 is out of range"),
    ({"prompt_ids": "a,nope"}, "no prompt(s) ['nope']"),
    ({"max_tokens": "0"}, "max_tokens='0': Input should be greater than or equal to 1"),
])
def test_bad_parameters(tiny_gpt2, small_prompts, tmp_path, params, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        run_pattern(tiny_gpt2, small_prompts, tmp_path, **params)
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.real_model
def test_real_model_pattern_matches_hugging_face(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M (GQA: 9 query heads share 3 key/value heads): heads of three layers, two
    prompts of different lengths, against HF eager attention."""
    ioi = load_prompt_set(DATA / "ioi.jsonl").prompts[:1]
    natural = load_prompt_set(DATA / "natural.jsonl").prompts[:1]
    path = write_jsonl(tmp_path / "mix.jsonl", [{"id": p.id, "text": p.text}
                                                for p in ioi + natural])
    heads = [(0, 0), (18, 8), (29, 4)]
    _, table, tokenized = run_pattern(smollm2, path, tmp_path, heads="0.0,18.8,29.4")
    check_against_hf(table, tokenized, smollm2_hf, heads, 128, atol=1e-4)
