"""Position bias: hand-computed products, every record against a slow numpy reference built from
plain Hugging Face attentions, convergence to the first token under a causal mask, padding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from probes import make_probes
from probes.position_bias import (chain_rows, chain_rows_both, compose, head_path,
                                  layer_attention, position_summary, rollout_matrix)
from tests.conftest import DATA, write_jsonl
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.tokens import tokenize_prompt_set


def test_product_of_hand_written_row_stochastic_matrices():
    a0 = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    a1 = torch.tensor([[1.0, 0, 0], [0.0, 1.0, 0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    p0 = compose(torch.eye(3, dtype=torch.float64)[None], a0[None])
    p1 = compose(p0, a1[None])[0]
    # row 2 of A1 A0 = 0.5 * [0.5, 0.5, 0] + 0.5 * [0.2, 0.3, 0.5]
    assert torch.allclose(p1, torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.35, 0.4, 0.25]],
                                           dtype=torch.float64))
    valid = torch.ones(1, 3, dtype=torch.bool)
    r0 = rollout_matrix(a0[None], valid)[0]
    assert torch.allclose(r0, torch.tensor([[1.0, 0, 0], [0.25, 0.75, 0], [0.1, 0.15, 0.75]],
                                           dtype=torch.float64))
    assert torch.allclose(rollout_matrix(a0[None], valid, weight=1.0)[0], a0)


def test_layer_attention_masks_padding_and_averages_heads():
    pattern = torch.zeros(1, 2, 3, 3)
    pattern[0, 0] = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.2, 0.3, 0.5]])
    pattern[0, 1] = torch.tensor([[1.0, 0, 0], [1.0, 0.0, 0], [0.4, 0.1, 0.5]])
    valid = torch.tensor([[True, True, False]])
    a = layer_attention(pattern, valid)[0]
    assert torch.allclose(a, torch.tensor([[1.0, 0, 0], [0.75, 0.25, 0], [0, 0, 0]],
                                          dtype=torch.float64))
    assert torch.allclose(layer_attention(pattern, valid, head=1)[0, 1],
                          torch.tensor([1.0, 0, 0], dtype=torch.float64))


def test_position_summary_by_hand():
    rows = torch.tensor([[0.5, 0.1, 0.1, 0.1, 0.2, 0.0], [0.1, 0.2, 0.7, 0.0, 0.0, 0.0]],
                        dtype=torch.float64)
    got = {k: v.tolist() for k, v in position_summary(rows, torch.tensor([5, 3]), k=1).items()}
    want = {"first_token_mass": [0.5, 0.1], "first_k_mass": [0.5, 0.1],
            "last_k_mass": [0.2, 0.7], "middle_mass": [0.3, 0.2],
            "primacy_index": [0.3 / 0.7, -0.6 / 0.8],
            "relative_position": [(0.1 + 0.2 + 0.3 + 0.8) / 4, (0.2 + 1.4) / 2]}
    for key, values in want.items():
        assert got[key] == pytest.approx(values, abs=1e-12), key


def test_causal_product_converges_to_the_first_token_hand_built_stack():
    """Theorem 4.1 of arXiv 2502.01951 on 40 random causal softmax layers: the pure product's rows
    all tend to e_0; the residual-aware rollout drifts more slowly."""
    gen = torch.Generator().manual_seed(0)
    n = 12
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    p = r = torch.eye(n, dtype=torch.float64)[None]
    valid = torch.ones(1, n, dtype=torch.bool)
    first, rollout_last = [], []
    for _ in range(40):
        scores = torch.randn(n, n, generator=gen, dtype=torch.float64)
        a = torch.softmax(scores.masked_fill(~causal, -torch.inf), -1)[None]
        p, r = compose(p, a), compose(r, rollout_matrix(a, valid))
        first.append(p[0, :, 0].min().item())
        rollout_last.append(r[0, -1, 0].item())
    assert all(b >= a - 1e-12 for a, b in zip(first, first[1:]))  # min_i P[i, 0] never falls
    assert first[-1] > 0.999 and first[4] < 0.9
    assert torch.allclose(p.sum(-1), torch.ones(1, n, dtype=torch.float64))
    assert torch.allclose(r.sum(-1), torch.ones(1, n, dtype=torch.float64))
    assert rollout_last[4] < first[4]  # the residual term slows the drift


def hf_layer_attentions(hf_model, ids: np.ndarray) -> list[np.ndarray]:
    """Per layer [head, query, key] float64 attention of one unpadded prompt, from plain HF."""
    with torch.inference_mode():
        out = hf_model(input_ids=torch.as_tensor(ids)[None], output_attentions=True)
    return [a[0].double().numpy() for a in out.attentions]


def reference(hf_model, ids: np.ndarray, path: list[int] | None, weight: float = 0.5):
    """Slow numpy reference: per layer, the product and rollout cumulative matrices."""
    n = len(ids)
    p, r = np.eye(n), np.eye(n)
    out = []
    for layer, att in enumerate(hf_layer_attentions(hf_model, ids)):
        a = att.mean(0) if path is None else att[path[layer]]
        step = weight * a + (1 - weight) * np.eye(n)
        step = step / step.sum(1, keepdims=True)
        p, r = a @ p, step @ r
        out.append({"product": p, "rollout": r})
    return out


def run_probe(model, prompt_path, tmp_path, batch_size=2, **params):
    probes = make_probes(["position_bias"], {"position_bias": params})
    prompt_set = load_prompt_set(prompt_path)
    run = execute_run(model, prompt_set, probes, RunOptions(
        runs_dir=tmp_path / "runs", batch_size=batch_size, progress=False))
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos)
    return run.read_table("position_bias").to_pandas(), tokenized


def check_records(table: pd.DataFrame, tokenized, hf_model, path, k, atol, segment=None):
    """Every record of every prompt, layer and condition against :func:`reference`."""
    table = table[table.prompt_id.notna()]
    for tok in tokenized:
        n = tok.n_tokens
        for layer, mats in enumerate(reference(hf_model, tok.input_ids, path)):
            for cond, mat in mats.items():
                rows = table[(table.prompt_id == tok.id) & (table.layer == layer)
                             & (table.condition == cond)].set_index(["metric", "key_pos"]).value
                np.testing.assert_allclose(rows.loc["last_token_profile"].sort_index(),
                                           mat[n - 1], atol=atol, rtol=0)
                np.testing.assert_allclose(rows.loc["column_sum"].sort_index(), mat.sum(0),
                                           atol=atol * n, rtol=0)
                last = mat[n - 1]
                want = {"first_token_mass": last[0], "first_k_mass": last[:k].sum(),
                        "last_k_mass": last[n - k:].sum(), "middle_mass": last[k:n - k].sum(),
                        "relative_position": (last * np.arange(n)).sum() / (n - 1)}
                if segment:
                    want["segment_mass"] = last[tok.segments[segment]].sum()
                for metric, value in want.items():
                    assert rows.loc[metric].item() == pytest.approx(value, abs=atol), metric
    return table


def tiny_hf(arch: str):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    return build_tiny_hf_model(TinyConfig(arch), len(AutoTokenizer.from_pretrained(
        tiny_tokenizer_dir())))


@pytest.mark.parametrize("arch, heads", [("llama", "mean"), ("gpt2", "mean"),
                                         ("llama", "0.1,1.3,2.0,3.2"), ("gpt2", "2")])
def test_records_match_reference_on_tiny_models(arch, heads, request, small_prompts, tmp_path):
    model = request.getfixturevalue(f"tiny_{arch}")
    table, tokenized = run_probe(model, small_prompts, tmp_path, heads=heads, k=1,
                                 segment="names")
    path = head_path(heads, model.n_layers, model.n_heads)
    # fp32 patterns of the bridge and of HF differ by ~1e-6 (op order)
    check_records(table, tokenized, tiny_hf(arch), path, k=1, atol=1e-5, segment="names")
    per_layer_head = table.dropna(subset=["prompt_id"]).groupby("layer")["head"].unique()
    if path is None:
        assert table["head"].isna().all()
    else:
        assert [list(h) for h in per_layer_head] == [[h] for h in path]
    # the run-level means are the means over prompts, per (layer, condition)
    per_prompt = table[table.metric == "first_token_mass"].groupby(
        ["layer", "condition"]).value.mean()
    means = table[table.metric == "mean_first_token_mass"]
    assert means.prompt_id.isna().all() and len(means) == model.n_layers * 2
    np.testing.assert_allclose(means.set_index(["layer", "condition"]).value.sort_index(),
                               per_prompt.sort_index(), rtol=1e-12)
    seg = table[table.metric == "mean_segment_mass"]
    assert len(seg) == model.n_layers * 2 and (seg.segment == "names").all()


def test_batched_equals_one_prompt_per_batch(tiny_llama, small_prompts, tmp_path):
    """Padding never leaks: a prompt's records are the same batched with longer prompts or alone."""
    a, _ = run_probe(tiny_llama, small_prompts, tmp_path / "a", batch_size=3, k=1)
    b, _ = run_probe(tiny_llama, small_prompts, tmp_path / "b", batch_size=1, k=1)
    key = ["metric", "condition", "prompt_id", "layer", "key_pos"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_allclose(a.value, b.value, atol=1e-6)


def test_chain_rows_equal_the_composed_products():
    """The stored-layers path (vector-matrix chains) gives the rows of P_l = M_l ... M_0."""
    gen = torch.Generator().manual_seed(0)
    mats = [torch.rand(2, 6, 6, generator=gen, dtype=torch.float64).tril() for _ in range(4)]
    mats = [m / m.sum(-1, keepdim=True) for m in mats]
    starts = torch.rand(2, 3, 6, generator=gen, dtype=torch.float64)
    got = chain_rows(mats, starts)
    p = torch.eye(6, dtype=torch.float64).expand(2, 6, 6)
    for layer, m in enumerate(mats):
        p = compose(p, m)
        torch.testing.assert_close(got[layer], torch.bmm(starts, p), rtol=0, atol=1e-14)


def test_both_chains_equal_the_product_and_rollout_chains():
    """One bmm per layer for both conditions (the rollout step as w row A + (1 - w) row) gives
    the chains of the pure product and of the formed rollout matrices, padding included."""
    gen = torch.Generator().manual_seed(1)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    real = (valid[:, :, None] & valid[:, None, :]).double()
    mats = []
    for _ in range(5):
        m = torch.rand(2, 6, 6, generator=gen, dtype=torch.float64).tril() * real
        mats.append(m / m.sum(-1, keepdim=True).clamp_min(1e-300))
    starts = torch.rand(2, 2, 6, generator=gen, dtype=torch.float64) * valid[:, None].double()
    product, rollout = chain_rows_both(mats, starts, valid, 0.3)
    torch.testing.assert_close(product, chain_rows(mats, starts), rtol=0, atol=1e-14)
    want = chain_rows([rollout_matrix(m, valid, 0.3) for m in mats], starts)
    torch.testing.assert_close(rollout, want, rtol=0, atol=1e-14)


def test_stored_layers_and_composition_give_the_same_records(tiny_llama, small_prompts, tmp_path,
                                                              monkeypatch):
    """Small prompts keep every layer and chain rows; long ones compose P_l layer by layer
    (bounded memory): the records agree to float64 rounding."""
    import probes.position_bias as pb

    chained, _ = run_probe(tiny_llama, small_prompts, tmp_path / "chain", k=1, segment="names")
    monkeypatch.setattr(pb, "CHAIN_BYTES", 0)
    composed, _ = run_probe(tiny_llama, small_prompts, tmp_path / "compose", k=1,
                            segment="names")
    key = ["metric", "condition", "prompt_id", "layer", "key_pos", "segment"]
    a = chained.sort_values(key).reset_index(drop=True)
    b = composed.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[key], b[key])
    np.testing.assert_allclose(a.value, b.value, rtol=0, atol=1e-12)


