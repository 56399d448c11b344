"""Head-type detectors: rules, patterns against TransformerLens's, scores against a slow reference
loop, the probe against plain Hugging Face attentions, and induction heads in SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformer_lens import head_detector as tl

from probes import make_probes
from probes.head_types import (HeadTypes, detection_pattern, head_scores, parse_detector,
                               read_detectors_file)
from tests.conftest import DATA, write_jsonl
from tests.hf_reference import hf_forward, run_probe, tiny_hf
from workbench.errors import InputError
from workbench.prompts import load_prompt_set

TOKENS = torch.tensor([5, 7, 9, 5, 7, 9, 5, 3])  # repeats: duplicates and induction targets


def builtin(name: str):
    return parse_detector(name, "test")


def test_builtin_patterns_equal_transformer_lens():
    ids, lengths = TOKENS[None], torch.tensor([len(TOKENS)])
    for name, ref in (("previous_token", tl.get_previous_token_head_detection_pattern),
                      ("duplicate_token", tl.get_duplicate_token_head_detection_pattern),
                      ("induction", tl.get_induction_head_detection_pattern)):
        got = detection_pattern(builtin(name), ids, lengths)[0]
        assert torch.equal(got.float(), ref(TOKENS[None])), name


def test_custom_rules_and_padding():
    det = parse_detector("mix = pos:0 | offset:2 | segment:s", "test")
    assert det.rule == "pos:0|offset:2|segment:s" and det.segments == ["s"]
    ids = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 0]])  # prompt 1 has 3 tokens
    seg = {"s": torch.tensor([[False, True, False, False], [False, False, True, False]])}
    got = detection_pattern(det, ids, torch.tensor([4, 3]), seg).int()
    assert got[0].tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert got[1].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("item, message", [
    ("inductoin", "unknown detector 'inductoin'"),
    ("x=offset:-1", "term 'offset:-1'"),
    ("x=pos:0|", "term ''"),
    ("Bad=pos:0", "detector name 'Bad'"),
])
def test_bad_rules(item, message):
    with pytest.raises(InputError, match=message):
        HeadTypes(detectors=[item])


def test_detectors_file(tmp_path):
    path = tmp_path / "det.txt"
    path.write_text("# my heads\nfirst = pos:0\n\nskip = offset:2|offset:3  # two back\n")
    assert [(d.name, d.rule) for d in read_detectors_file(str(path))] == [
        ("first", "pos:0"), ("skip", "offset:2|offset:3")]
    probe = HeadTypes(detectors=["induction"], detectors_file=str(path))
    assert probe.params()["rules"] == {"induction": "match:1", "first": "pos:0",
                                       "skip": "offset:2|offset:3"}
    assert probe.units["mean_skip_abs"] == "1 - sum|A - P| / seq_len"
    path.write_text("ok = pos:0\nbad = nope:1\n")
    with pytest.raises(InputError, match=r"det.txt:2: .*'nope:1'"):
        HeadTypes(detectors_file=str(path))
    with pytest.raises(InputError, match="unique"):
        HeadTypes(detectors=["induction", "induction=match:1"])
    with pytest.raises(InputError, match="cannot read"):
        HeadTypes(detectors_file=str(tmp_path / "missing.txt"))


def slow_scores(att: np.ndarray, pat: np.ndarray, n: int, exclude_bos=False,
                exclude_current=False) -> tuple[np.ndarray, np.ndarray]:
    """Reference loop over one prompt's ``[head, query, key]`` attention (first ``n`` tokens)."""
    mul, abs_ = [], []
    for a in att:
        overlap = total = diff = 0.0
        for i in range(n):
            for j in range(n):
                if (exclude_bos and j == 0) or (exclude_current and i == j):
                    continue
                overlap += a[i, j] * pat[i, j]
                total += a[i, j]
                diff += abs(a[i, j] - pat[i, j])
        mul.append(overlap / total)
        abs_.append(1 - diff / n)
    return np.array(mul), np.array(abs_)


def random_pattern(n_batch, n_heads, seq, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_batch, n_heads, seq, seq, generator=g) * 2
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


@pytest.mark.parametrize("exclude_bos, exclude_current", [(False, False), (True, False),
                                                          (False, True), (True, True)])
def test_scores_equal_slow_loop_with_padding(exclude_bos, exclude_current):
    ids = torch.stack([TOKENS, torch.tensor([4, 4, 6, 4, 6, 0, 0, 0])])
    lengths = torch.tensor([8, 5])
    pattern = random_pattern(2, 3, 8)
    before = pattern.clone()
    for name in ("previous_token", "duplicate_token", "induction"):
        det = detection_pattern(builtin(name), ids, lengths)
        mul, abs_ = head_scores(pattern, det, lengths, exclude_bos=exclude_bos,
                                exclude_current_token=exclude_current)
        for b, n in enumerate(lengths.tolist()):
            want_mul, want_abs = slow_scores(pattern[b].double().numpy(), det[b].double().numpy(),
                                             n, exclude_bos, exclude_current)
            np.testing.assert_allclose(mul[b].numpy(), want_mul, atol=1e-6)
            np.testing.assert_allclose(abs_[b].numpy(), want_abs, atol=1e-6)
    assert torch.equal(pattern, before)  # the activation is never modified


