"""Intervention edits: hand-computed cases, exact no-ops and equivalences on tiny models."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import write_jsonl
from workbench.errors import WorkbenchError
from workbench.forward import last_logits, logits
from workbench.heads import scale_heads_hooks
from workbench.interventions import applied, check_spec, parse_spec
from workbench.interventions import edits, verify
from workbench.interventions.evaluate import InterveneOptions, Sweep, intervene
from workbench.interventions.hooks import capture
from workbench.metrics import answer_token_ids, kl_divergence, logit_diff
from workbench.prompts import load_prompt_set
from workbench.tokens import make_batches, pad_token_id, tokenize_prompt_set


def redistribute_row(row, sink, target, p, min_mass=0.2, rho=0.8):
    """Slow reference of VAR on one attention row (lists of floats / key sets)."""
    seg = sum(row[k] for k in target)
    goal = [k for k in target if k not in sink]
    goal_mass = sum(row[k] for k in goal)
    if seg < min_mass or goal_mass < rho * seg or goal_mass == 0:
        return list(row)
    moved = p * sum(row[k] for k in sink)
    out = list(row)
    for k in sink:
        out[k] = (1 - p) * row[k]
    for k in goal:
        out[k] = row[k] + moved * row[k] / goal_mass
    return out


def test_redistribute_hand_case_and_rows_sum_to_one():
    a = torch.tensor([0.5, 0.1, 0.2, 0.2]).reshape(1, 1, 1, 4)
    sink = torch.tensor([[True, False, False, False]])
    target = torch.tensor([[False, False, True, True]])
    out = edits.redistribute(a, sink, target, 0.5)
    assert torch.allclose(out.flatten(), torch.tensor([0.25, 0.1, 0.325, 0.325]))
    assert edits.redistribute(a, sink, target, 0.5, min_segment_mass=0.5).equal(a)
    assert edits.redistribute(a, sink, target, 0.0) is a
    torch.manual_seed(0)
    pattern = torch.softmax(torch.randn(2, 3, 6, 6), -1).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    sink = torch.zeros(2, 6, dtype=torch.bool)
    sink[:, 0] = True
    target = torch.zeros(2, 6, dtype=torch.bool)
    target[:, 2:5] = True
    out = edits.redistribute(pattern, sink, target, 0.7, min_segment_mass=0.1, rho=0.5)
    assert torch.allclose(out.sum(-1), torch.ones(2, 3, 6), atol=1e-6)
    for b, h, q in [(0, 0, 5), (1, 2, 3), (1, 1, 4), (0, 2, 1)]:
        want = redistribute_row(pattern[b, h, q].tolist(), {0}, {2, 3, 4}, 0.7, 0.1, 0.5)
        assert torch.allclose(out[b, h, q], torch.tensor(want), atol=1e-6)


def test_mask_and_temperature_match_a_softmax_of_edited_scores():
    torch.manual_seed(1)
    scores = torch.randn(1, 2, 5, 5)
    low = torch.finfo(scores.dtype).min
    scores = scores.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), low)
    knocked = torch.tensor([[False, True, False, True, False]])
    want = torch.softmax(scores.masked_fill(knocked[:, None, None, :], float("-inf")), -1)
    got = edits.mask_pattern(torch.softmax(scores, -1), knocked)
    assert torch.allclose(got, want, atol=1e-6)
    first = torch.tensor([[True, False, False, False, False]])
    got = edits.mask_pattern(torch.softmax(scores, -1), first)
    assert torch.equal(got[..., 0, :], torch.softmax(scores, -1)[..., 0, :])  # nothing left: kept
    assert torch.allclose(got[..., 1, :], torch.tensor([0.0, 1, 0, 0, 0]).expand(1, 2, 5))
    tempered = torch.softmax(edits.temper_scores(scores, 2.0), -1)
    ref = torch.softmax((scores / 2).masked_fill(scores == low, float("-inf")), -1)
    assert torch.allclose(tempered, ref, atol=1e-6)
    assert edits.temper_scores(scores, 1.0) is scores


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": "Then, Mary and John went to the store. John gave a drink to",
         "segments": {"names": [6, 19]}, "answer": " Mary", "distractor": " John",
         "corrupted_text": "Then, John and Mary went to the store. Mary gave a drink to"},
        {"id": "b", "text": "When Tom and Sue met, Sue handed a pen to",
         "segments": {"names": [5, 16]}, "answer": " Tom", "distractor": " Sue",
         "corrupted_text": "When Sue and Tom met, Sue handed a pen to"}])


def setup(model, path, ops):
    tok = tokenize_prompt_set(load_prompt_set(path), model.tokenizer,
                              prepend_bos=model.info.prepend_bos)
    batch = make_batches(tok, 4, pad_token_id(model.tokenizer))[0]
    return check_spec(model, parse_spec(ops), tok), batch


def run(model, checked, batch):
    with applied(model, checked, batch):
        return logits(model, batch)


NO_OPS = [{"op": "scale_head", "heads": ["1.1", "2.3"], "alpha": 1.0},
          {"op": "scale_head", "heads": ["1.1"], "alpha": 1.0, "point": "hook_result"},
          {"op": "redistribute_attention", "heads": {"select": "all"}, "p": 0.0,
           "target_segment": "names"},
          {"op": "attention_temperature", "heads": ["0.0"], "temperature": 1.0},
          {"op": "value_noise", "heads": ["1.1"], "sigma": 0.0}]


@pytest.mark.parametrize("op", NO_OPS, ids=lambda o: o["op"])
def test_exact_no_ops(tiny_llama, prompts, op):
    checked, batch = setup(tiny_llama, prompts, [op])
    assert torch.equal(run(tiny_llama, checked, batch), logits(tiny_llama, batch))


def test_alpha_zero_is_zero_ablation_on_z_and_result(tiny_llama, prompts):
    heads = ["1.1", "3.0"]
    base = [run(tiny_llama, *setup(tiny_llama, prompts, [{"op": "ablate_head", "heads": heads}]))]
    for point in ("hook_z", "hook_result"):
        op = {"op": "scale_head", "heads": heads, "alpha": 0.0, "point": point}
        base.append(run(tiny_llama, *setup(tiny_llama, prompts, [op])))
    assert torch.equal(base[0], base[1])
    assert torch.allclose(base[0], base[2], atol=1e-4)
    assert not torch.allclose(base[0], logits(tiny_llama, setup(tiny_llama, prompts, [
        {"op": "ablate_head", "heads": heads}])[1]), atol=1e-2)


def test_value_ops_recompute_z_with_gqa_mapping(tiny_llama, prompts):
    """kv_misalign / resample with corrupted_text == text are no-ops (to float error), which
    holds only if z = pattern @ v with query head h reading kv head h // group."""
    info = tiny_llama.info
    assert info.n_key_value_heads < info.n_heads  # GQA
    same = write_jsonl(prompts.parent / "same.jsonl", [
        {"id": "a", "text": "Mary and John went home",
         "corrupted_text": "Mary and John went home"}])
    for op in ({"op": "kv_misalign", "heads": ["1.1", "1.2", "2.3"]},
               {"op": "ablate_head", "heads": ["1.1", "2.3"], "mode": "resample"}):
        checked, batch = setup(tiny_llama, same, [op])
        assert torch.allclose(run(tiny_llama, checked, batch), logits(tiny_llama, batch),
                              atol=1e-5)
    checked, batch = setup(tiny_llama, prompts, [{"op": "kv_misalign", "heads": ["1.1"]}])
    assert not torch.allclose(run(tiny_llama, checked, batch), logits(tiny_llama, batch),
                              atol=1e-3)


