"""The shipped lost-in-the-middle retrieval set: segments, depths, answers; behaviour on SmolLM2."""

from __future__ import annotations

import re
import sys
from collections import Counter

import pytest

from tests.conftest import DATA
from workbench.prompts import load_prompt_set

RETRIEVAL = DATA / "retrieval.jsonl"


def test_segments_depths_and_answers():
    prompts = load_prompt_set(RETRIEVAL).prompts
    assert len(prompts) == 96
    counts = Counter((p.meta["depth"], p.meta["depth_fraction"]) for p in prompts)
    assert counts == {("beginning", 0.0): 16, ("beginning", 0.1818): 16, ("middle", 0.3636): 16,
                      ("middle", 0.6364): 16, ("end", 0.8182): 16, ("end", 1.0): 16}
    for p in prompts:
        text = p.text
        passage = text[slice(*p.segments["passage"])]
        needle = text[slice(*p.segments["needle"])]
        question = text[slice(*p.segments["question"])]
        lines = passage.split("\n")
        pairs = [tuple(line.split(": ")) for line in lines]
        assert len(pairs) == p.meta["n_pairs"] == 12 and all(len(x) == 2 for x in pairs)
        key, value = needle.split(": ")
        assert lines[p.meta["needle_index"]] == needle and key == p.meta["key"]
        assert p.segments["passage"][0] <= p.segments["needle"][0]
        assert p.segments["needle"][1] <= p.segments["passage"][1]
        assert p.answer == " " + value
        assert p.distractor == " " + pairs[p.meta["distractor_index"]][1] != p.answer
        assert len({k for k, _ in pairs}) == 12 and len({v for _, v in pairs}) == 12
        assert question.startswith("Question:") and text.endswith(f"Answer: {key}:")
        assert re.fullmatch(r"Question: What is (\w+)'s secret word\?\nAnswer: \1:", question)
        assert p.segments["question"][1] == len(text)


@pytest.mark.real_model
def test_generator_reproduces_the_file_and_tokens_are_single(smollm2):
    sys.path.insert(0, str(DATA))
    import generate

    tok = smollm2.tokenizer
    assert generate.render(generate.GENERATORS["retrieval"](tok)) == RETRIEVAL.read_text()
    for p in load_prompt_set(RETRIEVAL).prompts:
        assert len(tok(p.answer, add_special_tokens=False).input_ids) == 1
        assert len(tok(p.distractor, add_special_tokens=False).input_ids) == 1


@pytest.mark.real_model
def test_smollm2_beats_chance_at_the_beginning(smollm2):
    """The lost-in-the-middle set is solvable where it should be: at depth 0 SmolLM2-135M prefers
    the answer to the distractor in most prompts (chance 0.5)."""
    from workbench.forward import last_logits
    from workbench.metrics import accuracy, answer_token_ids, logit_diff
    from workbench.tokens import make_batches, tokenize_prompt_set

    prompts = load_prompt_set(RETRIEVAL)
    first = [t for t in tokenize_prompt_set(prompts, smollm2.tokenizer, prepend_bos=False)
             if t.prompt.meta["depth_fraction"] == 0.0]
    [batch] = make_batches(first, 16, smollm2.tokenizer.pad_token_id or 0)
    diff = logit_diff(last_logits(smollm2, batch), answer_token_ids(smollm2.tokenizer, first),
                      answer_token_ids(smollm2.tokenizer, first, "distractor"))
    assert accuracy(diff) >= 0.8 and float(diff.mean()) > 1.0