def test_causal_product_converges_on_a_deep_tiny_model(tmp_path):
    """A 16-layer tiny Llama (near-uniform attention): the pure product's first-token mass rises to
    1 with depth; the rollout stays well below, and a window:2 mask slows the rise."""
    from transformers import AutoTokenizer

    from workbench.models import load_model
    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    hf = build_tiny_hf_model(TinyConfig("llama", n_layers=16, init_std=0.02), len(tokenizer))
    hf.save_pretrained(tmp_path / "deep")
    tokenizer.save_pretrained(tmp_path / "deep")
    model = load_model(str(tmp_path / "deep"), device="cpu")
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": "Attention heads read the residual stream and write back into it."}])
    probes = make_probes(["position_bias"], {"position_bias": {"profiles": "false"}})

    def first_mass(mask):
        run = execute_run(model, load_prompt_set(prompts), probes, RunOptions(
            runs_dir=tmp_path / "runs", progress=False, attention_mask=mask))
        t = run.read_table("position_bias").to_pandas()
        t = t[t.metric == "mean_first_token_mass"]
        return t.pivot(index="layer", columns="condition", values="value")

    causal, window = first_mass(None), first_mass("window:2")
    product, rollout = causal["product"].to_numpy(), causal["rollout"].to_numpy()
    assert product[0] < 0.2 and product[-1] > 0.99
    assert (np.diff(product) > 0).all()
    # the residual term slows the drift: the rollout trails the product at every depth
    assert (rollout < product).all() and rollout[5] < product[5] - 0.1
    # under window:2 the last token cannot reach position 0 through fewer layers than positions
    assert (window["product"].to_numpy()[:8] == 0).all() and window["product"].iloc[-1] < 1


