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
from tests.test_atlas import inputs  # noqa: F401 (the tiny atlas's prompt files, a fixture)
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


# --- the causal and composition parts of an atlas ------------------------------------------------

LOW = {"previous_token": 0.02, "duplicate_token": 0.02, "induction": 0.02, "sink": 0.99}


@pytest.fixture(scope="module")
def causal_atlas(inputs, tmp_path_factory):
    from atlas import build_atlas
    from tests.test_atlas import _loader, _options

    out = tmp_path_factory.mktemp("causal-atlas") / "atlas-tiny"
    options = _options(inputs, out, thresholds=LOW, causal_draws=4, causal_prompts=3)
    return build_atlas(_loader(), options, model_spec="tiny-llama"), options


def test_every_role_carries_its_test_in_atlas_json_and_parquet(causal_atlas):
    from atlas.controls import empirical_p
    from atlas.roles import ROLES
    from workbench.heads import format_head
    from workbench.store import RunDir

    atlas, options = causal_atlas
    causal, heads = atlas.doc["causal"], atlas.heads
    assert set(causal) == set(ROLES)
    assert causal["low_entropy"]["descriptive"] and "names no behaviour" in \
        causal["high_entropy"]["note"]
    assert causal["sink"]["n_heads"] == 0 and "no head holds" in causal["sink"]["note"]
    assert heads["sink_effect"].isna().all()
    run = RunDir.open(options.runs_dir / options.run_id("causal"))
    rec = run.read_table("role_effects").to_pandas()
    tested = [r for r, e in causal.items() if "effect" in e]
    assert {"induction", "previous_token", "context", "ioi_circuit"} <= set(tested)
    for role in tested:
        e = causal[role]
        keys = {"effect", "effect_lo", "effect_hi", "control_mean", "control_sd", "p_value",
                "n_heads", "n_draws", "metric", "unit", "ablation", "source", "heads", "note"}
        assert keys <= set(e), role
        held = heads[heads[role]]
        assert e["heads"] == [format_head((int(r.layer), int(r.head))) for r in held.itertuples()]
        assert e["n_draws"] == 4 and e["n_heads"] == len(held) > 0
        # the effect is the mean per-prompt difference of the stored metric values
        r = rec[rec["segment"] == role]
        m = r[r["metric"] == "metric"].pivot(index="prompt_id", columns="condition", values="value")
        assert e["effect"] == pytest.approx((m["role"] - m["unablated"]).mean(), abs=1e-12)
        draws = r[r["metric"] == "control_effect"]["value"].to_numpy()
        assert e["control_mean"] == pytest.approx(draws.mean())
        assert e["p_value"] == pytest.approx(empirical_p(e["effect"], draws))
        assert e["effect_lo"] <= e["effect"] <= e["effect_hi"]
        # the control draws come from the role's layers, as many per layer as the role holds
        members = r[r["metric"] == "control_member"]
        want = sorted(held["layer"].astype(int))
        for _, d in members.groupby("condition"):
            assert sorted(d["layer"].astype(int)) == want, role
        # parquet: the role-level values on the held heads, NaN elsewhere
        col, p = heads[f"{role}_effect"], heads[f"{role}_effect_p"]
        assert (col[heads[role]] == e["effect"]).all() and col[~heads[role]].isna().all()
        assert (p[heads[role]] == e["p_value"]).all()
        single = heads.set_index(["layer", "head"])[f"{role}_head_effect"].dropna()
        assert {format_head(k): v for k, v in single.items()} == pytest.approx(e["head_effects"])
        assert 1 <= len(single) <= 3
    assert "secondary" in causal["previous_token"]
    assert any(line.startswith("mean-ablating the") and "random head sets of the same layers"
               in line for line in atlas.doc["findings"])