def test_mean_ablation_uses_the_mean_z_over_real_tokens(tiny_llama, prompts):
    checked, batch = setup(tiny_llama, prompts, [{"op": "ablate_head", "heads": ["2.1"],
                                                  "mode": "mean"}])
    z = capture(tiny_llama, batch, ["blocks.2.attn.hook_z"])["blocks.2.attn.hook_z"]
    mean = z[batch.valid()][:, 1].mean(0)  # [d_head]

    def hand(act, hook):
        out = act.clone()
        out[:, :, 1] = mean
        return out
    want = logits(tiny_llama, batch, [("blocks.2.attn.hook_z", hand)])
    assert torch.allclose(run(tiny_llama, checked, batch), want, atol=1e-5)


def test_redistributed_pattern_rows_sum_to_one_in_the_model(tiny_llama, prompts):
    checked, batch = setup(tiny_llama, prompts, [
        {"op": "redistribute_attention", "heads": {"select": "all"}, "p": 0.8,
         "target_segment": "names", "min_segment_mass": 0.0, "rho": 0.0}])
    seen = {}
    grab = [(f"blocks.{layer}.attn.hook_pattern", lambda a, hook, layer=layer:
             seen.__setitem__(layer, a.clone())) for layer in range(tiny_llama.info.n_layers)]
    with applied(tiny_llama, checked, batch), tiny_llama.bridge.hooks(fwd_hooks=grab):
        torch.inference_mode()(tiny_llama.bridge)(batch.input_ids, **batch.model_kwargs())
    clean = capture(tiny_llama, batch, ["blocks.0.attn.hook_pattern"])
    valid = batch.valid()
    for layer, pattern in seen.items():
        sums = pattern.sum(-1)[valid[:, None, :].expand(-1, pattern.shape[1], -1)]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)
    assert not torch.allclose(seen[0], clean["blocks.0.attn.hook_pattern"])
    last = tiny_llama.info.n_layers - 1
    assert checked.heads[0][-1][0] == last - 1  # the last layer is untouched


