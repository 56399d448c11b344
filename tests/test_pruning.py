"""Head importance, pruning and learned gates (the ``pruning`` package) on tiny random models:
hand-computed cases, exact identities and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pruning.gates import HardConcrete, gate_hooks, mask_gates
from pruning.importance import batch_gate_gradients, head_importance, layer_normalise
from pruning.learn import GateTraining, gates_spec, split_prompts, train_gates
from pruning.objectives import lm_loss, metric_values, prepare
from pruning.prune import (evaluate, head_means, importance_order, removable_fraction,
                           removal_counts)
from tests.pruning_fixture import lm_prompt_file
from tests.float64 import float64_model
from workbench.forward import logits
from workbench.heads import format_head
from workbench.prompts import load_prompt_set

@pytest.fixture
def lm_prompts(tmp_path):
    return lm_prompt_file(tmp_path / "lm.jsonl")


@pytest.fixture
def lm_data(tiny_llama, lm_prompts):
    return prepare(tiny_llama, load_prompt_set(lm_prompts), "lm")


def _zero_head(layer: int, head: int):
    """Independent zero ablation: a hook writing zeros into one head's z."""
    def hook(z, hook):
        z = z.clone()
        z[:, :, head] = 0.0
        return z
    return [(f"blocks.{layer}.attn.hook_z", hook)]


def test_gates_all_one_is_the_unmodified_model_exactly(tiny_llama, lm_data):
    batch = lm_data.batches(8)[0]
    plain = logits(tiny_llama, batch)
    info = tiny_llama.info
    gated = logits(tiny_llama, batch, gate_hooks(torch.ones(info.n_layers, info.n_heads)))
    per_prompt = logits(tiny_llama, batch,
                        gate_hooks(torch.ones(batch.size, info.n_layers, info.n_heads)))
    assert torch.equal(plain, gated) and torch.equal(plain, per_prompt)


def test_a_gate_at_zero_is_zero_ablation_of_that_head(tiny_llama, lm_data):
    batch = lm_data.batches(8)[0]
    info = tiny_llama.info
    for layer, head in [(0, 1), (2, 3)]:
        gated = logits(tiny_llama, batch,
                       gate_hooks(mask_gates(info.n_layers, info.n_heads, [(layer, head)])))
        ablated = logits(tiny_llama, batch, _zero_head(layer, head))
        assert torch.equal(gated, ablated)
        assert not torch.equal(gated, logits(tiny_llama, batch))


def test_lm_loss_matches_cross_entropy_per_prompt(tiny_llama, lm_data):
    for batch in lm_data.batches(3):
        got = lm_loss(logits(tiny_llama, batch), batch.input_ids, batch.attention_mask)
        for b, tok in enumerate(batch.prompts):
            ids = torch.from_numpy(tok.input_ids)[None]
            one = logits(tiny_llama, type(batch)(0, [tok], ids, torch.ones_like(ids),
                                                 torch.tensor([tok.n_tokens])))
            want = torch.nn.functional.cross_entropy(one[0, :-1].float(), ids[0, 1:])
            assert got[b].item() == pytest.approx(want.item(), rel=1e-5)


def test_expected_open_gates_closed_form_hand_case():
    hc = HardConcrete()
    shift = (2 / 3) * math.log(0.1 / 1.1)  # beta log(-gamma / zeta)
    assert hc.shift == pytest.approx(shift) and shift == pytest.approx(-1.598597, abs=1e-6)
    log_alpha = torch.tensor([[shift, shift], [0.0, -20.0]], dtype=torch.float64)
    # sigmoid(0) + sigmoid(0) + sigmoid(-shift) + sigmoid(-20 - shift)
    want = 0.5 + 0.5 + 1 / (1 + math.exp(shift)) + 1 / (1 + math.exp(20 + shift))
    assert float(hc.expected_open(log_alpha)) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx(1.831822, abs=1e-6)
    # Monte Carlo: the fraction of non-zero draws matches P(open) per gate
    torch.manual_seed(0)
    draws = hc.sample(log_alpha.expand(100_000, 2, 2).clone())
    open_rate = (draws > 0).double().mean(0)
    assert torch.allclose(open_rate, hc.prob_open(log_alpha), atol=5e-3)
    assert float(open_rate.sum()) == pytest.approx(want, abs=1e-2)


