"""Head divergence: hand cases, every removal mode against plain Hugging Face, bad input."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from probes import make_probes
from probes.head_divergence import HeadDivergence, head_divergence, token_vhd
from tests.conftest import DATA, write_jsonl
from tests.hf_heads import divergence, head_outputs
from workbench.errors import InputError
from workbench.models import MODELS
from workbench.prompts import load_prompt_set
from workbench.records import concat
from workbench.removal import dropped_positions, query_positions, without_segment
from workbench.run import RunOptions, execute_run
from workbench.tokens import Batch, TokenizedPrompt, make_batches, tokenize_prompt_set

TEXTS = [  # (id, text, segment span)
    ("a", "Then, Mary and John went to the store. John gave a drink to", [6, 19]),
    ("b", "The quick brown fox jumps over the lazy dog and keeps running far.", [4, 20]),
    ("c", "Hello there, attention heads read", [5, 5]),  # a zero-token segment
]


@pytest.fixture(scope="module")
def tiny_llama_hf():
    """An independent plain Hugging Face copy of tiny-llama (same seed, never wrapped)."""
    return MODELS["tiny-llama"].build()[0].eval()


@pytest.fixture
def seg_prompts(tmp_path):
    return write_jsonl(tmp_path / "seg.jsonl", [{"id": i, "text": t, "segments": {"seg": s}}
                                                for i, t, s in TEXTS])


def run_probe(model, prompt_path, batch_size=3, **params) -> pd.DataFrame:
    """The probe's records plus summaries, without a run directory."""
    probe = make_probes(["head_divergence"], {"head_divergence": {"segment": "seg", **params}})[0]
    tokenized = tokenize_prompt_set(load_prompt_set(prompt_path), model.tokenizer,
                                    prepend_bos=model.info.prepend_bos, images=model.images)
    probe.check(tokenized, model)
    probe = probe.prepare(model, tokenized)
    table = concat([probe.run_batch(model, b) for b in make_batches(tokenized, batch_size, 0)])
    return concat([table, probe.summarize(table)]).to_pandas()


def vhd_of(table: pd.DataFrame, prompt_id: str, query_pos: int, metric="vhd") -> np.ndarray:
    rows = table[(table.metric == metric) & (table.prompt_id == prompt_id)
                 & (table.query_pos == query_pos)]
    return rows.pivot(index="layer", columns="head", values="value").to_numpy()


# --- hand cases -----------------------------------------------------------------------------------

def test_head_divergence_hand_case():
    with_ = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # [n=1, head=2, d=2]
    without = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    dist, norm_with, norm_without = head_divergence(with_, without)
    assert dist.tolist() == [[5.0, 0.0]]
    assert norm_with.tolist() == [[5.0, 1.0]] and norm_without.tolist() == [[0.0, 1.0]]
    assert token_vhd(torch.tensor([[1.0, 5.0, 3.0, 2.0]]), 2).tolist() == [4.0]
    assert token_vhd(torch.tensor([[1.0, 5.0]]), 8).tolist() == [3.0]  # fewer heads than k


def test_query_positions_and_drop_mapping():
    seg = np.array([2, 3, 4])
    assert query_positions(10, seg, "last").tolist() == [9]
    assert query_positions(10, seg, "after").tolist() == [5, 6, 7, 8, 9]
    assert query_positions(10, seg, "all").tolist() == [0, 1, 5, 6, 7, 8, 9]
    assert query_positions(5, seg[:0], "after").tolist() == [0, 1, 2, 3, 4]  # empty segment
    assert query_positions(5, np.array([4]), "last").tolist() == []  # last token in segment
    assert dropped_positions(np.array([0, 1, 5, 9]), seg).tolist() == [0, 1, 2, 6]
    assert dropped_positions(np.array([0, 3, 7]), np.array([5, 1])).tolist() == [0, 2, 5]


def fake_batch(ids: list[int], seg: list[int]) -> Batch:
    from workbench.prompts import Prompt

    tok = TokenizedPrompt(Prompt("p", "x"), np.array(ids), np.zeros((len(ids), 2), np.int64),
                          {"seg": np.array(seg, dtype=np.int64)})
    return make_batches([tok], 1, pad_id=0)[0]