def test_verify_edits_refuses_an_ignored_edit(monkeypatch):
    from workbench.models import load_model

    model = load_model("tiny-gpt2", device="cpu")  # a fresh bridge: nothing verified yet
    monkeypatch.setattr(verify, "_edit", lambda kind: (lambda act, hook: act))
    with pytest.raises(verify.EditNotApplied, match="ignores edits at hook_pattern"):
        verify.verify_edits(model, {"hook_pattern"})
    assert issubclass(verify.EditNotApplied, WorkbenchError)


def test_intervene_sweep_table(tiny_llama, prompts, tmp_path):
    spec = parse_spec([{"op": "scale_head", "heads": ["2.1"]}])
    runs = intervene(tiny_llama, load_prompt_set(prompts), spec, InterveneOptions(
        sweep=Sweep.parse("alpha=0,1,2"), runs_dir=tmp_path, progress=False))
    frame = runs.read_table("interventions").to_pandas()
    tok = tokenize_prompt_set(load_prompt_set(prompts), tiny_llama.tokenizer,
                              prepend_bos=tiny_llama.info.prepend_bos)
    batch = make_batches(tok, 8, pad_token_id(tiny_llama.tokenizer))[0]
    pair = (answer_token_ids(tiny_llama.tokenizer, batch.prompts, "answer"),
            answer_token_ids(tiny_llama.tokenizer, batch.prompts, "distractor"))
    base = last_logits(tiny_llama, batch)
    for alpha in (0, 1, 2):
        new = last_logits(tiny_llama, batch, scale_heads_hooks([(2, 1)], alpha))
        rows = frame[frame["condition"] == f"alpha={alpha}"].set_index("metric")
        ld = logit_diff(new, *pair)
        assert rows.loc["mean_logit_diff", "value"] == pytest.approx(float(ld.mean()), abs=1e-5)
        assert rows.loc["accuracy", "value"] == float((ld > 0).float().mean())
        assert rows.loc["mean_kl_divergence", "value"] == pytest.approx(
            float(kl_divergence(base, new).mean()), abs=1e-6)
        assert (rows.loc["mean_logit_diff", "layer"], rows.loc["mean_logit_diff", "head"]) == (2, 1)
        assert rows.loc["mean_head_output_rel_error", "value"] == pytest.approx(abs(alpha - 1),
                                                                                abs=1e-6)
    kl1 = frame[(frame["metric"] == "kl_divergence") & (frame["condition"] == "alpha=1")]
    assert (kl1["value"] == 0).all() and len(kl1) == 2