def test_deterministic_gate_is_zero_below_the_threshold():
    hc = HardConcrete()
    edge = math.log(1 / 11)  # sigmoid = -gamma / (zeta - gamma) = 1/12 -> gate 0
    det = hc.deterministic(torch.tensor([edge - 1e-3, 0.0, 3.0], dtype=torch.float64))
    assert det[0] == 0 and det[2] == 1
    assert float(det[1]) == pytest.approx(0.5 * 1.2 - 0.1)


def test_layer_normalisation_hand_case():
    got = layer_normalise(np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]))
    assert np.allclose(got, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])


def test_batched_per_prompt_gradients_equal_one_prompt_at_a_time(tiny_llama, lm_data):
    imp = head_importance(tiny_llama, lm_data, batch_size=4)
    for i, pid in enumerate(lm_data.ids):
        one = lm_data.subset([pid])
        grad, value = batch_gate_gradients(tiny_llama, one, one.batches(1)[0])
        assert np.allclose(imp.gradients[i], grad[0].numpy(), rtol=1e-4, atol=1e-6)
        assert imp.values[i] == pytest.approx(float(value[0]), rel=1e-5)
    assert np.allclose(imp.raw, np.abs(imp.gradients).mean(0))


def test_importance_equals_a_central_difference_tiny(tiny_llama, lm_data, monkeypatch):
    with float64_model(tiny_llama, monkeypatch) as model:
        data = lm_data.subset(lm_data.ids[:2])
        imp = head_importance(model, data)
        info, eps = model.info, 1e-4
        for layer, head in [(0, 0), (1, 2), (3, 3)]:
            diffs = []
            for sign in (1, -1):
                gates = torch.ones(info.n_layers, info.n_heads, dtype=torch.float64)
                gates[layer, head] += sign * eps
                diffs.append(evaluate(model, data, gates))
            fd = (diffs[0] - diffs[1]) / (2 * eps)  # [n_prompts], d lm_loss / d g
            assert np.allclose(imp.gradients[:, layer, head], fd, rtol=1e-5, atol=0)
            assert imp.raw[layer, head] == pytest.approx(np.abs(fd).mean(), rel=1e-5)


def test_removal_counts_order_and_removable_fraction():
    assert removal_counts(270) == [0, 27, 54, 81, 108, 135, 162, 189, 216, 243, 270]
    assert removal_counts(16) == [0, 2, 3, 5, 6, 8, 10, 11, 13, 14, 16]
    assert importance_order(np.array([[0.3, 0.1], [0.1, 0.9]])) == [(0, 1), (1, 0), (0, 0),
                                                                      (1, 1)]
    from pruning.objectives import OBJECTIVES

    lm, ld = OBJECTIVES["lm"], OBJECTIVES["logit_diff"]
    # loss 2.0 -> within 5% below 2.1; the step after the first breach never counts
    assert removable_fraction([0, 1, 2, 3, 4], np.array([2.0, 2.05, 2.09, 2.3, 2.0]), 2.0, lm,
                              4) == 0.5
    assert removable_fraction([0, 1, 2], np.array([4.0, 3.7, 3.9]), 4.0, ld, 2) == 0.0
    assert removable_fraction([0, 1, 2], np.array([4.0, 3.9, 3.85]), 4.0, ld, 2) == 1.0


def test_mean_ablation_replaces_z_by_its_token_mean(tiny_llama, lm_data):
    means = head_means(tiny_llama, lm_data, batch_size=4)
    seen, count = torch.zeros_like(means), 0
    for tok in lm_data.tokenized:  # independent: one prompt at a time, no padding
        ids = torch.from_numpy(tok.input_ids)[None]
        got = {}

        def keep(layer):
            def hook(z, hook):
                got[layer] = z[0].float()
            return hook
        with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=[
                (f"blocks.{layer}.attn.hook_z", keep(layer)) for layer in range(4)]):
            tiny_llama.bridge(ids)
        seen += torch.stack([got[layer].sum(0) for layer in range(4)])
        count += tok.n_tokens
    assert torch.allclose(means, seen / count, atol=1e-6)
    gates = mask_gates(4, 4, [(1, 2)])
    filled = evaluate(tiny_llama, lm_data, gates, means)

    def replace(z, hook):
        z = z.clone()
        z[:, :, 2] = means[1, 2]
        return z
    batch = lm_data.batches(8)[0]
    want = metric_values(lm_data, logits(tiny_llama, batch,
                                         [("blocks.1.attn.hook_z", replace)]), batch)
    order = [lm_data.ids.index(p) for p in batch.prompt_ids]
    assert np.allclose(filled[order], want.numpy(), rtol=1e-5)


