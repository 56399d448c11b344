"""IOI head classes: each measurement against an independent computation (plain Hugging Face
forwards and hooks, finite differences), the whole chain's table against hand-hooked path patching,
and a tiny model whose heads' OV circuits are set by hand so the copy scores are known by
construction (the class rules on hand-built evidence: test_circuits_ioi_rules.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.ioi_classes import IOICriteria, ioi_classes
from circuits.ioi_evidence import (ATTENTION, attention_scores, copy_scores, direct_effects,
                                   ioi_positions, name_residuals, path_estimates)
from circuits.tasks import load_task
from tests.float64 import float64_model
from tests.hf_reference import tiny_hf
from tests.ioi_class_tasks import tiny_ioi_class_file
from workbench.errors import InputError


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_class_file(tmp_path_factory.mktemp("ioi"), n=6)


@pytest.fixture(scope="module")
def hf_llama():
    return tiny_hf("llama").double()


def test_positions_are_the_names_and_the_token_after_s1(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    pos = ioi_positions(task)
    decode = tiny_llama.tokenizer.decode
    for i, tok in enumerate(task.clean):
        p = tok.prompt
        assert decode([tok.input_ids[pos["IO"][i]]]) == p.answer
        assert decode([tok.input_ids[pos["S1"][i]]]) == p.distractor
        assert decode([tok.input_ids[pos["S2"][i]]]) == p.distractor
        assert pos["S1+1"][i] == pos["S1"][i] + 1  # single-token names
        assert pos["END"][i] == tok.n_tokens - 1
        assert pos["S1"][i] < pos["S2"][i]


def test_a_task_without_the_positions_is_refused(tiny_llama, tmp_path):
    from tests.circuit_tasks import tiny_ioi_file

    task = load_task(str(tiny_ioi_file(tmp_path, n=2)), tiny_llama)  # only the IO segment
    with pytest.raises(InputError, match="has no segment 'S1'; the IOI head classes need"):
        ioi_positions(task)


def test_attention_scores_match_hugging_face(tiny_llama, hf_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    pos = ioi_positions(task)
    got = attention_scores(tiny_llama, task, pos, batch_size=4)  # padded batches
    for i, tok in enumerate(task.clean):
        with torch.inference_mode():
            out = hf_llama(input_ids=torch.as_tensor(tok.input_ids)[None], output_attentions=True)
        for name, (query, keys) in ATTENTION.items():
            want = np.stack([sum(a[0, :, pos[query][i], pos[k][i]].numpy() for k in keys)
                             for a in out.attentions])  # [layer, head]
            np.testing.assert_allclose(got[name][i], want, atol=1e-5)
    assert got["END->IO"].std() > 0.01  # real, varied patterns


def _hf_name_residual(hf, ids):
    with torch.inference_mode():
        return hf(input_ids=torch.as_tensor(ids)[None], output_hidden_states=True
                  ).hidden_states[1][0]


def _hf_copy_score(hf, task, pos, layer, head, k=5):
    """Independent: HF modules applied one by one (input_layernorm, v_proj, o_proj, norm,
    lm_head), top-k by sorting the whole vocabulary."""
    cfg = hf.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    attn = hf.model.layers[layer].self_attn
    hits = negative = total = 0
    for i, tok in enumerate(task.clean):
        resid = _hf_name_residual(hf, tok.input_ids)
        for name in ("IO", "S1", "S2"):
            p = pos[name][i]
            with torch.inference_mode():
                x = hf.model.layers[layer].input_layernorm(resid[p][None])
                v = attn.v_proj(x)[:, (head // group) * d_head:(head // group + 1) * d_head]
                z = torch.zeros(1, cfg.num_attention_heads * d_head, dtype=v.dtype)
                z[:, head * d_head:(head + 1) * d_head] = v
                o = attn.o_proj(z)
                logits = hf.lm_head(hf.model.norm(o))[0]
            order = torch.argsort(logits, descending=True)
            hits += int(tok.input_ids[p] in order[:k].tolist())
            negative += int(tok.input_ids[p] in order[-k:].tolist())
            total += 1
    return hits / total, negative / total


def test_copy_scores_match_hugging_face(tiny_llama, hf_llama, task_path, monkeypatch):
    task = load_task(str(task_path), tiny_llama)
    pos = ioi_positions(task)
    heads = [(1, 0), (2, 3), (3, 1)]
    with float64_model(tiny_llama, monkeypatch):
        resid, tokens = name_residuals(tiny_llama, task, pos, batch_size=4)
        got = copy_scores(tiny_llama, heads, resid, tokens, k=5)
    for head in heads:
        assert got[head] == pytest.approx(_hf_copy_score(hf_llama, task, pos, *head))


def _set_copying_heads(model, hf, name_ids):
    """Hand-set weights: block 0 writes nothing (so the residual after it is the embedding),
    each name's embedding and unembedding is a basis vector, and head 2.0's OV maps each name's
    basis vector onto itself while head 2.1 (same key/value head) maps it onto minus itself."""
    targets = [model.bridge.original_model, hf] if hasattr(model.bridge, "original_model") \
        else [hf]
    for m in targets:
        with torch.no_grad():
            layers = m.model.layers
            layers[0].self_attn.o_proj.weight.zero_()
            layers[0].mlp.down_proj.weight.zero_()
            m.model.embed_tokens.weight.mul_(0.01)
            m.lm_head.weight.mul_(0.01)
            layers[2].input_layernorm.weight.fill_(1.0)
            m.model.norm.weight.fill_(1.0)
            v = layers[2].self_attn.v_proj.weight  # [kv * d_head, d_model]
            o = layers[2].self_attn.o_proj.weight  # [d_model, heads * d_head]
            v[:16].zero_()
            o[:, :32].zero_()
            for j, token in enumerate(name_ids):
                m.model.embed_tokens.weight[token].zero_()
                m.model.embed_tokens.weight[token, j] = 1.0
                m.lm_head.weight[token].zero_()
                m.lm_head.weight[token, j] = 1.0
                v[j, j] = 1.0  # kv head 0, value dim j <- residual dim j
                o[j, j] = 1.0  # head 0 writes value dim j to residual dim j
                o[j, 16 + j] = -1.0  # head 1 writes minus it


def test_copy_scores_known_by_construction(task_path, monkeypatch):
    from workbench.models import load_model

    model = load_model("tiny-llama", device="cpu")  # a fresh copy: its weights are edited
    hf = tiny_hf("llama")
    names = sorted({int(t) for t in model.tokenizer([" Mary", " John", " Alice", " Bob",
                                                     " Sarah", " Tom"])["input_ids"]
                    for t in t})
    _set_copying_heads(model, hf, names)
    task = load_task(str(task_path), model)
    pos = ioi_positions(task)
    resid, tokens = name_residuals(model, task, pos, batch_size=4)
    got = copy_scores(model, [(2, 0), (2, 1), (2, 2)], resid, tokens, k=5)
    assert got[(2, 0)] == (1.0, 0.0)  # copies every name
    assert got[(2, 1)] == (0.0, 1.0)  # writes minus every name: a negative copier
    assert got[(2, 2)] == pytest.approx(_hf_copy_score(hf.double(), task, pos, 2, 2))


def _frozen_reference(model, tb, sender, alpha, receivers, kinds):
    """LD of path patching ``sender`` with ``z_clean + alpha (z_corr - z_clean)``, by full
    forwards with hand-written hooks (two steps as in Wang et al.)."""
    from tests.test_circuits_path_patching import all_z, two_steps

    clean_z, corrupted_z = all_z(model, tb.clean), all_z(model, tb.corrupted)

    def freeze(layer):
        def hook(z, hook):
            out = clean_z[layer].clone()
            if layer == sender[0]:
                h = sender[1]
                out[:, :, h] = clean_z[layer][:, :, h] + alpha * (corrupted_z[layer][:, :, h]
                                                                 - clean_z[layer][:, :, h])
            return out
        return hook
    step1 = [(f"blocks.{l}.attn.hook_z", freeze(l)) for l in range(model.info.n_layers)]

    def ld(last):  # in the model's dtype (float64 here), not metrics.logit_diff's float32
        rows = torch.arange(last.shape[0])
        return (last[rows, tb.answer] - last[rows, tb.distractor]).numpy()
    return ld(two_steps(model, tb, step1, receivers, kinds))


@pytest.mark.parametrize("receivers,kinds", [("logits", ""), ([(3, 1), (2, 2)], "q"),
                                             ([(3, 0)], "kv")])
def test_path_estimates_are_the_derivative_of_path_patching(tiny_llama, task_path, monkeypatch,
                                                           receivers, kinds):
    """The estimate is d LD / d alpha at alpha = 0 of path patching with the patch scaled by
    alpha: a central finite difference of the hand-hooked reference, in float64."""
    task = load_task(str(task_path), tiny_llama)
    eps = 1e-4
    with float64_model(tiny_llama, monkeypatch):
        got = path_estimates(tiny_llama, task, receivers, kinds or "qkv", batch_size=6)
        tb = task.batches(6)[0]
        for sender in [(0, 1), (1, 2), (2, 3)]:
            if receivers != "logits" and sender[0] >= max(l for l, _ in receivers):
                continue
            up = _frozen_reference(tiny_llama, tb, sender, eps, receivers, kinds)
            down = _frozen_reference(tiny_llama, tb, sender, -eps, receivers, kinds)
            want = (up - down) / (2 * eps)
            np.testing.assert_allclose(got[tb.index, sender[0], sender[1]], want, rtol=1e-4,
                                       atol=1e-7)
            assert np.abs(want).max() > 1e-3
    if receivers != "logits":
        assert (got[:, 3] == 0).all()  # the receivers' layer and later cannot reach them


def _hf_direct_effects(hf, task, ablate=()):
    """Independent: the HF model with ``o_proj``'s input (the heads' z, concatenated) hooked; a
    head's direct effect at END is its slice through o_proj, the final norm's weight and frozen
    scale, and W_U[answer] - W_U[distractor]; knocked-out heads take the corrupted prompt's z."""
    cfg = hf.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    n_layers, n_heads = cfg.num_hidden_layers, cfg.num_attention_heads
    out = np.zeros((len(task), n_layers, n_heads))
    for i in range(len(task)):
        z_corr, z, final = {}, {}, {}

        def keep(store, layer):
            def pre(module, args):
                store[layer] = args[0][0].clone()
            return pre

        def knock(layer):
            def pre(module, args):
                x = args[0].clone()
                for l, h in ablate:
                    if l == layer:
                        x[0, :, h * d_head:(h + 1) * d_head] = \
                            z_corr[layer][:, h * d_head:(h + 1) * d_head]
                z[layer] = x[0].clone()
                return (x,)
            return pre
        for store, ids in ((z_corr, task.corrupted[i].input_ids),):
            handles = [hf.model.layers[l].self_attn.o_proj.register_forward_pre_hook(
                keep(store, l)) for l in range(n_layers)]
            with torch.inference_mode():
                hf(input_ids=torch.as_tensor(ids)[None])
            for h in handles:
                h.remove()
        handles = [hf.model.layers[l].self_attn.o_proj.register_forward_pre_hook(knock(l))
                   for l in range(n_layers)]
        handles.append(hf.model.norm.register_forward_pre_hook(
            lambda module, args: final.__setitem__("x", args[0][0].clone())))
        with torch.inference_mode():
            hf(input_ids=torch.as_tensor(task.clean[i].input_ids)[None])
        for h in handles:
            h.remove()
        end = task.clean[i].n_tokens - 1
        x = final["x"][end]
        with torch.inference_mode():
            scale = torch.sqrt(x.pow(2).mean() + hf.model.norm.variance_epsilon)
            u = hf.lm_head.weight[int(task.answer[i])] - \
                hf.lm_head.weight[int(task.distractor[i])]
            direction = u * hf.model.norm.weight / scale
        for l in range(n_layers):
            w_o = hf.model.layers[l].self_attn.o_proj.weight
            for h in range(n_heads):
                zh = z[l][end, h * d_head:(h + 1) * d_head]
                with torch.inference_mode():
                    out[i, l, h] = float((w_o[:, h * d_head:(h + 1) * d_head] @ zh)
                                         @ direction)
    return out