def test_probe_metrics_are_compared_between_conditions(tiny_llama, prompts, tmp_path):
    """The entropy probe under a temperature edit of head 0.1: layer 0's other heads keep their
    entropy, head 0.1's becomes the entropy of softmax(scores / 4) (computed here by hand)."""
    from probes import make_probes
    from probes.entropy import attention_entropy

    spec = parse_spec([{"op": "attention_temperature", "heads": ["0.1"], "temperature": 4.0}])
    run_dir = intervene(tiny_llama, load_prompt_set(prompts), spec, InterveneOptions(
        probes=make_probes(["attention_entropy"]), runs_dir=tmp_path, progress=False))
    frame = run_dir.read_table("attention_entropy").to_pandas()
    frame = frame[(frame["metric"] == "entropy") & (frame["layer"] == 0)]
    wide = frame.pivot_table(index=["prompt_id", "head", "query_pos"], columns="condition",
                             values="value")
    other = wide.xs(2, level="head")
    assert (other["baseline"] - other["intervened"]).abs().max() < 1e-6
    tok = tokenize_prompt_set(load_prompt_set(prompts), tiny_llama.tokenizer,
                              prepend_bos=tiny_llama.info.prepend_bos)
    batch = make_batches(tok, 8, pad_token_id(tiny_llama.tokenizer))[0]
    scores = capture(tiny_llama, batch, ["blocks.0.attn.hook_attn_scores"])[
        "blocks.0.attn.hook_attn_scores"][:, 1]
    want = attention_entropy(torch.softmax(edits.temper_scores(scores, 4.0), -1)[:, None])[:, 0]
    b = batch.prompt_ids.index("a")
    got = wide.xs(("a", 1), level=("prompt_id", "head"))["intervened"]
    assert len(got) >= 15
    positions = torch.tensor(got.index.to_numpy().copy())
    assert torch.allclose(torch.tensor(got.to_numpy().copy()), want[b, positions].double(),
                          atol=1e-5)
    assert (wide.xs(1, level="head")["baseline"] - wide.xs(1, level="head")["intervened"]
            ).abs().max() > 1e-2


def test_probes_without_attention_hooks_see_pattern_edits(tiny_llama, prompts, tmp_path):
    """A resid-only probe (``massive_activations``, which alone would run sdpa) is compared under
    a pattern edit: the intervened residual stream differs from the baseline after layer 0 and
    equals a hand-run forward with the same pattern edit."""
    from probes import make_probes

    spec = parse_spec([{"op": "mask_keys", "heads": ["0.0", "0.1"], "positions": [1]}])
    run_dir = intervene(tiny_llama, load_prompt_set(prompts), spec, InterveneOptions(
        probes=make_probes(["massive_activations"]), runs_dir=tmp_path, progress=False))
    frame = run_dir.read_table("massive_activations").to_pandas()
    top = frame[(frame["metric"] == "median_abs")].pivot_table(
        index=["prompt_id", "layer"], columns="condition", values="value")
    assert (top.xs(0, level="layer")["baseline"] - top.xs(0, level="layer")["intervened"]
            ).abs().max() < 1e-6
    assert (top.xs(1, level="layer")["baseline"] - top.xs(1, level="layer")["intervened"]
            ).abs().max() > 1e-4
