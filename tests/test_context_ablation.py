"""The context-ablation experiment's logic on tiny-llama, against plain Hugging Face; the shipped
counterfactual-context sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiments.context_ablation import random_draws, run_experiment, summary
from tests.conftest import DATA, ROOT, write_jsonl
from tests.hf_heads import divergence, head_outputs, last_logits_with_heads_zeroed
from workbench.heads import all_heads, parse_heads
from workbench.models import MODELS
from workbench.prompts import PromptSet, load_prompt_set

FACTS = [("Mary", "store", "garden"), ("John", "school", "office"), ("Alice", "garden", "school"),
         ("Bob", "office", "store")]


@pytest.fixture
def context_sets(tmp_path):
    """Open prompts (passage segment) and their closed-book twins (passage cut out)."""
    open_rows, closed_rows = [], []
    for i, (name, place, other) in enumerate(FACTS):
        passage = f"Passage: {name} went to the {place}.\n"
        question = f"Question: Where did {name} go?\nAnswer: the"
        open_rows.append({"id": f"p{i}", "text": passage + question, "answer": f" {place}",
                          "distractor": f" {other}",
                          "segments": {"passage": [0, len(passage)]}})
        closed_rows.append({"id": f"p{i}-closed", "text": question, "answer": f" {place}",
                            "distractor": f" {other}"})
    return (load_prompt_set(write_jsonl(tmp_path / "open.jsonl", open_rows)),
            load_prompt_set(write_jsonl(tmp_path / "closed.jsonl", closed_rows)))


def hf_logit_diffs(hf_model, tokenizer, prompt_set, heads=()) -> np.ndarray:
    out = []
    for p in prompt_set.prompts:
        ids = torch.tensor([tokenizer(p.text, add_special_tokens=False).input_ids])
        logits = last_logits_with_heads_zeroed(hf_model, 4, heads, ids)
        answer = tokenizer(p.answer, add_special_tokens=False).input_ids[0]
        distractor = tokenizer(p.distractor, add_special_tokens=False).input_ids[0]
        out.append(float(logits[answer] - logits[distractor]))
    return np.array(out)


def test_experiment_matches_hf(tiny_llama, context_sets, tmp_path):
    open_set, closed_set = context_sets
    hf = MODELS["tiny-llama"].build()[0].eval()
    tok = tiny_llama.tokenizer
    result = run_experiment(tiny_llama, open_set, closed_set, k=3, draws=4, seed=7,
                            runs_dir=tmp_path / "runs", batch_size=3)
    for key, prompts in (("with_passage", open_set), ("without_passage", closed_set)):
        want = hf_logit_diffs(hf, tok, prompts)
        assert result[key]["logit_diff"] == pytest.approx(want.mean(), abs=1e-4)
        assert result[key]["accuracy"] == pytest.approx((want > 0).mean())
    # top heads: mean over prompts of the last-token divergence when the passage is dropped
    vhd = []
    for p in open_set.prompts:
        ids = tok(p.text, add_special_tokens=False).input_ids
        cut = len(tok(p.text[:p.segments["passage"][1]], add_special_tokens=False).input_ids)
        with_ = head_outputs(hf, 4, input_ids=torch.tensor([ids]))
        without = head_outputs(hf, 4, input_ids=torch.tensor([ids[cut:]]))
        vhd.append(divergence(with_, without, len(ids) - 1, len(ids) - cut - 1).numpy())
    mean = np.mean(vhd, axis=0)
    order = np.argsort(-mean, axis=None, kind="stable")[:3]
    want_top = [(int(i // 4), int(i % 4)) for i in order]
    got_top = [tuple(parse_heads(t["head"])[0]) for t in result["top_heads"]]
    assert got_top == want_top
    assert [t["mean_vhd"] for t in result["top_heads"]] == pytest.approx(
        [mean[h] for h in want_top], rel=1e-4)
    ablated = hf_logit_diffs(hf, tok, open_set, want_top)
    assert result["ablate_top"]["logit_diff"] == pytest.approx(ablated.mean(), abs=1e-4)
    draws = result["ablate_random"]["per_draw"]
    assert len(draws) == 4 and all(len(set(d["heads"])) == 3 for d in draws)
    first = hf_logit_diffs(hf, tok, open_set, parse_heads(",".join(draws[0]["heads"])))
    assert draws[0]["logit_diff"] == pytest.approx(first.mean(), abs=1e-4)
    lds = [d["logit_diff"] for d in draws]
    assert result["ablate_random"]["logit_diff_mean"] == pytest.approx(np.mean(lds))
    assert result["ablate_random"]["logit_diff_sd"] == pytest.approx(np.std(lds, ddof=1))
    assert f"ablate top-3: logit diff {result['ablate_top']['logit_diff']:+.3f}" in summary(result)
    assert result["by_kind"]["with_passage"]["all"]["n"] == 4
    json.dumps(result)  # serialisable
    # held out: heads chosen on prompts 0 and 2, ablated on prompts 1 and 3
    held = result["held_out"]
    even = np.mean(vhd[0::2], axis=0)
    want_even = [(int(i // 4), int(i % 4)) for i in np.argsort(-even, axis=None, kind="stable")[:3]]
    assert [tuple(parse_heads(t["head"])[0]) for t in held["top_heads"]] == want_even
    odd = PromptSet(open_set.prompts[1::2], open_set.files)
    assert held["ablate_top"]["logit_diff"] == pytest.approx(
        hf_logit_diffs(hf, tok, odd, want_even).mean(), abs=1e-4)
    assert held["baseline"]["logit_diff"] == pytest.approx(
        hf_logit_diffs(hf, tok, odd).mean(), abs=1e-4)
    odd_draws = [hf_logit_diffs(hf, tok, odd, parse_heads(",".join(d["heads"]))).mean()
                 for d in draws]
    assert held["ablate_random"]["logit_diff_mean"] == pytest.approx(np.mean(odd_draws), abs=1e-4)


def test_random_draws_are_reproducible_and_uniform():
    a = random_draws(30, 9, 10, 5, seed=0)
    assert a == random_draws(30, 9, 10, 5, seed=0) and a != random_draws(30, 9, 10, 5, seed=1)
    assert all(len(set(d)) == 10 and set(d) <= set(all_heads(30, 9)) for d in a)


def test_shipped_context_sets_pair_up():
    """Each open prompt has a closed twin: same question and answers, passage line cut out."""
    open_set = load_prompt_set(DATA / "counterfactual_context.jsonl")
    closed = load_prompt_set(DATA / "counterfactual_context_closed.jsonl").by_id()
    assert len(open_set) == len(closed) == 60
    kinds = {}
    for p in open_set.prompts:
        twin = closed[p.meta["closed_id"]]
        a, b = p.segments["passage"]
        assert p.text[a:b].startswith("Passage: In this story, ") and p.text[b - 1] == "\n"
        assert twin.text == p.text[:a] + p.text[b:]
        assert (twin.answer, twin.distractor) == (p.answer, p.distractor) != (p.answer, p.answer)
        assert p.answer.strip() in p.text[a:b] and p.distractor.strip() not in p.text[a:b]
        kinds[p.meta["kind"]] = kinds.get(p.meta["kind"], 0) + 1
    assert kinds == {"capital": 24, "color": 12, "person_city": 24}


@pytest.mark.real_model
def test_shipped_context_sets_are_generated():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "data/generate.py", "--check",
                           "counterfactual_context", "counterfactual_context_closed"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
