"""Causal role tests (atlas.causal, atlas.controls, atlas.role_tests): every number against an
independent plain Hugging Face forward or a hand computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atlas.causal import run_copies
from atlas.controls import control_draws, empirical_p, role_seed, summarize
from atlas.role_tests import context_logit_diff, induction_attention, natural_loss, repeated_loss
from tests.conftest import DATA, write_jsonl
from tests.hf_reference import tiny_hf
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.tokens import tokenize_prompt_set


# --- controls ------------------------------------------------------------------------------------

def test_control_draws_are_layer_matched_seeded_and_avoid_the_role():
    role = [(1, 0), (1, 3), (4, 2)]
    draws = control_draws(role, n_heads=9, n_draws=25, seed=7)
    assert len(draws) == 25 and draws == control_draws(role, 9, 25, seed=7)
    assert draws != control_draws(role, 9, 25, seed=8)
    for d in draws:
        assert sorted(layer for layer, _ in d) == [1, 1, 4]  # same layers, same counts
        assert not set(d) & set(role) and len(set(d)) == 3
    # every non-role head of layer 1 turns up over the draws
    assert {h for d in draws for lay, h in d if lay == 1} == set(range(9)) - {0, 3}
    # a layer with too few other heads fills up with role heads; a full layer draws itself
    full = [(2, h) for h in range(4)]
    assert control_draws(full, 4, 3, 0) == [full] * 3
    crowded = control_draws([(0, 0), (0, 1), (0, 2)], 4, 20, 0)
    assert all((0, 3) in d and len(d) == 3 for d in crowded)
    assert role_seed(0, "induction") != role_seed(0, "sink")
    with pytest.raises(InputError, match="causal-draws"):
        control_draws(role, 9, 0, 0)
    with pytest.raises(InputError, match="outside"):
        control_draws([(0, 9)], 9, 1, 0)


def test_empirical_p_and_the_summary_of_an_effect():
    # (1 + #{|d| >= |e|}) / (1 + n): 0.5 and -0.6 are at least as extreme as 0.5
    assert empirical_p(0.5, [0.1, -0.6, 0.5, 0.2, np.nan]) == pytest.approx(3 / 5)
    assert empirical_p(-2.0, [0.1, 0.2]) == pytest.approx(1 / 3)
    assert np.isnan(empirical_p(np.nan, [0.1])) and np.isnan(empirical_p(0.1, []))
    per_prompt = np.array([1.0, 2.0, 3.0, 6.0])
    s = summarize(per_prompt, np.array([0.5, -0.5, 1.5]))
    assert s["effect"] == 3.0 and s["control_mean"] == 0.5 and s["control_sd"] == 1.0
    assert s["p_value"] == 0.25 and s["n_prompts"] == 4 and s["n_draws"] == 3
    assert s["effect_lo"] < 3.0 < s["effect_hi"] and s["effect_lo"] >= 1.0


# --- every effect against a plain Hugging Face forward ------------------------------------------

SETS = [[], [(1, 0), (2, 3)], [(0, 1)], [(3, 2), (3, 0), (1, 1)]]


@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("causal-prompts")
    rows = [line for line in (DATA / "repeated_tokens.jsonl").read_text().splitlines()[:3]]
    ctx = (DATA / "counterfactual_context.jsonl").read_text().splitlines()[:4]
    nat = (DATA / "natural.jsonl").read_text().splitlines()[:3]
    return {"repeated": write_jsonl(folder / "repeated.jsonl", rows),
            "context": write_jsonl(folder / "context.jsonl", ctx),
            "natural": write_jsonl(folder / "natural.jsonl", nat)}


def _o_proj(hf, layer):
    return hf.model.layers[layer].self_attn.o_proj


def _hf_z(hf, ids: np.ndarray) -> list[np.ndarray]:
    """Per layer the o_proj input (= hook_z flattened) ``[pos, n_heads * d_head]``."""
    seen = {}
    handles = [_o_proj(hf, layer).register_forward_pre_hook(
        lambda m, args, layer=layer: seen.__setitem__(layer, args[0][0].double().numpy()))
        for layer in range(len(hf.model.layers))]
    try:
        with torch.inference_mode():
            hf(input_ids=torch.as_tensor(ids)[None])
    finally:
        for h in handles:
            h.remove()
    return [seen[layer] for layer in range(len(hf.model.layers))]


def _covering_means(hf, tokenized) -> list[np.ndarray]:
    """Position means over the prompts that reach each position (independent of atlas.causal)."""
    zs = [_hf_z(hf, t.input_ids) for t in tokenized]
    width = max(t.n_tokens for t in tokenized)
    means = []
    for layer in range(len(zs[0])):
        total, count = np.zeros((width, zs[0][layer].shape[1])), np.zeros(width)
        for z in zs:
            total[:len(z[layer])] += z[layer]
            count[:len(z[layer])] += 1
        means.append(total / count[:, None])
    return means


def _hf_logits(hf, ids, heads, means, d_head, attentions=False):
    """Logits ``[pos, vocab]`` of one unpadded prompt with ``heads`` mean-ablated at o_proj
    (with ``attentions``: also every layer's pattern ``[head, query, key]``)."""
    def make(layer, idx):
        def pre(module, args):
            x = args[0].clone()
            for h in idx:
                sl = slice(h * d_head, (h + 1) * d_head)
                x[0, :, sl] = torch.as_tensor(means[layer][:x.shape[1], sl], dtype=x.dtype)
            return (x,)
        return pre
    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    handles = [_o_proj(hf, layer).register_forward_pre_hook(make(layer, idx))
               for layer, idx in by_layer.items()]
    out = None
    try:
        with torch.inference_mode():
            out = hf(input_ids=torch.as_tensor(ids)[None], output_attentions=attentions)
    finally:
        for h in handles:
            h.remove()
    logits = out.logits[0].double()
    if attentions:
        return logits, [a[0].double().numpy() for a in out.attentions]
    return logits


def _tokenized(model, path):
    return tokenize_prompt_set(load_prompt_set(path), model.tokenizer,
                               prepend_bos=model.info.prepend_bos)


def test_mean_ablation_loss_and_induction_attention_equal_plain_hf_forward(tiny_llama,
                                                                          prompt_files):
    readers = [(3, 1), (2, 2)]  # heads whose induction-pattern attention is measured too
    beh = induction_attention(repeated_loss(tiny_llama, prompt_files["repeated"], 3,
                                            batch_size=2), readers)
    found = run_copies(tiny_llama, beh, SETS)
    got, attn = found["repeated_loss"], found["induction_attention"]
    hf = tiny_hf("llama")
    tokenized = _tokenized(tiny_llama, prompt_files["repeated"])
    means = _covering_means(hf, tokenized)
    d_head = tiny_llama.info.d_head
    for p, tok in enumerate(tokenized):
        second = tok.segments["second"]
        predictors = np.arange(second[0], second[-1])  # predict second-repeat tokens 2..end
        ids = tok.input_ids
        n = len(ids)
        # induction pattern by hand: key j follows an earlier copy of the query's token
        pattern = np.array([[0 < j <= i and j - 1 < i and ids[j - 1] == ids[i] for j in range(n)]
                            for i in range(n)], float)
        for c, heads in enumerate(SETS):
            logits, attentions = _hf_logits(hf, ids, heads, means, d_head, attentions=True)
            logp = logits.log_softmax(-1)
            want = -logp[predictors, ids[predictors + 1]].mean().item()
            assert got[c, p] == pytest.approx(want, abs=2e-5), (c, p)
            share = np.mean([(attentions[layer][h] * pattern).sum() / n for layer, h in readers])
            assert attn[c, p] == pytest.approx(share, abs=1e-5), (c, p)
    assert np.abs(got[1] - got[0]).max() > 1e-3  # the ablation does change the loss
    assert np.abs(attn[1] - attn[0]).max() > 1e-4  # and the later heads' attention


def test_mean_ablation_logit_difference_equals_plain_hf_forward(tiny_llama, prompt_files):
    beh = context_logit_diff(tiny_llama, prompt_files["context"], 4, batch_size=3)
    got = run_copies(tiny_llama, beh, SETS)["context_logit_diff"]
    hf = tiny_hf("llama")
    tokenized = _tokenized(tiny_llama, prompt_files["context"])
    assert len({t.n_tokens for t in tokenized}) > 1  # padding and length-covering means
    means = _covering_means(hf, tokenized)
    tok = tiny_llama.tokenizer
    for p, t in enumerate(tokenized):
        a = tok(t.prompt.answer, add_special_tokens=False).input_ids[0]
        d = tok(t.prompt.distractor, add_special_tokens=False).input_ids[0]
        for c, heads in enumerate(SETS):
            last = _hf_logits(hf, t.input_ids, heads, means, tiny_llama.info.d_head)[-1]
            assert got[c, p] == pytest.approx((last[a] - last[d]).item(), abs=2e-5), (c, p)


def test_redistributing_first_token_attention_equals_plain_hf_forward(tiny_llama, prompt_files,
                                                                      monkeypatch):
    from transformers.models.llama import modeling_llama

    beh = natural_loss(tiny_llama, prompt_files["natural"], 3, batch_size=2, max_tokens=24)
    got = run_copies(tiny_llama, beh, SETS, ablation="redistribute")["natural_loss"]
    hf = tiny_hf("llama")
    tokenized = _tokenized(tiny_llama, prompt_files["natural"])
    edited: dict[int, list[int]] = {}

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        groups = module.num_key_value_groups
        k = key.repeat_interleave(groups, dim=1)
        v = value.repeat_interleave(groups, dim=1)
        scores = query @ k.transpose(2, 3) * scaling
        if attention_mask is not None:
            scores = scores + attention_mask[:, :, :, :k.shape[-2]]
        weights = scores.softmax(-1, dtype=torch.float32).to(query.dtype)
        for h in edited.get(module.layer_idx, []):
            w = weights[:, h].clone()
            w[:, 1:, 0] = 0  # query 0 sees only key 0: unchanged
            w[:, 1:] = w[:, 1:] / w[:, 1:].sum(-1, keepdim=True)
            weights[:, h] = w
        return (weights @ v).transpose(1, 2).contiguous(), weights

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", eager)
    for p, t in enumerate(tokenized):
        ids = t.input_ids[:24]
        for c, heads in enumerate(SETS):
            edited.clear()
            for layer, h in heads:
                edited.setdefault(layer, []).append(h)
            with torch.inference_mode():
                logits = hf(input_ids=torch.as_tensor(ids)[None]).logits[0].double()
            logp = logits.log_softmax(-1)
            pos = np.arange(len(ids) - 1)
            want = -logp[pos, ids[pos + 1]].mean().item()
            assert got[c, p] == pytest.approx(want, abs=2e-5), (c, p)
    assert np.abs(got[1] - got[0]).max() > 1e-3