@pytest.mark.parametrize("removal, ids, mask, q_without", [
    ("drop", [10, 13, 14, 0, 0], [1, 1, 1, 0, 0], 2),
    ("filler", [10, 7, 7, 13, 14], [1, 1, 1, 1, 1], 4),
    ("mean_embed", [10, 11, 12, 13, 14], [1, 1, 1, 1, 1], 4),
])
def test_without_inputs_hand_built(removal, ids, mask, q_without):
    """Token ids [10..14], segment at positions 1-2, filler token 7, padding 0."""
    plan = without_segment(fake_batch([10, 11, 12, 13, 14], [1, 2]), "seg", removal, "last",
                           pad_id=0, filler_ids=(7,))
    assert plan.input_ids.tolist() == [ids] and plan.attention_mask.tolist() == [mask]
    assert plan.q_with.tolist() == [4] and plan.q_without.tolist() == [q_without]
    if removal == "mean_embed":
        assert plan.embed_mask.tolist() == [[False, True, True, False, False]]
    else:
        assert plan.embed_mask is None


# --- against plain Hugging Face -------------------------------------------------------------------

def reference_inputs(model, hf_model, tok: TokenizedPrompt, removal: str, mean_embed=None):
    """The without-segment input for the plain HF model, built independently of the probe."""
    ids, seg = torch.as_tensor(tok.input_ids), torch.as_tensor(tok.segments["seg"])
    if removal == "drop":
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[seg] = False
        return {"input_ids": ids[keep][None]}
    if removal == "filler":
        ids = ids.clone()
        ids[seg] = model.tokenizer(".", add_special_tokens=False).input_ids[0]
        return {"input_ids": ids[None]}
    embeds = hf_model.get_input_embeddings()(ids).detach().clone()
    embeds[seg] = mean_embed
    return {"inputs_embeds": embeds[None]}


@pytest.mark.parametrize("removal, output", [("drop", "hook_z"), ("filler", "hook_z"),
                                             ("mean_embed", "hook_z"), ("drop", "hook_result")])
def test_every_removal_mode_matches_hf(tiny_llama, tiny_llama_hf, seg_prompts, removal, output):
    table = run_probe(tiny_llama, seg_prompts, removal=removal, output=output, positions="all")
    tokenized = tokenize_prompt_set(load_prompt_set(seg_prompts), tiny_llama.tokenizer,
                                    prepend_bos=False)
    seg_ids = np.concatenate([t.input_ids[t.segments["seg"]] for t in tokenized])
    with torch.inference_mode():
        mean_embed = tiny_llama_hf.get_input_embeddings()(torch.as_tensor(seg_ids)).mean(0)
    n_heads = tiny_llama.info.n_heads
    for tok in tokenized:
        ref_with = head_outputs(tiny_llama_hf, n_heads, output,
                                input_ids=torch.as_tensor(tok.input_ids)[None])
        ref_without = head_outputs(tiny_llama_hf, n_heads, output, **reference_inputs(
            tiny_llama, tiny_llama_hf, tok, removal, mean_embed))
        seg = set(tok.segments["seg"].tolist())
        for q in [q for q in range(tok.n_tokens) if q not in seg]:  # slow reference mapping
            q_without = q - sum(s < q for s in seg) if removal == "drop" else q
            want = divergence(ref_with, ref_without, q, q_without).numpy()
            got = vhd_of(table, tok.id, q)
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            norm = torch.linalg.vector_norm(ref_with[:, q], dim=-1).numpy()
            np.testing.assert_allclose(vhd_of(table, tok.id, q, "norm_with"), norm, rtol=1e-4)
    assert table[table.metric == "vhd"].value.max() > 1.0  # the removal did something


@pytest.mark.parametrize("removal", ["drop", "filler", "mean_embed"])
def test_zero_token_segment_gives_exactly_zero(tiny_llama, seg_prompts, removal):
    table = run_probe(tiny_llama, seg_prompts, removal=removal, positions="all")
    vhd = table[table.metric == "vhd"]
    n_tokens = len(tiny_llama.tokenizer(TEXTS[2][1], add_special_tokens=False).input_ids)
    assert len(vhd[vhd.prompt_id == "c"]) == 4 * 4 * n_tokens  # every position, every head
    assert (vhd[vhd.prompt_id == "c"].value == 0.0).all()
    assert (vhd[vhd.prompt_id == "a"].groupby("query_pos").value.max().iloc[-1]) > 0.1
    assert (table[(table.metric == "t_vhd") & (table.prompt_id == "c")].value == 0.0).all()