@pytest.mark.parametrize("ablate", [(), ((2, 1), (3, 0))])
def test_direct_effects_match_hugging_face(tiny_llama, hf_llama, task_path, monkeypatch, ablate):
    task = load_task(str(task_path), tiny_llama)
    with float64_model(tiny_llama, monkeypatch):
        got = direct_effects(tiny_llama, task, ablate=list(ablate), batch_size=4)
    want = _hf_direct_effects(hf_llama, task, ablate)
    np.testing.assert_allclose(got, want, atol=1e-5)  # HF RMSNorm computes in float32
    if ablate:
        plain = _hf_direct_effects(hf_llama, task)
        assert np.abs(want[:, 3] - plain[:, 3]).max() > 1e-3  # the knockout changes layer 3


# --- the whole chain: every number of the table against an independent computation ------------

LOOSE = IOICriteria(n_candidates=16, min_path=0.0, min_attention=0.0, min_copy=0.0, min_backup=0.0)


def _forced(path, attention, copy, backup, criteria, stage=None):
    """Stand-in for the class rules (a random tiny model has no IOI circuit): each stage's best
    measured sender takes the stage's class, so every stage of the chain runs and is checked."""
    out = {}
    layer_of = {"name_mover": 3, "s_inhibition": 2, "induction": 1, "previous_token": 0}
    for name, layer in layer_of.items():  # one layer down per stage, so each can reach the next
        if name not in path:
            continue
        score = np.nan_to_num(path[name][0][layer], nan=-np.inf)
        out.setdefault((layer, int(score.argmax())), name)
        if name == "name_mover":
            out.setdefault((layer, int(score.argmin())), "negative_name_mover")
        if name == stage:
            break
    if stage is None and backup is not None:
        rise = backup[0].copy()
        for head in out:
            rise[head] = -np.inf
        out[tuple(int(v) for v in np.unravel_index(rise.argmax(), rise.shape))] = \
            "backup_name_mover"
    return out