def test_split_is_disjoint_covering_and_seeded():
    ids = [f"p{i}" for i in range(11)]
    train, held = split_prompts(ids, 0.3, seed=4)
    assert not set(train) & set(held) and sorted(train + held) == sorted(ids)
    assert len(held) == 3 and split_prompts(ids, 0.3, seed=4) == (train, held)
    assert split_prompts(ids, 0.3, seed=5) != (train, held)


def test_training_sees_only_train_prompts_and_keeps_weights(tiny_llama, lm_data, monkeypatch):
    import pruning.learn as learn

    seen: set[str] = set()
    real = learn.make_batches

    def spy(prompts, *args, **kwargs):
        seen.update(t.id for t in prompts)
        return real(prompts, *args, **kwargs)
    monkeypatch.setattr(learn, "make_batches", spy)
    train_ids, eval_ids = split_prompts(lm_data.ids, 0.5, seed=0)
    before = [p.detach().clone() for p in tiny_llama.bridge.parameters()]
    flags = [p.requires_grad for p in tiny_llama.bridge.parameters()]
    learned = train_gates(tiny_llama, lm_data.subset(train_ids),
                          GateTraining(0.5, steps=30, lr=0.2, batch_size=2))
    assert seen and seen <= set(train_ids)
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_llama.bridge.parameters()))
    assert flags == [p.requires_grad for p in tiny_llama.bridge.parameters()]
    # a large lambda pushes P(open) down from its start (init 3: 0.99 per gate)
    assert learned.expected_open < 0.99 * 16 and len(learned.history) == 30


def test_gates_spec_groups_values_and_round_trips(tiny_llama, lm_data):
    from workbench.interventions import applied, check_spec, parse_spec

    gates = np.ones((4, 4))
    gates[0, 1] = gates[2, 3] = 0.0
    gates[1, 1] = np.float32(0.37)
    spec = gates_spec(gates)
    assert spec == [{"op": "scale_head", "heads": [format_head((0, 1)), format_head((2, 3))],
                     "alpha": 0.0, "point": "hook_z"},
                    {"op": "scale_head", "heads": [format_head((1, 1))],
                     "alpha": float(np.float32(0.37)), "point": "hook_z"}]
    checked = check_spec(tiny_llama, parse_spec(spec), list(lm_data.tokenized))
    batch = lm_data.batches(8)[0]
    with applied(tiny_llama, checked, batch):
        via_spec = logits(tiny_llama, batch)
    via_gates = logits(tiny_llama, batch, gate_hooks(torch.from_numpy(gates).float()))
    assert torch.equal(via_spec, via_gates)
    assert gates_spec(np.ones((2, 2)))[0]["heads"] == {"select": "all"}


def test_pruning_figures_hand_case():
    from tests.pruning_fixture import pruning_plots

    curve, frontier = pruning_plots()
    rand = curve.data[curve.data.order == "random"].set_index("fraction")
    assert rand.loc[0.5, ["mean", "lo", "hi", "n"]].tolist() == [4.5, 4.0, 5.0, 2]
    assert curve.params["base"] == 2.0 and curve.params["threshold"] == pytest.approx(2.1)
    fig = curve.figure("single")
    line = next(t for t in fig.data if t.name == "importance order")
    assert list(line.y) == [2.0, 2.5, 6.0]
    assert frontier.data.sort_values("lam").values.tolist() == [[0.01, 3, 2.1], [0.1, 1, 3.0]]
    assert frontier.params["base"] == 2.0 and frontier.params["n_heads"] == 4