def test_summaries_and_t_vhd_against_pandas(tiny_llama, seg_prompts):
    table = run_probe(tiny_llama, seg_prompts, removal="drop", positions="after", top_k=3)
    rec = table[table.prompt_id.notna()]
    vhd = rec[rec.metric == "vhd"]
    want = vhd.groupby(["prompt_id", "layer", "head"]).value.mean().groupby(
        ["layer", "head"]).mean()
    got = table[table.metric == "mean_vhd"].set_index(["layer", "head"]).value
    np.testing.assert_allclose(got.sort_index().to_numpy(), want.sort_index().to_numpy())
    top3 = vhd.groupby(["prompt_id", "query_pos"]).value.apply(
        lambda v: np.sort(v.to_numpy())[-3:].mean())
    t_vhd = rec[rec.metric == "t_vhd"].set_index(["prompt_id", "query_pos"]).value
    np.testing.assert_allclose(t_vhd.sort_index().to_numpy(), top3.sort_index().to_numpy())
    mean_t = table[table.metric == "mean_t_vhd"].value.item()
    assert mean_t == pytest.approx(top3.groupby("prompt_id").mean().mean())
    with_norm = rec[rec.metric == "norm_with"].set_index(["prompt_id", "layer", "head",
                                                          "query_pos"]).value
    rel = rec[rec.metric == "vhd_rel"].set_index(with_norm.index.names).value
    np.testing.assert_allclose(rel.loc[with_norm.index],
                               vhd.set_index(with_norm.index.names).value.loc[with_norm.index]
                               / with_norm)
    assert set(table.condition) == {"removal=drop;output=hook_z"} and set(table.segment) == {"seg"}


def test_run_records_params_and_restores_attn_result(tiny_llama, seg_prompts, tmp_path):
    bridge = tiny_llama.bridge
    assert not bridge.cfg.use_attn_result
    probes = make_probes(["head_divergence"], {"head_divergence": {
        "segment": "seg", "removal": "filler", "output": "hook_result"}})
    run = execute_run(tiny_llama, load_prompt_set(seg_prompts), probes,
                      RunOptions(runs_dir=tmp_path / "runs", batch_size=2, progress=False))
    assert not bridge.cfg.use_attn_result
    params = run.read_manifest()["probes"][0]["params"]
    assert params == {"segment": "seg", "removal": "filler", "output": "hook_result",
                      "positions": "last", "filler": ".", "top_k": 8}
    table = run.read_table("head_divergence").to_pandas()
    assert set(table.condition) == {"removal=filler;output=hook_result"}
    assert len(table[table.metric == "mean_vhd"]) == 16
    bridge.set_use_attn_result(True)  # a caller's setting is kept too
    try:
        run_probe(tiny_llama, seg_prompts, output="hook_z")
        assert bridge.cfg.use_attn_result
    finally:
        bridge.set_use_attn_result(False)


def test_retrieval_shaped_prompts(tiny_llama, tiny_llama_hf, tmp_path):
    """A needle inside a passage, then the question (the shape of data/retrieval.jsonl)."""
    rows = []
    for depth, filler in enumerate(["", "The sky was grey. ", "The sky was grey. Birds sang. "]):
        passage = f"{filler}The secret number is 42. The store was closed."
        text = f"Passage: {passage}\nQuestion: What is the secret number?\nAnswer:"
        p0, n0 = len("Passage: "), len("Passage: ") + len(filler)
        q0 = text.index("Question")
        rows.append({"id": f"r{depth}", "text": text, "answer": " 42", "distractor": " 7",
                     "segments": {"passage": [p0, p0 + len(passage)],
                                  "needle": [n0, n0 + len("The secret number is 42.")],
                                  "question": [q0, q0 + len("Question: What is the secret "
                                                            "number?")]},
                     "meta": {"depth": depth / 2}})
    path = write_jsonl(tmp_path / "retrieval.jsonl", rows)
    tokenized = tokenize_prompt_set(load_prompt_set(path), tiny_llama.tokenizer,
                                    prepend_bos=False)
    for segment in ("needle", "passage", "question"):
        probe = make_probes(["head_divergence"], {"head_divergence": {"segment": segment}})[0]
        probe.check(tokenized, tiny_llama)
        table = concat([probe.run_batch(tiny_llama, b)
                        for b in make_batches(tokenized, 3, 0)]).to_pandas()
        for tok in tokenized:
            seg = tok.segments[segment]
            keep = np.setdiff1d(np.arange(tok.n_tokens), seg)
            with_ = head_outputs(tiny_llama_hf, 4, input_ids=torch.as_tensor(tok.input_ids)[None])
            without = head_outputs(tiny_llama_hf, 4,
                                   input_ids=torch.as_tensor(tok.input_ids[keep])[None])
            want = divergence(with_, without, tok.n_tokens - 1, len(keep) - 1).numpy()
            np.testing.assert_allclose(vhd_of(table, tok.id, tok.n_tokens - 1), want,
                                       rtol=1e-4, atol=1e-4)


