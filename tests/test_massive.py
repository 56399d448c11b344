"""Massive activations: hand-computed cases, and every record against plain Hugging Face hidden
states (``output_hidden_states=True``; ``hidden_states[l]`` is the input of layer l = resid_pre)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.massive import MassiveActivations, resid_stats, sink_dims_from_records
from tests.conftest import DATA, write_jsonl
from tests.hf_reference import hf_forward, lower_median, run_probe
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.records import concat, records


def test_resid_stats_hand_case():
    resid = torch.zeros(2, 3, 4)
    resid[0] = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.2, -500, 0.1, 0.1], [0.1, 0.1, 0.3, 150]])
    resid[1] = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8000], [1e6, 1e6, 1e6, 1e6]])  # row 2: pad
    s = resid_stats(resid, torch.tensor([3, 2]), top_k=2)
    # prompt 0: 8 x 0.1, 0.2, 0.3, 150, 500 -> lower median 0.1; prompt 1: 1..7, 8000 -> 4
    np.testing.assert_allclose(s.median_abs, [0.1, 4.0], rtol=1e-6)
    np.testing.assert_allclose(s.top_abs, [[500, 150], [8000, 7]])
    assert s.top_pos.tolist() == [[1, 2], [1, 1]] and s.top_dim.tolist() == [[1, 3], [3, 2]]
    # massive: |x| > 100 and >= 1000 x median (100 for prompt 0, 4000 for prompt 1); padding never
    got = sorted(zip(s.massive_b.tolist(), s.massive_pos.tolist(), s.massive_dim.tolist(),
                     s.massive_value.tolist()))
    assert got == [(0, 1, 1, -500.0), (0, 2, 3, 150.0), (1, 1, 3, 8000.0)]
    strict = resid_stats(resid, torch.tensor([3, 2]), median_ratio=2000)  # 200 and 8000
    assert strict.massive_value.tolist() == [-500.0, 8000.0]
    high = resid_stats(resid, torch.tensor([3, 2]), abs_threshold=600)
    assert high.massive_value.tolist() == [8000.0]


def test_sink_dims_from_records_hand_case():
    table = concat([
        records("median_abs", [1.0] * 4, layer=0, prompt_id=np.array(["a", "b", "c", "d"])),
        records("massive", [500.0] * 5, layer=np.array([3, 4, 3, 3, 5]), key_pos=0,
                dim=np.array([7, 7, 7, 7, 9]), prompt_id=np.array(["a", "a", "b", "c", "a"])),
    ])
    assert sink_dims_from_records(table, 0.5) == [(7, 0.75)]
    assert sink_dims_from_records(table, 0.25) == [(7, 0.75), (9, 0.25)]
    assert sink_dims_from_records(table, 0.8) == []


@pytest.mark.parametrize("params", [{"top_k": 0}, {"median_ratio": 0}, {"min_prompt_frac": 0}])
def test_bad_parameters(params):
    with pytest.raises(InputError, match="massive_activations"):
        MassiveActivations(**params)


def reference(hidden: list[np.ndarray], top_k=5, abs_threshold=100.0, ratio=1000.0):
    """Per layer: (lower median |x|, top-k (pos, dim, |x|) by a full sort, massive
    {(pos, dim): x})."""
    out = []
    for h in hidden:
        a = np.abs(h)
        med = lower_median(a)
        order = np.argsort(-a, axis=None, kind="stable")[:top_k]
        top = [(int(i // a.shape[1]), int(i % a.shape[1]), float(a.flat[i])) for i in order]
        pos, dim = np.nonzero((a > abs_threshold) & (a >= ratio * med))
        out.append((med, top, {(int(p), int(d)): float(h[p, d]) for p, d in zip(pos, dim)}))
    return out


@pytest.mark.real_model
def test_real_model_matches_hugging_face_hidden_states(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M, 6 natural prompts batched by 3 (padded): every record and summary."""
    prompts = load_prompt_set(DATA / "natural.jsonl").prompts[:6]
    path = write_jsonl(tmp_path / "nat.jsonl", [{"id": p.id, "text": p.text} for p in prompts])
    table, tokenized, _ = run_probe(smollm2, path, tmp_path, "massive_activations", batch_size=3)
    assert len({t.n_tokens for t in tokenized}) > 1  # padding exercised
    per = table[table.prompt_id.notna()]
    dim_prompts: dict[int, set] = {}
    dim_first: dict[int, int] = {}
    token0, medians, maxima = np.zeros(30), np.zeros((6, 30)), np.zeros((6, 30))
    for i, tok in enumerate(tokenized):
        _, hidden = hf_forward(smollm2_hf, tok.input_ids)
        rows = per[per.prompt_id == tok.id]
        first_layer = {}
        for layer, (med, top, massive) in enumerate(reference(hidden)):
            at = rows[rows.layer == layer]
            assert at[at.metric == "median_abs"].value.item() == pytest.approx(med, rel=1e-5)
            got_top = at[at.metric == "top_abs"].sort_values("value", ascending=False)
            np.testing.assert_allclose(got_top.value, [v for *_, v in top], rtol=1e-5)
            # the embeddings (dequantised GGUF) have ties, so positions are checked by value
            at_pos = np.abs(hidden[layer][got_top.key_pos.astype(int), got_top.dim.astype(int)])
            np.testing.assert_allclose(at_pos, got_top.value, rtol=1e-5)
            assert len(set(zip(got_top.key_pos, got_top.dim))) == 5
            got = at[at.metric == "massive"]
            assert dict(zip(zip(got.key_pos, got.dim), got.value)) == pytest.approx(massive,
                                                                                    rel=1e-5)
            medians[i, layer], maxima[i, layer] = med, top[0][2]
            for pos, dim in massive:
                first_layer.setdefault(pos, layer)
                dim_first.setdefault(dim, layer)
                dim_prompts.setdefault(dim, set()).add(tok.id)
            token0[layer] += any(p == 0 for p, _ in massive)
        got_first = rows[rows.metric == "first_massive_layer"]
        assert dict(zip(got_first.key_pos, got_first.value)) == first_layer
    summary = table[table.prompt_id.isna()]
    want_dims = {d: len(s) / 6 for d, s in dim_prompts.items() if len(s) / 6 >= 0.5}
    sink = summary[summary.metric == "sink_dim"]
    assert dict(zip(sink.dim, sink.value)) == want_dims == {507: 1.0}
    first = summary[summary.metric == "sink_dim_first_layer"]
    assert dict(zip(first.dim, first.value)) == {507: dim_first[507]} == {507: 12}
    for metric, want in (("mean_median_abs", medians), ("mean_max_abs", maxima)):
        got = summary[summary.metric == metric].sort_values("layer").value
        np.testing.assert_allclose(got, want.mean(0), rtol=1e-5)
    frac0 = summary[summary.metric == "token0_massive_frac"].sort_values("layer")
    np.testing.assert_allclose(frac0.value, token0 / 6)
    layer0 = summary[summary.metric == "token0_massive_layer"].value.item()
    assert layer0 == np.argmax(token0 / 6 >= 0.5) == 12  # SmolLM2: from the input of layer 12