def test_scores_equal_transformer_lens_single_prompt():
    pattern = random_pattern(1, 2, 8, seed=1)
    lengths = torch.tensor([8])
    for name in ("previous_token", "duplicate_token", "induction"):
        det = detection_pattern(builtin(name), TOKENS[None], lengths)
        for exclude_bos in (False, True):
            mul, abs_ = head_scores(pattern, det, lengths, exclude_bos=exclude_bos)
            for h in range(2):
                kw = dict(detection_pattern=det[0].float(), exclude_bos=exclude_bos,
                          exclude_current_token=False)
                ref_mul = tl.compute_head_attention_similarity_score(
                    pattern[0, h].clone(), error_measure="mul", **kw)
                ref_abs = tl.compute_head_attention_similarity_score(
                    pattern[0, h].clone(), error_measure="abs", **kw)
                assert mul[0, h].item() == pytest.approx(ref_mul, abs=1e-6)
                assert abs_[0, h].item() == pytest.approx(ref_abs, abs=5e-4)  # TL rounds


def test_probe_matches_hugging_face_with_options(tiny_llama, tmp_path):
    """Every prompt of a batch gets the options (TransformerLens's list input dropped them)."""
    path = write_jsonl(tmp_path / "rep.jsonl", [
        {"id": "a", "text": "red green blue red green blue red", "segments": {"s": [0, 0]}},
        {"id": "b", "text": "the dog the cat the dog", "segments": {"s": [4, 7]}},
        {"id": "c", "text": "one two one two", "segments": {"s": [0, 3]}},
    ])
    detectors = ["previous_token", "duplicate_token", "induction", "mine=pos:0|segment:s"]
    path_a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "text": "a"}])  # segment check
    with pytest.raises(InputError, match="no segment 's'"):
        run_probe(tiny_llama, path_a, tmp_path / "bad", "head_types", detectors=detectors)
    table, tokenized, _ = run_probe(tiny_llama, path, tmp_path, "head_types", batch_size=3,
                                    detectors=detectors, exclude_bos=True)
    hf = tiny_hf("llama")
    probe = make_probes(["head_types"], {"head_types": {"detectors": detectors}})[0]
    for tok in tokenized:
        att, _ = hf_forward(hf, tok.input_ids)
        ids, n = torch.as_tensor(tok.input_ids)[None], tok.n_tokens
        segs = {"s": torch.zeros(1, n, dtype=torch.bool).index_fill_(
            1, torch.as_tensor(tok.segments["s"]), True)}
        for det in probe._detectors:
            pat = detection_pattern(det, ids, torch.tensor([n]), segs)[0].double().numpy()
            for layer, a in enumerate(att):
                want_mul, want_abs = slow_scores(a, pat, n, exclude_bos=True)
                at = table[(table.prompt_id == tok.id) & (table.layer == layer)]
                got_mul = at[at.metric == f"{det.name}_mul"].sort_values("head").value
                got_abs = at[at.metric == f"{det.name}_abs"].sort_values("head").value
                np.testing.assert_allclose(got_mul, want_mul, atol=1e-5)
                np.testing.assert_allclose(got_abs, want_abs, atol=1e-5)
    mean = table[table.metric == "mean_induction_mul"].set_index(["layer", "head"]).value
    per = table[table.metric == "induction_mul"].groupby(["layer", "head"]).value.mean()
    np.testing.assert_allclose(mean.sort_index(), per.sort_index())


@pytest.mark.real_model
def test_repeated_tokens_prompt_set(smollm2):
    prompts = load_prompt_set(DATA / "repeated_tokens.jsonl").prompts
    assert len(prompts) == 32
    from workbench.tokens import tokenize_prompt

    for p in prompts:
        tok = tokenize_prompt(p, smollm2.tokenizer, prepend_bos=False)
        ids, n = p.meta["token_ids"], p.meta["seq_len"]
        assert tok.input_ids.tolist() == ids + ids and len(set(ids)) == n == 24
        assert tok.segments["first"].tolist() == list(range(n))
        assert tok.segments["second"].tolist() == list(range(n, 2 * n))