def test_head_patterns_and_composition_are_stored_beside_the_atlas(causal_atlas):
    import pandas as pd

    from workbench.heads import parse_head

    atlas, _ = causal_atlas
    patterns = pd.read_parquet(atlas.path / "head_patterns.parquet")
    tokens = pd.read_parquet(atlas.path / "tokens.parquet")
    assert set(patterns["prompt_id"]) <= set(tokens["prompt_id"])
    assert (patterns["probe"] == "attention_pattern").all()
    assert (patterns["metric"] == "pattern").all()
    # one stored pattern against a plain HF forward of that prompt
    hf = tiny_hf("llama")
    row = patterns.iloc[0]
    ids = tokens[tokens["prompt_id"] == row["prompt_id"]].sort_values("pos")["token_id"].to_numpy()
    with torch.inference_mode():
        att = hf(input_ids=torch.as_tensor(ids)[None], output_attentions=True).attentions
    sel = patterns[(patterns["prompt_id"] == row["prompt_id"]) & (patterns["layer"] == row["layer"])
                   & (patterns["head"] == row["head"])]
    want = att[int(row["layer"])][0, int(row["head"])].double().numpy()
    np.testing.assert_allclose(sel["value"], want[sel["query_pos"], sel["key_pos"]], atol=1e-5)
    # every top head of a role has evidence: partners, patterns
    evidence = atlas.doc["head_evidence"]
    top = atlas.heads[atlas.heads["induction"]].sort_values("induction_rank").iloc[0]
    item = next(v for k, v in evidence.items()
                if parse_head(k) == (int(top["layer"]), int(top["head"])))
    assert "induction" in item["roles"] and "partners" in item and item["pattern_sets"]
    top = atlas.heads[atlas.heads["ioi_circuit"]].sort_values("ioi_circuit_rank").iloc[0]
    item = next(v for k, v in evidence.items()
                if parse_head(k) == (int(top["layer"]), int(top["head"])))
    assert np.isfinite(item["dla"]["ioi"]) and "ioi_circuit" in item["head_effect"]
    comp = pd.read_parquet(atlas.path / "composition.parquet")
    assert {"q_composition", "k_composition", "v_composition", "ov_copying"} <= set(comp["metric"])
    k = comp[comp["metric"] == "k_composition"]
    assert (k["condition"].str.startswith("sender=")).all() and len(k) == 6 * 16
    assert atlas.doc["composition"]["baseline"]["mean"] > 0
    assert len(atlas.doc["composition"]["top_pairs"]) == 30


def test_a_finished_causal_part_resumes_without_the_model_and_reruns_when_changed(
        causal_atlas, inputs):
    import pandas as pd

    from atlas import build_atlas
    from tests.test_atlas import _loader, _options

    atlas, _ = causal_atlas
    out = atlas.path
    kept = build_atlas(lambda: pytest.fail("the model was loaded"),
                       _options(inputs, out, thresholds=LOW, causal_draws=4, causal_prompts=3,
                                resume=True), model_spec="tiny-llama")
    pd.testing.assert_frame_equal(kept.heads, atlas.heads)
    assert kept.doc["causal"] == atlas.doc["causal"]
    calls = []

    def load():
        calls.append(1)
        return _loader()()
    again = build_atlas(load, _options(inputs, out, thresholds=LOW, causal_draws=5,
                                       causal_prompts=3, resume=True), model_spec="tiny-llama")
    assert calls == [1] and again.doc["causal"]["induction"]["n_draws"] == 5
    assert again.doc["runs"]["causal"]["state"] == "run"
    assert again.doc["runs"]["natural"]["state"] == "kept"


def test_bad_causal_options_are_refused_before_anything_is_written(inputs, tmp_path, capsys):
    from tests.test_run import cli

    for option, value in (("--causal-draws", "0"), ("--causal-draws", "5000"),
                          ("--causal-prompts", "1")):
        out = tmp_path / f"a{value}"
        code, _, err = cli(capsys, "atlas", "--model", "tiny-llama", "--out", str(out),
                           "--no-progress", "--no-figures", option, value)
        assert code == 2 and option in err and not out.exists()


def test_ablate_command_tests_any_head_set_and_refuses_bad_input(causal_atlas, capsys):
    from tests.test_run import cli
    from workbench.heads import format_head

    atlas, _ = causal_atlas
    path = str(atlas.path)
    heads = [format_head((1, 0)), format_head((2, 3))]
    code, out, err = cli(capsys, "atlas", "ablate", path, "--heads", ",".join(heads), "--test",
                         "induction", "--draws", "3", "--n-prompts", "2", "--device", "cpu")
    assert code == 0, err
    assert f"heads {', '.join(heads)} (on the induction heads' test)" in out
    assert "3 random head sets of the same layers" in out and "alone" in out
    for args, why in ((["--test", "low_entropy"], "descriptive"), (["--test", "nope"],
                                                                   "not an atlas role"),
                      (["--test", "induction", "--heads", "9.0"], "out of range"),
                      (["--test", "induction", "--draws", "0"], "--draws")):
        argv = ["atlas", "ablate", path, *args]
        if "--heads" not in args:
            argv += ["--heads", heads[0]]
        code, _, err = cli(capsys, *argv)
        assert code == 2 and why in err, (args, err)


def test_an_interrupted_composition_part_is_recorded_interrupted(inputs, tiny_llama, tmp_path,
                                                                  monkeypatch):
    """The causal and composition parts wrote ``failed`` for Ctrl-C/SIGTERM, unlike every other
    run (``RunDir.stopped``: ``interrupted``, continued with ``--resume``)."""
    from atlas import causal_part, composition
    from tests.test_atlas import _options
    from workbench.store import RunDir

    def interrupted(model):
        raise KeyboardInterrupt
    monkeypatch.setattr(composition, "compose", interrupted)
    options = _options(inputs, tmp_path / "atlas-tiny", causal_draws=2, causal_prompts=2)
    with pytest.raises(KeyboardInterrupt):
        causal_part.run_composition(tiny_llama, options, "tiny-llama")
    run = RunDir.open(options.runs_dir / options.run_id("composition"))
    assert run.read_manifest()["status"] == "interrupted"