@pytest.fixture(scope="module")
def chain(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("circuits.ioi_classes.classify", _forced)
        return task, ioi_classes(tiny_llama, task, LOOSE, batch_size=len(task))


def _score(patched, clean, corrupted):
    return -(patched.mean() - clean.mean()) / (clean.mean() - corrupted.mean())


def test_chain_path_scores_equal_hand_hooked_path_patching(tiny_llama, chain):
    from tests.test_circuits_path_patching import reference

    task, result = chain
    table = result.records().to_pandas()
    tb = task.batches(len(task))[0]
    clean = result.stages["name_mover"].effects.clean[tb.index]
    corrupted = result.stages["name_mover"].effects.corrupted[tb.index]
    checked = 0
    for name, stage in result.stages.items():
        if stage.effects is None:
            continue
        rows = table[(table.metric == "ioi_path_score") & (table.condition == stage.condition)]
        assert len(rows) == len(stage.candidates) <= LOOSE.n_candidates
        for r in rows.itertuples():
            want = reference(tiny_llama, tb, (r.layer, r.head), stage.receivers if
                             stage.receivers != "logits" else "logits", stage.kinds)
            assert r.value == pytest.approx(_score(want, clean, corrupted), abs=1e-4)
            checked += 1
    assert checked >= 12 and result.stages["previous_token"].effects is not None


def test_chain_attention_copy_and_direct_effects_equal_hugging_face(tiny_llama, hf_llama,
                                                                    chain):
    task, result = chain
    table = result.records().to_pandas()
    pos = ioi_positions(task)
    att = table[table.metric == "ioi_attention"]
    for name, (query, keys) in ATTENTION.items():
        want = np.zeros((4, 4))
        for i, tok in enumerate(task.clean):
            with torch.inference_mode():
                out = hf_llama(input_ids=torch.as_tensor(tok.input_ids)[None],
                               output_attentions=True)
            want += np.stack([sum(a[0, :, pos[query][i], pos[k][i]].numpy() for k in keys)
                              for a in out.attentions]) / len(task)
        got = att[att.condition == name].pivot_table(index="layer", columns="head",
                                                      values="value").to_numpy()
        np.testing.assert_allclose(got, want, atol=1e-5)
    copy = table[table.metric == "ioi_copy_score"]
    assert len(copy) >= 16
    for r in copy.itertuples():
        assert r.value == pytest.approx(_hf_copy_score(hf_llama, task, pos, r.layer, r.head)[0])
    movers = result.heads("name_mover")
    assert movers  # so the knockout is exercised
    plain, knocked = _hf_direct_effects(hf_llama, task), _hf_direct_effects(hf_llama, task,
                                                                              movers)
    for metric, want in (("ioi_dla", plain.mean(0)), ("ioi_dla_ablated", knocked.mean(0)),
                         ("ioi_backup_delta", (knocked - plain).mean(0))):
        got = table[table.metric == metric].pivot_table(index="layer", columns="head",
                                                         values="value").to_numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)
    classes = table[table.metric == "ioi_class"]
    assert {(r.layer, r.head): r.condition for r in classes.itertuples()} == result.classes