@pytest.mark.real_model
def test_real_model_induction_heads(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M on 8 repeated random-token prompts: the induction heads of layers 17-18, every
    score against HF attentions (vectorised reference by the definition)."""
    prompts = load_prompt_set(DATA / "repeated_tokens.jsonl").prompts[:8]
    path = write_jsonl(tmp_path / "rep.jsonl", [{"id": p.id, "text": p.text} for p in prompts])
    table, tokenized, _ = run_probe(smollm2, path, tmp_path, "head_types", batch_size=4)
    want = {}
    for tok in tokenized:
        att, _ = hf_forward(smollm2_hf, tok.input_ids)
        a = np.stack(att)  # [layer, head, q, k]
        n = tok.n_tokens
        for name in ("previous_token", "duplicate_token", "induction"):
            p = detection_pattern(builtin(name), torch.as_tensor(tok.input_ids)[None],
                                  torch.tensor([n]))[0].double().numpy()
            want.setdefault(f"{name}_mul", []).append((a * p).sum((-1, -2)) / a.sum((-1, -2)))
            want.setdefault(f"{name}_abs", []).append(1 - np.abs(a - p).sum((-1, -2)) / n)
    for metric, values in want.items():
        got = table[table.metric == f"mean_{metric}"].sort_values(["layer", "head"]).value
        np.testing.assert_allclose(got.to_numpy().reshape(30, 9), np.mean(values, 0), atol=1e-5)
    induction = table[table.metric == "mean_induction_mul"].sort_values("value", ascending=False)
    top = induction.iloc[0]
    assert (top.layer, top["head"]) == (18, 6) and top.value > 0.35
    assert set(zip(induction.layer[:4], induction["head"][:4])) == {(18, 6), (17, 4), (17, 3),
                                                                     (17, 5)}


def _direct_scores(a: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TransformerLens's definition in float64 with exclude_bos and exclude_current_token: key 0
    and the diagonal zeroed in both A and P, then sums over the kept entries; ``a`` is
    [head, q, k]."""
    keep = np.ones(p.shape)
    keep[:, 0] = 0
    np.fill_diagonal(keep, 0)
    a, p = a.astype(np.float64) * keep, p * keep
    return (a * p).sum((-1, -2)) / a.sum((-1, -2)), 1 - np.abs(a - p).sum((-1, -2)) / p.shape[-1]


def test_exclusions_do_not_cancel_on_a_sink_row():
    """Rows with 0.99997 of their mass on token 0 (a sink head): the kept mass must be exact,
    not row sum - column 0 - diagonal in fp32 (which was off by ~1e-3)."""
    gen = torch.Generator().manual_seed(0)
    n = 48
    rest = torch.rand(1, 2, n, n, generator=gen).tril() * 3e-5 / n
    rest[..., 0] = 0
    pattern = rest.clone()
    pattern[..., 0] = 1 - rest.sum(-1)  # token 0 takes what is left
    pattern = pattern.float()
    ids = torch.randint(0, 5, (1, n), generator=gen)
    det = detection_pattern(builtin("previous_token"), ids, torch.tensor([n]))
    mul, abs_ = head_scores(pattern, det, torch.tensor([n]), exclude_bos=True,
                            exclude_current_token=True)
    want_mul, want_abs = _direct_scores(pattern[0].numpy(), det[0].double().numpy())
    np.testing.assert_allclose(mul[0].numpy(), want_mul, rtol=1e-9)
    np.testing.assert_allclose(abs_[0].numpy(), want_abs, rtol=1e-12)


@pytest.mark.real_model
def test_real_sink_head_exclusions_match_the_direct_definition(smollm2, smollm2_hf):
    """SmolLM2 L18H8 (a sink head) on repeated tokens with exclude_bos and exclude_current_token:
    head_scores equals the direct float64 definition (it was 0.877874 vs 0.876726)."""
    from workbench.tokens import tokenize_prompt

    for prompt in load_prompt_set(DATA / "repeated_tokens.jsonl").prompts[:3]:
        tok = tokenize_prompt(prompt, smollm2.tokenizer, prepend_bos=False)
        att, _ = hf_forward(smollm2_hf, tok.input_ids)
        a = torch.as_tensor(np.asarray(att[18]))[None].float()  # [1, head, q, k]
        ids, n = torch.as_tensor(tok.input_ids)[None], torch.tensor([tok.n_tokens])
        for name in ("previous_token", "induction"):
            det = detection_pattern(builtin(name), ids, n)
            mul, abs_ = head_scores(a, det, n, exclude_bos=True, exclude_current_token=True)
            want_mul, want_abs = _direct_scores(a[0].numpy(), det[0].double().numpy())
            assert a[0, 8, 1:, 0].double().mean() > 0.9  # L18H8 is a sink head here
            np.testing.assert_allclose(mul[0].numpy(), want_mul, rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(abs_[0].numpy(), want_abs, rtol=1e-9, atol=1e-12)