def test_bad_parameters_and_prompts(tiny_llama, small_prompts, tmp_path):
    with pytest.raises(InputError, match="give exactly one layer.head for each of the 4 layers"):
        run_probe(tiny_llama, small_prompts, tmp_path, heads="0.1,1.1")
    with pytest.raises(InputError, match="head index 9 is out of range"):
        run_probe(tiny_llama, small_prompts, tmp_path, heads="9")
    with pytest.raises(InputError, match="rollout_weight=.0.: Input should be greater than 0"):
        run_probe(tiny_llama, small_prompts, tmp_path, rollout_weight="0")
    with pytest.raises(InputError, match=r"has \d+ tokens; position_bias with k=20 needs at "
                                         "least 41"):
        run_probe(tiny_llama, small_prompts, tmp_path, k="20")
    with pytest.raises(InputError, match="has no segment 'needle'"):
        run_probe(tiny_llama, small_prompts, tmp_path, k=1, segment="needle")
    assert not (tmp_path / "runs").exists()


@pytest.mark.real_model
def test_real_model_cumulative_rows_stay_stochastic(smollm2, smollm2_hf, tmp_path):
    """SmolLM2-135M, 30 layers: every record against the HF reference, and the cumulative matrix
    row-stochastic to 1e-5 (the last row sums to 1, the column sums to n)."""
    rows = [p for p in load_prompt_set(DATA / "retrieval.jsonl").prompts[:3]]
    natural = load_prompt_set(DATA / "natural.jsonl").prompts[0]
    path = write_jsonl(tmp_path / "mix.jsonl", [
        {"id": p.id, "text": p.text, "segments": {"needle": list(p.segments["needle"])}}
        for p in rows] + [{"id": natural.id, "text": natural.text,
                           "segments": {"needle": [0, 10]}}])
    table, tokenized = run_probe(smollm2, path, tmp_path, batch_size=4, segment="needle")
    check_records(table, tokenized, smollm2_hf, None, k=3, atol=1e-5, segment="needle")
    prompts = table[table.prompt_id.notna()]
    lengths = {t.id: t.n_tokens for t in tokenized}
    last = prompts[prompts.metric == "last_token_profile"].groupby(
        ["prompt_id", "layer", "condition"]).value.sum()
    assert len(last) == 4 * 30 * 2 and (last - 1).abs().max() < 1e-5
    cols = prompts[prompts.metric == "column_sum"].groupby(["prompt_id", "layer",
                                                             "condition"]).value.sum()
    n = cols.index.get_level_values("prompt_id").map(lengths).to_numpy()
    assert np.abs(cols.to_numpy() - n).max() < 1e-5 * n.max()