def test_chain_receivers_are_the_classes_found_before(chain):
    _, result = chain
    assert result.stages["s_inhibition"].receivers == result.heads("name_mover")
    assert result.stages["induction"].receivers == result.heads("s_inhibition")
    assert result.stages["previous_token"].receivers == result.heads("induction")
    assert result.stages["induction"].kinds == "kv" and result.stages["s_inhibition"].kinds == "q"


@pytest.mark.real_model
def test_smollm2_attention_and_copy_scores_match_hugging_face(smollm2, smollm2_hf):
    """Grouped-query attention (9 query heads, 3 key/value heads) and tied embeddings: the
    attention scores and copy scores of two heads on two IOI prompts against plain HF."""
    task = load_task("ioi", smollm2, n_prompts=2)
    pos = ioi_positions(task)
    got = attention_scores(smollm2, task, pos, batch_size=2)
    for i, tok in enumerate(task.clean):
        with torch.inference_mode():
            out = smollm2_hf(input_ids=torch.as_tensor(tok.input_ids)[None],
                             output_attentions=True)
        for name, (query, keys) in ATTENTION.items():
            want = np.stack([sum(a[0, :, pos[query][i], pos[k][i]].double().numpy()
                                 for k in keys) for a in out.attentions])
            np.testing.assert_allclose(got[name][i], want, atol=1e-4)
    resid, tokens = name_residuals(smollm2, task, pos, batch_size=2)
    heads = [(23, 0), (24, 4), (20, 7)]
    scores = copy_scores(smollm2, heads, resid, tokens)
    for head in heads:
        assert scores[head] == pytest.approx(_hf_copy_score(smollm2_hf, task, pos, *head))
    assert scores[(23, 0)][0] == 1.0 and scores[(24, 4)][1] >= 0.8  # a copier, a negative one
