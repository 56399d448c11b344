"""Prompt-set validation (errors name file, line and field) and segment -> token mapping."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.conftest import DATA, write_jsonl
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.tokens import make_batches, segment_positions, tokenize_prompt, tokenize_prompt_set


def test_loads_valid_file_with_all_fields(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "x", "text": "Alice met Bob.", "segments": {"who": [0, 5]}, "answer": " Bob",
         "distractor": " Alice", "corrupted_text": "Carol met Dan.", "task": "t", "meta": {"k": 1}},
        "",  # blank lines are skipped
        {"id": "y", "text": "Second"},
    ])
    ps = load_prompt_set(path)
    assert [p.id for p in ps.prompts] == ["x", "y"]
    assert ps.prompts[0].segments == {"who": (0, 5)}
    assert ps.prompts[0].source == f"{path}:1" and ps.prompts[1].source == f"{path}:3"
    assert len(ps.sha256) == 64 and ps.files[0].n_prompts == 2


@pytest.mark.parametrize("line, message", [
    ('{"id": "a", "text": "x"', "p.jsonl:2: not valid JSON"),
    ('[1, 2]', "p.jsonl:2: expected a JSON object, got list"),
    ('{"text": "x"}', "p.jsonl:2: field 'id' is required"),
    ('{"id": "b", "text": ""}', "p.jsonl:2: field 'text': String should have at least 1"),
    ('{"id": 3, "text": "x"}', "p.jsonl:2: field 'id': Input should be a valid string"),
    ('{"id": "b", "text": "x", "answr": "y"}', "p.jsonl:2: unknown field 'answr'"),
    ('{"id": "b", "text": "abc", "segments": {"s": [1, 9]}}',
     "p.jsonl:2: field 'segments.s': span [1, 9) is outside the text (length 3)"),
    ('{"id": "b", "text": "abc", "segments": {"s": [2, 1]}}', "field 'segments.s': span [2, 1)"),
    ('{"id": "b", "text": "abc", "segments": {"s": [0]}}', "field 'segments.s"),
    ('{"id": "a", "text": "again"}', "p.jsonl:2: duplicate id 'a' (first on"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "fine"}, line])
    with pytest.raises(InputError) as err:
        load_prompt_set(path)
    assert message in str(err.value)


def test_empty_missing_and_non_utf8_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="is empty: no prompts"):
        load_prompt_set(empty)
    with pytest.raises(InputError, match="does not exist"):
        load_prompt_set(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "\xff"}\n')
    with pytest.raises(InputError, match="not UTF-8"):
        load_prompt_set(bad)


def test_ids_must_be_unique_across_files(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "p", "text": "one"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "p", "text": "two"}])
    with pytest.raises(InputError, match="b.jsonl:1: duplicate id 'p'"):
        load_prompt_set([a, b])


def test_segment_positions_overlap_rule():
    # tokens: "The"(0,3) " cat"(3,7) " sat"(7,11) and a BOS-like (0,0)
    offsets = np.array([[0, 0], [0, 3], [3, 7], [7, 11]])
    assert segment_positions(offsets, (4, 7)).tolist() == [2]  # "cat" inside " cat"
    assert segment_positions(offsets, (0, 3)).tolist() == [1]  # BOS never matches
    assert segment_positions(offsets, (3, 3)).tolist() == []  # empty segment
    assert segment_positions(offsets, (2, 8)).tolist() == [1, 2, 3]  # partial overlaps count


def test_segments_map_to_the_right_tokens(tiny_llama):
    ps = load_prompt_set(DATA / "ioi.jsonl")
    tok = tiny_llama.tokenizer
    for prompt in ps.prompts[:10]:
        t = tokenize_prompt(prompt, tok, prepend_bos=False)
        for name, (start, end) in prompt.segments.items():
            pieces = "".join(tok.decode([int(t.input_ids[i])]) for i in t.segments[name])
            assert prompt.text[start:end] in pieces, (name, pieces)
        with_bos = tokenize_prompt(prompt, tok, prepend_bos=True)
        assert with_bos.input_ids[0] == tok.bos_token_id
        for name in prompt.segments:  # every position shifts by one
            assert (with_bos.segments[name] == t.segments[name] + 1).all()


def test_context_length_is_checked(tiny_llama, tmp_path):
    path = write_jsonl(tmp_path / "long.jsonl", [{"id": "long", "text": "word " * 400}])
    with pytest.raises(InputError, match=r"long.jsonl:1: prompt 'long' has \d+ tokens; "
                                         r"tiny-llama's context is 256 tokens"):
        tokenize_prompt_set(load_prompt_set(path), tiny_llama.tokenizer, prepend_bos=False,
                            n_ctx=256, model_name="tiny-llama")


def test_batches_are_right_padded_and_sorted(tiny_llama, small_prompts):
    tokenized = tokenize_prompt_set(load_prompt_set(small_prompts), tiny_llama.tokenizer,
                                    prepend_bos=False)
    batches = make_batches(tokenized, batch_size=2, pad_id=0)
    by_length = sorted(tokenized, key=lambda t: t.n_tokens)  # stable sort by token count
    assert [b.prompt_ids for b in batches] == [[t.id for t in by_length[:2]], [by_length[2].id]]
    first = batches[0]
    lengths = [t.n_tokens for t in first.prompts]
    assert first.lengths.tolist() == lengths and first.seq_len == max(lengths)
    for row, tok in enumerate(first.prompts):
        n = tok.n_tokens
        assert first.attention_mask[row, :n].all() and not first.attention_mask[row, n:].any()
        assert torch.equal(first.input_ids[row, :n], torch.from_numpy(tok.input_ids))
    assert first.last_pos().tolist() == [n - 1 for n in lengths]
    mask = first.segment_mask("names")
    assert mask.sum(1).tolist() == [len(t.segments["names"]) for t in first.prompts]
    with pytest.raises(InputError, match="has no segment 'nope'"):
        first.segment_mask("nope")
    with pytest.raises(InputError, match="--batch-size must be at least 1"):
        make_batches(tokenized, batch_size=0, pad_id=0)


def test_shipped_prompt_sets_validate():
    ioi = load_prompt_set(DATA / "ioi.jsonl")
    natural = load_prompt_set(DATA / "natural.jsonl")
    assert len(ioi) == 100 and len(natural) >= 40
    orders = {p.meta["order"] for p in ioi.prompts}
    templates = {p.meta["template"] for p in ioi.prompts}
    assert orders == {"ABBA", "BABA"} and templates == set(range(15))
    for p in ioi.prompts:
        io, s = p.meta["io"], p.meta["s"]
        assert p.answer == " " + io and p.distractor == " " + s
        assert p.text[slice(*p.segments["IO"])] == io
        assert p.text[slice(*p.segments["S1"])] == s == p.text[slice(*p.segments["S2"])]
        assert p.segments["S2"][0] > max(p.segments["S1"][0], p.segments["IO"][0])
        assert not re.search(rf"\b({io}|{s})\b", p.corrupted_text), p.corrupted_text
        assert p.corrupted_text.split()[-2:] == p.text.split()[-2:]  # same ending
    assert json.loads((DATA / "natural.jsonl").read_text().splitlines()[0])["task"] == "natural"


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\u0085"])
def test_line_separators_inside_text_are_kept(tmp_path, char):
    """JSON allows these unescaped inside strings; str.splitlines() broke the line at them."""
    path = tmp_path / "p.jsonl"
    text = f"before{char}after"
    path.write_text(json.dumps({"id": "a", "text": text}, ensure_ascii=False) + "\r\n"
                    + json.dumps({"id": "b", "text": "x"}) + "\n", encoding="utf-8")
    prompts = load_prompt_set(path).prompts
    assert [p.text for p in prompts] == [text, "x"] and prompts[1].source.endswith(":2")


def test_very_long_prompt_is_refused_before_tokenising(tiny_llama, tmp_path):
    """A 10 MB line used to take minutes to reject; the character bound refuses it at once."""
    import time

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "huge", "text": "word " * 2_000_000}) + "\n")
    prompt_set = load_prompt_set(path)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="prompt 'huge' has 10,000,000 characters"):
        tokenize_prompt_set(prompt_set, tiny_llama.tokenizer, prepend_bos=False,
                            n_ctx=tiny_llama.info.n_ctx)
    assert time.perf_counter() - t0 < 1.0
