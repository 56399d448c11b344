"""Attention sinks: hand-computed cases, and every record against plain Hugging Face attentions and
hidden states (``output_attentions=True``, ``output_hidden_states=True``)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from probes.sinks import attention_received, queries_seeing, segment_shares, var_phi
from tests.conftest import DATA, write_jsonl
from tests.hf_reference import hf_forward, run_probe, tiny_hf
from workbench.errors import InputError
from workbench.prompts import load_prompt_set


def test_attention_received_hand_case():
    pattern = torch.tensor([
        [[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]],
        [[1.0, 0, 0], [0.25, 0.75, 0], [0.3, 0.3, 0.4]],  # length 2: row 2 is padding
    ])[:, None]
    lengths = torch.tensor([3, 2])
    assert queries_seeing(lengths, 3, None).tolist() == [[3, 2, 1], [2, 1, 0]]
    assert queries_seeing(lengths, 3, 2).tolist() == [[2, 2, 1], [2, 1, 0]]
    got = attention_received(pattern, lengths)[:, 0]
    want = [[1.7 / 3, 0.8 / 2, 0.5], [1.25 / 2, 0.75, 0.0]]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    windowed = torch.tensor([[[1.0, 0, 0], [0.5, 0.5, 0], [0.0, 0.5, 0.5]]])[:, None]
    got = attention_received(windowed, torch.tensor([3]), window=2)[0, 0]
    np.testing.assert_allclose(got.numpy(), [0.75, 0.5, 0.5], rtol=1e-6)


def test_var_phi_and_segment_shares_hand_cases():
    x = torch.tensor([[[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, -10.0]]])  # RMS 2.5 and 5
    np.testing.assert_allclose(var_phi(x, [1]).numpy(), [[1.6, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(var_phi(x, [0, 3]).numpy(), [[1.2, 2.0]], rtol=1e-6)
    rows = torch.tensor([0.1, 0.2, 0.3, 0.4])[None, None, None, :]
    in_seg = torch.tensor([[False, True, True, True]])
    sink = torch.tensor([[True, False, True, False]])
    mass, share = segment_shares(rows, in_seg, sink)
    assert mass.item() == pytest.approx(0.9) and share.item() == pytest.approx(0.6 / 0.9)
    mass, share = segment_shares(rows, torch.zeros(1, 4, dtype=torch.bool), sink)
    assert mass.item() == 0 and math.isnan(share.item())


def reference(att: list[np.ndarray], hidden: list[np.ndarray], sink_dims, tau, first_var=2):
    """Per layer, by the definitions in float64: received [head, key], phi [pos], sinks [pos]."""
    out = []
    for layer, (a, h) in enumerate(zip(att, hidden)):
        received = np.stack([a[:, k:, k].mean(-1) for k in range(a.shape[-1])], axis=-1)
        phi = np.abs(h[:, sink_dims]).max(-1) / np.sqrt((h ** 2).mean(-1) + 1e-6)
        sinks = phi > tau if layer >= first_var and sink_dims else np.zeros(len(h), bool)
        out.append((received, phi, sinks))
    return out


def rows(by: dict, metric: str, key: tuple, sort: str = "head") -> pd.DataFrame:
    """The records of ``metric`` at ``key = (prompt_id, layer)`` (empty when there are none)."""
    df = by.get(metric)
    if df is None:
        return pd.DataFrame(columns=["key_pos", "value", "head"])
    return df[df.index.isin([key])].sort_values(sort)


def check_against_hf(table: pd.DataFrame, tokenized, hf_model, sink_dims, tau, received_keys,
                     segment=None) -> tuple[int, np.ndarray]:
    """Compare every per-prompt record; returns (number of sink tokens, sink-head indicators)."""
    by = {m: g.set_index(["prompt_id", "layer"]).sort_index() for m, g in table.groupby("metric")}
    n_sinks, indicators = 0, []
    for tok in tokenized:
        att, hidden = hf_forward(hf_model, tok.input_ids)
        for layer, (recv, phi, sinks) in enumerate(reference(att, hidden, sink_dims, tau)):
            key = (tok.id, layer)
            keys = np.flatnonzero((np.arange(tok.n_tokens) < received_keys) | sinks)
            got = rows(by, "received", key, ["head", "key_pos"])
            assert got.key_pos.tolist() == np.tile(keys, recv.shape[0]).tolist()
            np.testing.assert_allclose(got.value, recv[:, keys].ravel(), atol=1e-5)
            indicator = (recv[:, 0] > 0.3).astype(float)
            np.testing.assert_array_equal(rows(by, "sink_head", key).value, indicator)
            indicators.append(indicator)
            np.testing.assert_allclose(rows(by, "sink_share_first", key).value,
                                       att[layer][:, :, 0].mean(-1), atol=1e-5)
            if layer >= 2 and sink_dims:
                share = att[layer][:, :, sinks].sum(-1).mean(-1)
                np.testing.assert_allclose(rows(by, "sink_share_var", key).value, share, atol=1e-5)
                got_phi = rows(by, "var_sink_phi", key, "key_pos")
                assert got_phi.key_pos.tolist() == np.flatnonzero(sinks).tolist()
                np.testing.assert_allclose(got_phi.value.astype(float), phi[sinks], rtol=1e-4)
                n_sinks += int(sinks.sum())
            if segment is not None:
                check_segment(by, key, att[layer], tok, segment, sinks, layer >= 2 and sink_dims)
    return n_sinks, np.stack(indicators)


def check_segment(by, key, att, tok, segment, sinks, var_layer):
    seg = np.zeros(tok.n_tokens, bool)
    seg[tok.segments[segment]] = True
    row = att[:, -1, :]  # [head, key] at the last token
    mass = row[:, seg].sum(-1)
    got = rows(by, "segment_mass", key)
    assert (got.query_pos == tok.n_tokens - 1).all() and (got.segment == segment).all()
    np.testing.assert_allclose(got.value, mass, atol=1e-5)
    if var_layer:
        share = row[:, seg & ~sinks].sum(-1) / mass
        np.testing.assert_allclose(rows(by, "segment_nonsink_share", key).value, share,
                                   atol=1e-5)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_probe_matches_hugging_face_on_tiny_models(which, request, small_prompts, tmp_path):
    model = request.getfixturevalue(f"tiny_{which}")
    params = dict(sink_dims=[5, 17], tau=2.0, received_keys=2, segment="names")
    table, tokenized, run = run_probe(model, small_prompts, tmp_path, "attention_sink", **params)
    n_sinks, indicators = check_against_hf(table, tokenized, tiny_hf(which), [5, 17], 2.0, 2,
                                           segment="names")
    n_var = sum(t.n_tokens for t in tokenized) * (model.n_layers - 2)
    assert 0 < n_sinks < n_var  # the case exercises sinks and non-sinks
    summary = table[table.prompt_id.isna()]
    overall = summary[(summary.metric == "sink_head_frac") & summary.layer.isna()].value.item()
    assert overall == pytest.approx(indicators.mean())
    assert run.read_manifest()["probes"][0]["params"]["sink_dims"] == [5, 17]


def test_all_keys_and_var_off(tiny_llama, small_prompts, tmp_path):
    table, tokenized, _ = run_probe(tiny_llama, small_prompts, tmp_path, "attention_sink",
                                    sink_dims=[], received_keys=None)
    n_tokens = sum(t.n_tokens for t in tokenized)
    assert (table.metric == "received").sum() == n_tokens * 4 * 4  # every key, layer, head
    assert not {"sink_share_var", "var_sink_phi"} & set(table.metric)


def test_bad_input_fails_before_running(tiny_llama, small_prompts, tmp_path):
    with pytest.raises(InputError, match="d_model = 64"):
        run_probe(tiny_llama, small_prompts, tmp_path, "attention_sink", sink_dims=[64])
    with pytest.raises(InputError, match="no segment 'nope'"):
        run_probe(tiny_llama, small_prompts, tmp_path, "attention_sink", segment="nope")
    with pytest.raises(InputError, match="received_keys"):
        run_probe(tiny_llama, small_prompts, tmp_path, "attention_sink", received_keys=0)
    assert not (tmp_path / "runs").exists()


@pytest.mark.real_model
def test_real_model_matches_hugging_face(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M, 6 natural prompts batched by 3: sink dimensions discovered from the data,
    every record against HF, and first-token sinks in most deep-layer heads."""
    prompts = load_prompt_set(DATA / "natural.jsonl").prompts[:6]
    path = write_jsonl(tmp_path / "nat.jsonl", [{"id": p.id, "text": p.text} for p in prompts])
    table, tokenized, run = run_probe(smollm2, path, tmp_path, "attention_sink", batch_size=3)
    params = run.read_manifest()["probes"][0]["params"]
    assert params["sink_dims"] == [507] and params["discover_prompts"] == 16
    n_sinks, indicators = check_against_hf(table, tokenized, smollm2_hf, [507], 20.0, 8)
    assert n_sinks >= 6 * 18  # token 0 at least, in layers 12..29 of every prompt
    deep = indicators.reshape(6, 30, 9)[:, 12:].mean()
    assert deep > 0.8
    summary = table[table.prompt_id.isna() & (table.metric == "sink_head_frac")]
    by_layer = summary.dropna(subset=["layer"]).sort_values("layer").value
    np.testing.assert_allclose(by_layer, indicators.reshape(6, 30, 9).mean((0, 2)))
