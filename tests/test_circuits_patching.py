"""Activation patching per head: the resumed forward, hand-made Hugging Face hooks, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.cache import capture, check_resume, forward_from_layer
from circuits.effects import HeadEffects, position_mask, spearman
from circuits.patching import activation_patching, naive_activation_patching
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from workbench.errors import InputError, WorkbenchError
from workbench.metrics import logit_diff
from workbench.heads import format_head

DIRECTIONS = ["corrupted_into_clean", "clean_into_corrupted"]


@pytest.fixture(scope="module")
def tiny_task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("tasks"), n=5)


def hf_twin(model):
    """An independent plain Hugging Face copy of a tiny registry model (same seed, never wrapped)."""
    from workbench.tiny import TinyConfig, build_tiny_hf_model

    return build_tiny_hf_model(TinyConfig(model.info.name.removeprefix("tiny-")),
                               len(model.tokenizer))


def o_proj(hf, layer):
    """The module whose input is the concatenated per-head z: o_proj (Llama) or c_proj (GPT-2)."""
    if hasattr(hf, "transformer"):
        return hf.transformer.h[layer].attn.c_proj
    return hf.model.layers[layer].self_attn.o_proj


def hf_patched_logit_diff(hf, tb, direction, layer, head, d_head, mask):
    """Hand-made: take the source run's o_proj input, put head's slice into the base run (masked)."""
    base, source = (tb.clean, tb.corrupted) if direction == "corrupted_into_clean" \
        else (tb.corrupted, tb.clean)
    cut = slice(head * d_head, (head + 1) * d_head)
    kept = {}
    handle = o_proj(hf, layer).register_forward_pre_hook(
        lambda module, args: kept.update(z=args[0].detach().clone()))
    with torch.inference_mode():
        hf(input_ids=source.input_ids, attention_mask=source.attention_mask)
    handle.remove()

    def patch(module, args):
        x = args[0].clone()
        x[..., cut] = torch.where(mask[..., None], kept["z"][..., cut], x[..., cut])
        return (x,)
    handle = o_proj(hf, layer).register_forward_pre_hook(patch)
    try:
        with torch.inference_mode():
            logits = hf(input_ids=base.input_ids, attention_mask=base.attention_mask).logits
    finally:
        handle.remove()
    last = logits[torch.arange(tb.clean.size), tb.clean.last_pos()]
    return logit_diff(last, tb.answer, tb.distractor).numpy()


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_forward_from_every_layer_equals_the_full_forward(which, request, tiny_task_path):
    model = request.getfixturevalue(which)
    task = load_task(str(tiny_task_path), model)
    tb = task.batches(5)[0]
    assert tb.clean.attention_mask.min() == 0  # the batch has padding
    cache = capture(model, tb.clean)
    with torch.inference_mode():
        full = model.bridge(tb.clean.input_ids, attention_mask=tb.clean.attention_mask)
    want = full[torch.arange(tb.clean.size), tb.clean.last_pos()]
    for layer in range(model.info.n_layers):
        with torch.inference_mode():
            got = forward_from_layer(model, cache, layer)
            three = forward_from_layer(model, cache, layer, copies=3)
        assert torch.allclose(got, want, atol=1e-5), layer
        assert torch.allclose(three, want.repeat(3, 1), atol=1e-5), layer
    assert check_resume(model, cache) < 1e-5
    cache.last_logits = cache.last_logits + 1.0 * torch.arange(cache.last_logits.shape[-1])
    with pytest.raises(WorkbenchError, match="patching from a layer is not supported"):
        check_resume(model, cache)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("positions", [None, "IO,last"])
def test_one_head_matches_a_hand_made_hf_hook(which, direction, positions, request,
                                              tiny_task_path):
    model = request.getfixturevalue(which)
    hf = hf_twin(model)
    task = load_task(str(tiny_task_path), model)
    heads = [(1, 2), (3, 0)]
    got = activation_patching(model, task, direction=direction, positions=positions, heads=heads,
                              batch_size=5)
    tb = task.batches(5)[0]
    mask = position_mask(tb.clean, positions)
    for layer, head in heads:
        want = hf_patched_logit_diff(hf, tb, direction, layer, head, model.info.d_head, mask)
        np.testing.assert_allclose(got.patched[tb.index, layer, head], want, atol=1e-4)
        assert np.abs(want - got.base[tb.index]).max() > 1e-3  # the patch did something
    assert np.isnan(got.patched[:, 0]).all()  # heads not asked for stay NaN


def test_all_heads_of_a_layer_equal_patching_the_attention_output(tiny_llama, tiny_task_path):
    task = load_task(str(tiny_task_path), tiny_llama)
    tb = task.batches(5)[0]
    layer = 2
    source = capture(tiny_llama, tb.corrupted, block_inputs=False)
    kept = {}
    with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=[(
            f"blocks.{layer}.hook_attn_out", lambda t, hook: kept.update(out=t.clone()))]):
        tiny_llama.bridge(tb.corrupted.input_ids, attention_mask=tb.corrupted.attention_mask)
    base = capture(tiny_llama, tb.clean, z=False)
    all_z = [(f"blocks.{layer}.attn.hook_z", lambda z, hook: source.z[layer].clone())]
    attn_out = [(f"blocks.{layer}.hook_attn_out", lambda t, hook: kept["out"])]
    with torch.inference_mode():
        by_heads = forward_from_layer(tiny_llama, base, layer, fwd_hooks=all_z)
        by_output = forward_from_layer(tiny_llama, base, layer, fwd_hooks=attn_out)
    assert torch.allclose(by_heads, by_output, atol=1e-5)
    assert not torch.allclose(by_heads, base.last_logits, atol=1e-3)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_batched_heads_equal_the_one_head_loop_and_the_naive_reference(direction, tiny_llama,
                                                                       tiny_task_path):
    task = load_task(str(tiny_task_path), tiny_llama)
    one = activation_patching(tiny_llama, task, direction=direction, batch_size=2,
                              heads_per_forward=1)
    for size in (3, 16):
        many = activation_patching(tiny_llama, task, direction=direction, batch_size=2,
                                   heads_per_forward=size)
        np.testing.assert_allclose(many.patched, one.patched, atol=1e-5)
    naive = naive_activation_patching(tiny_llama, task, direction=direction, batch_size=3)
    np.testing.assert_allclose(naive.patched, one.patched, atol=1e-5)
    np.testing.assert_allclose(naive.clean, one.clean, atol=1e-5)
    assert not np.isnan(one.patched).any()


def test_patching_a_prompt_into_itself_changes_nothing(tiny_gpt2, tmp_path):
    from tests.circuit_tasks import tiny_ioi_rows
    from tests.conftest import write_jsonl

    rows = [{**r, "corrupted_text": r["text"]} for r in tiny_ioi_rows(3)]
    task = load_task(str(write_jsonl(tmp_path / "same.jsonl", rows)), tiny_gpt2)
    result = activation_patching(tiny_gpt2, task, heads=[(0, 0), (2, 3)])
    np.testing.assert_allclose(result.patched[:, 0, 0], result.clean, atol=1e-5)
    np.testing.assert_allclose(result.clean, result.corrupted, atol=0)


def test_effect_and_score_sign_convention():
    patched = np.array([[[1.0, 3.0]], [[3.0, 5.0]]])  # 2 prompts, 1 layer, 2 heads
    clean, corrupted = np.array([4.0, 6.0]), np.array([0.0, 2.0])  # means 5 and 1, gap 4
    noising = HeadEffects("m", "t", "corrupted_into_clean", patched, clean, corrupted, ["a", "b"])
    assert noising.effect.tolist() == [[-3.0, -1.0]] and noising.score.tolist() == [[0.75, 0.25]]
    denoising = HeadEffects("m", "t", "clean_into_corrupted", patched, clean, corrupted, ["a", "b"])
    assert denoising.effect.tolist() == [[1.0, 3.0]] and denoising.score.tolist() == [[0.25, 0.75]]
    table = denoising.records().to_pandas()
    # per prompt x head logit_diff, effect and score per head, and the score's bootstrap interval
    assert len(table) == 4 + 2 + 2 + 2 + 2 and set(table.segment) == {"t"}
    by = {m: table[table.metric == m].sort_values("head").value.to_numpy()
          for m in ("score", "score_lo", "score_hi")}
    assert (by["score_lo"] <= by["score"]).all() and (by["score"] <= by["score_hi"]).all()
    row = table[(table.metric == "logit_diff") & (table.prompt_id == "b") & (table["head"] == 1)]
    assert row.value.tolist() == [5.0]
    assert spearman(np.array([1.0, 2, 3, np.nan]), np.array([10.0, 30, 20, 0])) == pytest.approx(0.5)
    assert spearman(np.array([1.0, 1, 2]), np.array([0.0, 1, 2])) == pytest.approx(np.sqrt(3) / 2)


def test_bad_positions_and_directions_fail_before_any_forward(tiny_llama, tiny_task_path):
    task = load_task(str(tiny_task_path), tiny_llama)
    with pytest.raises(InputError, match="prompt 'tiny-ioi-0' has no segment 'S9'"):
        activation_patching(tiny_llama, task, positions="S9")
    with pytest.raises(InputError, match="direction 'sideways' is not one of"):
        activation_patching(tiny_llama, task, direction="sideways")
    with pytest.raises(InputError, match=f"head {format_head((4, 0))} is out of range"):
        activation_patching(tiny_llama, task, heads=[(4, 0)])
    mask = position_mask(task.batches(5)[0].clean, "last")
    assert mask.sum(1).tolist() == [1] * 5


@pytest.mark.real_model
def test_real_model_one_head_matches_hf_and_resumes_exactly(smollm2, smollm2_hf):
    task = load_task("ioi", smollm2, n_prompts=4)
    tb = task.batches(4)[0]
    cache = capture(smollm2, tb.clean)
    with torch.inference_mode():
        resumed = forward_from_layer(smollm2, cache, 17)
    assert torch.allclose(resumed, cache.last_logits, atol=1e-4)
    got = activation_patching(smollm2, task, heads=[(9, 6), (21, 4)], batch_size=4)
    mask = position_mask(tb.clean, None)
    for layer, head in [(9, 6), (21, 4)]:
        want = hf_patched_logit_diff(smollm2_hf, tb, "corrupted_into_clean", layer, head,
                                     smollm2.info.d_head, mask)
        np.testing.assert_allclose(got.patched[tb.index, layer, head], want, atol=1e-4)


def test_default_patches_a_layers_heads_per_forward(tiny_llama, tiny_task_path, monkeypatch):
    """On the CPU too, the default batches a layer's heads in one forward (same numbers as one
    head per forward)."""
    import circuits.patching as patching

    task = load_task(str(tiny_task_path), tiny_llama)
    copies = []
    real = patching.forward_from_layer
    monkeypatch.setattr(patching, "forward_from_layer",
                        lambda *a, **k: copies.append(k["copies"]) or real(*a, **k))
    got = activation_patching(tiny_llama, task, batch_size=8)
    assert set(copies) == {tiny_llama.info.n_heads}
    one = activation_patching(tiny_llama, task, batch_size=8, heads_per_forward=1)
    np.testing.assert_allclose(got.patched, one.patched, atol=1e-5)
