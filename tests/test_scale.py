"""Bounded memory and speed: the batch plan from free memory, query-chunked attention statistics,
sdpa for probes that read no attention hook."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

import workbench.attention as attention
from probes import make_probes
from probes.sinks import query_sums, segment_shares
from workbench.attention import query_blocks
from workbench.attention_impl import check_sdpa, choose_attention, needs_eager
from workbench.errors import InputError
from workbench.memory import (CPU_DEFAULT_BATCH, MAX_AUTO_BATCH, SAFETY, ModelShape,
                              bytes_per_prompt, fit_batch_size, model_shape, plan_batch)
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run

GIB = 2 ** 30


# --- the batch plan ---------------------------------------------------------------------------

SHAPE = ModelShape(n_heads=9, d_model=576, d_mlp=1536, vocab_size=49152, act_bytes=2)


def test_bytes_per_prompt_by_hand():
    seq = 1000
    resid = seq * (8 * 576 + 3 * 1536) * 2  # 18,432,000
    attn = 9 * seq * seq * (3 * 2 + 4)  # 90,000,000
    logits = seq * 49152 * (2 + 4)  # 294,912,000
    assert bytes_per_prompt(SHAPE, seq, eager=False, needs_logits=False) == resid == 18_432_000
    assert bytes_per_prompt(SHAPE, seq, eager=True, needs_logits=False) == resid + attn
    assert bytes_per_prompt(SHAPE, seq, eager=True, needs_logits=True) == resid + attn + logits


@pytest.mark.parametrize("per_prompt, free, device, expected", [
    (GIB, 100 * GIB, "cuda", MAX_AUTO_BATCH),  # 70 fit: capped at 64
    (GIB, 40 * GIB, "cuda", 16),  # 28 fit -> the largest power of two below: 16
    (GIB, 10 * GIB, "cuda", 4),  # 7 fit -> 4
    (GIB, 2 * GIB, "cuda", 1),  # 1.4 fit -> 1
    (GIB, 100 * GIB, "cpu", CPU_DEFAULT_BATCH),  # the CPU keeps its default when it fits
    (GIB, 5 * GIB, "cpu", 2),  # 3.5 fit -> 2 (long prompts on the CPU)
])
def test_fit_batch_size_on_hand_made_free_memory(per_prompt, free, device, expected):
    size, note = fit_batch_size(per_prompt, free, device)
    assert (size, note) == (expected, None)


def test_one_prompt_over_budget_runs_alone_with_a_note():
    size, note = fit_batch_size(3 * GIB, 2 * GIB, "cuda")
    assert size == 1
    assert "3.00 GiB" in note and "1.40 GiB" in note  # SAFETY * 2 GiB = 1.4 GiB


def test_plan_batch_on_a_model(tiny_llama):
    shape = model_shape(tiny_llama)
    assert (shape.n_heads, shape.d_model, shape.act_bytes) == (
        tiny_llama.info.n_heads, tiny_llama.info.d_model, 4)
    per = bytes_per_prompt(shape, 100, eager=True, needs_logits=False)
    plan = plan_batch(tiny_llama, 100, eager=True, needs_logits=False, free_bytes=per * 5)
    assert (plan.batch_size, plan.source, plan.device_type) == (2, "auto", "cpu")  # 3.5 fit -> 2
    assert plan.budget_bytes == int(per * 5 * SAFETY)


def test_auto_batch_size_is_recorded_in_the_manifest(tiny_llama, small_prompts, tmp_path):
    run = execute_run(tiny_llama, load_prompt_set(small_prompts),
                      make_probes(["attention_entropy"]),
                      RunOptions(runs_dir=tmp_path, progress=False))
    manifest = run.read_manifest()
    plan = manifest["batching"]["plan"]
    assert plan["source"] == "auto" and plan["batch_size"] == CPU_DEFAULT_BATCH
    assert manifest["batching"]["batch_size"] == manifest["config_key"]["batch_size"] == 8


# --- query-chunked statistics -----------------------------------------------------------------

def test_query_blocks_cover_the_queries_within_the_budget():
    shape = (2, 3, 10, 10)  # one query row of the batch: 2 * 3 * 10 * 4 = 240 bytes
    assert query_blocks(shape) == [slice(0, 10)]
    blocks = query_blocks(shape, budget_bytes=3 * 240)
    assert blocks == [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert query_blocks(shape, budget_bytes=1) == [slice(i, i + 1) for i in range(10)]


def random_pattern(batch=2, heads=3, seq=7, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, heads, seq, seq, generator=g)
    causal = torch.ones(seq, seq, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def test_chunked_functions_equal_the_whole_pattern(monkeypatch):
    pattern = random_pattern()
    lengths = torch.tensor([7, 4])
    in_seg = torch.zeros(2, 7, dtype=torch.bool)
    in_seg[:, 1:3] = True
    sinks = torch.zeros(2, 7, dtype=torch.bool)
    sinks[:, 0] = sinks[:, 2] = True
    real = (torch.arange(7)[None, :] < lengths[:, None]).float()
    whole_sums = torch.einsum("bq,bhqk->bhk", real, pattern)  # independent: one einsum
    keys = in_seg.float()
    whole_mass = pattern @ keys[:, None, :, None]
    whole_share = (pattern @ (in_seg & ~sinks).float()[:, None, :, None]) / whole_mass
    monkeypatch.setattr(attention, "QUERY_BLOCK_BYTES", 2 * 3 * 7 * 4 * 2)  # two query rows
    assert len(query_blocks(pattern.shape)) == 4
    torch.testing.assert_close(query_sums(pattern, lengths), whole_sums)
    mass, share = segment_shares(pattern, in_seg, sinks)
    torch.testing.assert_close(mass, whole_mass[..., 0])
    torch.testing.assert_close(share, whole_share[..., 0], equal_nan=True)


def probe_records(model, prompts, tmp_path, names, params, run_id) -> pd.DataFrame:
    run = execute_run(model, load_prompt_set(prompts), make_probes(names, params),
                      RunOptions(runs_dir=tmp_path, run_id=run_id, batch_size=2, progress=False,
                                 attention="eager"))
    frames = [run.read_table(n).to_pandas() for n in names]
    keys = ["probe", "metric", "layer", "head", "prompt_id", "query_pos", "key_pos", "segment",
            "condition", "dim"]
    return (pd.concat(frames).drop(columns="run_id").sort_values(keys, na_position="first")
            .reset_index(drop=True))


@pytest.mark.parametrize("entropy_query, sink_query", [("last", "last"), ("all", "after")])
def test_query_chunked_probes_equal_the_unchunked_ones(tiny_llama, small_prompts, tmp_path,
                                                       monkeypatch, entropy_query, sink_query):
    names = ["attention_entropy", "attention_sink"]
    params = {"attention_entropy": {"segment": "names", "segment_query": entropy_query},
              "attention_sink": {"segment": "names", "segment_query": sink_query,
                                 "sink_dims": "[0, 1]"}}
    whole = probe_records(tiny_llama, small_prompts, tmp_path, names, params, "whole")
    monkeypatch.setattr(attention, "QUERY_BLOCK_BYTES", 1)  # one query row per block
    chunked = probe_records(tiny_llama, small_prompts, tmp_path, names, params, "chunked")
    assert len(whole) > 100 and {"segment_entropy", "segment_mass"} <= set(whole.metric)
    pd.testing.assert_frame_equal(whole, chunked, check_exact=False, rtol=1e-6, atol=1e-7)


# --- sdpa when no probe reads an attention hook -----------------------------------------------

def test_needs_eager_and_choice(tiny_llama):
    assert needs_eager("attn.hook_pattern") and needs_eager("hook_attn_in")
    assert not needs_eager("hook_resid_pre") and not needs_eager("hook_mlp_out")
    assert choose_attention(tiny_llama, ["hook_resid_pre"]).implementation == "sdpa"
    entropy = choose_attention(tiny_llama, ["attn.hook_pattern"])
    assert entropy.implementation == "eager" and "attn.hook_pattern" in entropy.reason
    masked = choose_attention(tiny_llama, ["hook_resid_pre"], masked=True)
    assert masked.implementation == "eager"
    assert choose_attention(tiny_llama, ["hook_resid_pre"], "eager").implementation == "eager"
    with pytest.raises(InputError, match="attn.hook_pattern"):
        choose_attention(tiny_llama, ["attn.hook_pattern"], "sdpa")
    with pytest.raises(InputError, match="flash"):
        choose_attention(tiny_llama, [], "flash")
    check = check_sdpa(tiny_llama)
    assert check.ok and 0 < check.rel_diff < 1e-4


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_sdpa_gives_the_eager_records_for_a_resid_probe(which, request, small_prompts, tmp_path):
    model = request.getfixturevalue(which)
    prompts = load_prompt_set(small_prompts)
    tables = {}
    for impl in ("auto", "eager"):
        run = execute_run(model, prompts, make_probes(["massive_activations"]),
                          RunOptions(runs_dir=tmp_path, run_id=impl, batch_size=2, progress=False,
                                     attention=impl))
        assert run.read_manifest()["attention"]["implementation"] == (
            "sdpa" if impl == "auto" else "eager")
        tables[impl] = run.read_table("massive_activations").to_pandas().drop(columns="run_id")
    assert len(tables["eager"]) > 50
    pd.testing.assert_frame_equal(tables["auto"], tables["eager"], check_exact=False, rtol=1e-5,
                                  atol=1e-5)
    # and sdpa really ran: the eager-only pattern hook does not fire inside sdpa_attention
    from workbench.attention_impl import sdpa_attention
    fired = []
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode(), sdpa_attention(model), model.bridge.hooks(
            fwd_hooks=[("blocks.0.attn.hook_pattern", lambda a, hook: fired.append(1))]):
        model.bridge(ids, return_type=None)
    assert fired == []


def test_cli_rejects_a_bad_attention_choice_before_loading(capsys, small_prompts, tmp_path):
    from tests.test_run import cli, run_args

    code, _, err = cli(capsys, *run_args(small_prompts, tmp_path / "runs", "--attention", "flash"))
    assert code == 2 and "--attention 'flash'" in err and not tmp_path.joinpath("runs").exists()
