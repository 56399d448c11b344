"""Tasks: loading and checks, paired clean/corrupted batches, metrics against plain Hugging Face."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from circuits.tasks import TASKS, load_task, task_metrics
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import DATA, write_jsonl
from workbench.errors import InputError
from workbench.metrics import logit_diff
from workbench.prompts import load_prompt_set


def test_clean_and_corrupted_batches_are_paired(tiny_llama, tmp_path):
    rows = tiny_ioi_rows(7)
    task = load_task(str(write_jsonl(tmp_path / "t.jsonl", rows)), tiny_llama)
    assert task.name == "t" and len(task) == 7 and task.prompt_ids == [r["id"] for r in rows]
    seen = []
    for tb in task.batches(3):
        assert tb.clean.input_ids.shape == tb.corrupted.input_ids.shape
        assert torch.equal(tb.clean.attention_mask, tb.corrupted.attention_mask)
        for b, i in enumerate(tb.index):
            assert tb.clean.prompts[b].id == rows[i]["id"] == tb.corrupted.prompts[b].id
            assert tb.corrupted.prompts[b].prompt.text == rows[i]["corrupted_text"]
            want = tiny_llama.tokenizer(rows[i]["answer"], add_special_tokens=False).input_ids[0]
            assert tb.answer[b] == want
        seen += tb.index.tolist()
    assert sorted(seen) == list(range(7))


def test_task_metrics_match_plain_hugging_face(tiny_gpt2, tmp_path):
    from tests.test_circuits_patching import hf_twin

    rows = tiny_ioi_rows(5)
    task = load_task(str(write_jsonl(tmp_path / "t.jsonl", rows)), tiny_gpt2)
    got = task_metrics(tiny_gpt2, task, batch_size=2)
    hf = hf_twin(tiny_gpt2)
    tok = tiny_gpt2.tokenizer
    for i, row in enumerate(rows):
        answer = tok(row["answer"], add_special_tokens=False).input_ids[:1]
        distractor = tok(row["distractor"], add_special_tokens=False).input_ids[:1]
        for text, value in ((row["text"], got.clean[i]), (row["corrupted_text"], got.corrupted[i])):
            ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
            with torch.inference_mode():
                last = hf(input_ids=ids).logits[:, -1]
            want = logit_diff(last, torch.tensor(answer), torch.tensor(distractor)).item()
            assert value == pytest.approx(want, abs=1e-4)
    assert got.clean_accuracy == pytest.approx(np.mean(got.clean > 0))


@pytest.mark.parametrize("change, message", [
    ({"corrupted_text": "Then, Mary and John went to the store. Bob gave a big drink to"},
     "t.jsonl:1: prompt 'tiny-ioi-0': corrupted_text has {corrupted} tokens, text has {text}; "
     "patching needs equal lengths"),
    ({"corrupted_text": None}, "t.jsonl:1: prompt 'tiny-ioi-0' has no 'corrupted_text'"),
    ({"distractor": None}, "t.jsonl:1: prompt 'tiny-ioi-0' has no 'distractor'"),
    ({"distractor": " Mary", "answer": " Mary"}, "answer ' Mary' and distractor ' Mary' start "
     "with the same token"),
])
def test_bad_tasks_are_refused_with_the_prompt_named(tiny_llama, tmp_path, change, message):
    rows = tiny_ioi_rows(2)
    rows[0] = {k: v for k, v in {**rows[0], **change}.items() if v is not None}
    with pytest.raises(InputError) as err:
        load_task(str(write_jsonl(tmp_path / "t.jsonl", rows)), tiny_llama)
    count = {k: len(tiny_llama.tokenizer(rows[0].get(f, ""), add_special_tokens=False).input_ids)
             for k, f in (("text", "text"), ("corrupted", "corrupted_text"))}
    assert count["text"] != count["corrupted"] or "tokens" not in message
    assert message.format(**count) in str(err.value)


def test_unknown_tasks_and_counts(tiny_llama):
    with pytest.raises(InputError, match="task 'nope' is neither a shipped task"):
        load_task("nope", tiny_llama)
    with pytest.raises(InputError, match="--n-prompts must be at least 1"):
        load_task("ioi", tiny_llama, n_prompts=0)


def test_shipped_task_files_are_well_formed():
    for name, spec in TASKS.items():
        prompts = load_prompt_set(DATA / spec.file).prompts
        assert len(prompts) == 100 and {p.task for p in prompts} == {name}
    for p in load_prompt_set(DATA / "colored_objects.jsonl").prompts:
        colors, objects = p.meta["colors"], p.meta["objects"]
        target, other = p.meta["target"], p.meta["corrupted_target"]
        assert p.answer == " " + colors[target] and p.distractor == " " + colors[other]
        assert p.text.endswith(f"What color is the {objects[target]}?\nA:")
        assert p.corrupted_text.endswith(f"What color is the {objects[other]}?\nA:")
        assert p.text[slice(*p.segments["target_color"])] == colors[target]
        assert p.text[slice(*p.segments["query"])] == objects[target]
        assert len(set(colors)) == len(set(objects)) == 3
    for p in load_prompt_set(DATA / "induction.jsonl").prompts:
        words, k = p.meta["words"], p.meta["k"]
        assert p.text == "Words: " + " ".join(words + words[:k])
        assert p.answer == " " + words[k] and p.distractor[1:] in words[k + 1:]
        assert p.text[slice(*p.segments["copy_source"])] == words[k]
        assert not set(p.meta["corrupted_words"]) & set(words)
        assert p.corrupted_text.endswith(" ".join(words[:k]))
    first = json.loads((DATA / "induction.jsonl").read_text().splitlines()[0])
    assert first["id"] == "induction-0000"


@pytest.mark.real_model
def test_shipped_tasks_fit_smollm2(smollm2):
    """Every shipped pair has equal token lengths for SmolLM2, and the LD has the expected sign."""
    for name in TASKS:
        task = load_task(name, smollm2)
        assert len(task) == 100
        small = load_task(name, smollm2, n_prompts=8)
        metrics = task_metrics(smollm2, small, batch_size=8)
        if name in ("ioi", "induction"):
            assert metrics.clean.mean() > 2 and metrics.clean_accuracy >= 0.75
            assert metrics.corrupted.mean() < metrics.clean.mean() - 2