# --- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows, params, message", [
    ([{"id": "x", "text": "Hello there", "segments": {"other": [0, 5]}}], {},
     "prompt 'x' has no segment 'seg'"),
    ([{"id": "w", "text": "Hello there", "segments": {"seg": [0, 11]}}], {},
     "prompt 'w', segment 'seg': the segment covers the whole prompt"),
    ([{"id": "e", "text": "Hello there", "segments": {"seg": [6, 11]}}], {},
     "prompt 'e', segment 'seg': no query position outside the segment"),
    ([{"id": "f", "text": "Hello there", "segments": {"seg": [6, 11]}}],
     {"positions": "after"}, "no token follows the segment"),
    ([{"id": "g", "text": "Hello there", "segments": {"seg": [0, 5]}}],
     {"removal": "filler", "filler": ""},
     "filler '' has no tokens"),
])
def test_bad_input_fails_before_any_forward(tiny_llama, tmp_path, rows, params, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    probes = make_probes(["head_divergence"], {"head_divergence": {"segment": "seg", **params}})
    with pytest.raises(InputError, match=message):
        execute_run(tiny_llama, load_prompt_set(path), probes,
                    RunOptions(runs_dir=tmp_path / "runs", progress=False))
    assert not (tmp_path / "runs").exists()


def test_bad_parameters_and_missing_hook(tiny_llama):
    with pytest.raises(InputError, match="needs a segment"):
        make_probes(["head_divergence"], {})[0].check([], tiny_llama)
    with pytest.raises(InputError, match="removal='cut'"):
        make_probes(["head_divergence"], {"head_divergence": {"removal": "cut"}})
    without_embed = SimpleNamespace(
        info=tiny_llama.info, tokenizer=tiny_llama.tokenizer,
        bridge=SimpleNamespace(hook_dict={k: v for k, v in tiny_llama.bridge.hook_dict.items()
                                          if k != "hook_embed"}))
    probe = HeadDivergence(segment="passage", removal="mean_embed")
    with pytest.raises(InputError, match="segment 'passage'.*needs hook 'hook_embed', which "
                                         "model 'tiny-llama' does not have"):
        probe.check([], without_embed)


def test_cli_parses_choices(tiny_llama):
    probe = make_probes(["head_divergence", "attention_entropy"], {
        "head_divergence": {"segment": "passage", "removal": "mean_embed", "positions": "all",
                            "output": "hook_result", "top_k": "4"},
        "attention_entropy": {"segment_query": "all"}})
    assert (probe[0].removal, probe[0].positions, probe[0].output, probe[0].top_k) == (
        "mean_embed", "all", "hook_result", 4)
    assert probe[1].segment_query == "all"


# --- the real model -------------------------------------------------------------------------------

@pytest.mark.real_model
def test_divergence_matches_hf_o_proj_input_on_smollm2(smollm2, smollm2_hf, tmp_path):
    """Every head at the last token, two prompts of different lengths (padding), drop mode."""
    lines = (DATA / "counterfactual_context.jsonl").read_text().splitlines()
    path = write_jsonl(tmp_path / "ctx.jsonl", [json.loads(lines[0]), json.loads(lines[40])])
    probe = make_probes(["head_divergence"], {"head_divergence": {"segment": "passage"}})[0]
    tokenized = tokenize_prompt_set(load_prompt_set(path), smollm2.tokenizer, prepend_bos=False)
    probe.check(tokenized, smollm2)
    table = probe.run_batch(smollm2, make_batches(tokenized, 2, 0)[0]).to_pandas()
    for tok in tokenized:
        keep = np.setdiff1d(np.arange(tok.n_tokens), tok.segments["passage"])
        with_ = head_outputs(smollm2_hf, 9, input_ids=torch.as_tensor(tok.input_ids)[None])
        without = head_outputs(smollm2_hf, 9, input_ids=torch.as_tensor(tok.input_ids[keep])[None])
        want = divergence(with_, without, tok.n_tokens - 1, len(keep) - 1).numpy()
        got = vhd_of(table, tok.id, tok.n_tokens - 1)
        assert got.shape == (30, 9)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * want.max())
        assert math.isclose(got[want.argmax() // 9, want.argmax() % 9], want.max(), rel_tol=1e-4)
