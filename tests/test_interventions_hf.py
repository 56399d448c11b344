"""Every intervention on SmolLM2-135M against a hand-made edit of plain Hugging Face (to 1e-4).

z-level operations are checked with a forward pre-hook on ``o_proj`` (its input is the heads'
``z`` concatenated); attention and value operations with a patched eager attention function
that edits the scores, weights or (repeated) values of chosen heads.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama

from tests.conftest import write_jsonl
from tests.test_interventions_edits import redistribute_row, setup
from workbench.forward import logits
from workbench.interventions import applied
from workbench.interventions.hooks import noise_sample

pytestmark = pytest.mark.real_model
TEXT = "Then, Mary and John went to the store. John gave a drink to"
OTHER = "Then, Anna and Paul went to the store. Paul gave a drink to"
D_HEAD = 64


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("p") / "p.jsonl", [
        {"id": "a", "text": TEXT, "segments": {"names": [6, 19]}, "corrupted_text": OTHER}])


def hf_logits(hf, ids, attention=None, pre_hooks=()):
    """Plain HF logits with ``attention`` replacing eager attention and o_proj pre-hooks."""
    handles = [hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(fn)
               for layer, fn in pre_hooks]
    original = modeling_llama.eager_attention_forward
    if attention is not None:
        modeling_llama.eager_attention_forward = attention
    try:
        with torch.inference_mode():
            return hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    finally:
        modeling_llama.eager_attention_forward = original
        for h in handles:
            h.remove()


def eager(scores=None, weights=None, values=None, seen=None):
    """Eager attention with optional edits ``fn(tensor, layer)`` of the pre-mask scores
    ``[batch, head, q, k]``, the softmax weights and the repeated values ``[batch, head, k, d]``;
    ``seen`` collects each layer's un-repeated values."""
    def forward(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        layer = module.layer_idx
        if seen is not None:
            seen[layer] = value.clone()
        k = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        v = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        w = torch.matmul(query, k.transpose(2, 3)) * scaling
        if scores is not None:
            w = scores(w, layer)
        if attention_mask is not None:
            w = w + attention_mask
        w = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
        if weights is not None:
            w = weights(w, layer)
        if values is not None:
            v = values(v, layer)
        return torch.matmul(w, v).transpose(1, 2).contiguous(), w
    return forward


def on_heads(heads, fn):
    """An edit applying ``fn(tensor[:, h], h)`` to each ``(layer, h)`` of ``heads``."""
    def edit(x, layer):
        x = x.clone()
        for lay, h in heads:
            if lay == layer:
                x[:, h] = fn(x[:, h], h)
        return x
    return edit


def z_hook(heads_of_layer, fn):
    def hook(module, args):
        z = args[0].clone()
        for h in heads_of_layer:
            z[..., h * D_HEAD:(h + 1) * D_HEAD] = fn(z[..., h * D_HEAD:(h + 1) * D_HEAD], h)
        return (z,)
    return hook


def workbench_logits(model, path, op):
    checked, batch = setup(model, path, [op])
    with applied(model, checked, batch):
        return logits(model, batch), batch, checked


def compare(ours, want, base):
    assert (ours - base).abs().max() > 1e-2  # the edit did something
    assert torch.allclose(ours, want, atol=1e-4), float((ours - want).abs().max())


def test_scale_and_ablate_match_o_proj_pre_hooks(smollm2, smollm2_hf, prompt):
    ours, batch, _ = workbench_logits(smollm2, prompt, {"op": "scale_head",
                                                        "heads": ["3.1", "10.4"], "alpha": 2.5})
    base = hf_logits(smollm2_hf, batch.input_ids)
    want = hf_logits(smollm2_hf, batch.input_ids, pre_hooks=[
        (3, z_hook([1], lambda z, h: z * 2.5)), (10, z_hook([4], lambda z, h: z * 2.5))])
    compare(ours, want, base)
    ours, _, _ = workbench_logits(smollm2, prompt, {"op": "scale_head", "heads": ["3.1"],
                                                    "alpha": 0.0, "point": "hook_result"})
    want = hf_logits(smollm2_hf, batch.input_ids, pre_hooks=[(3, z_hook([1], lambda z, h: 0 * z))])
    compare(ours, want, base)
    # mean ablation: the mean of the head's o_proj input over the prompt's tokens
    grabbed = {}
    hf_logits(smollm2_hf, batch.input_ids, pre_hooks=[
        (8, lambda m, a: grabbed.setdefault("z", a[0].clone()))])
    mean = grabbed["z"][0, :, 2 * D_HEAD:3 * D_HEAD].mean(0)
    ours, _, _ = workbench_logits(smollm2, prompt, {"op": "ablate_head", "heads": ["8.2"],
                                                    "mode": "mean"})
    want = hf_logits(smollm2_hf, batch.input_ids,
                     pre_hooks=[(8, z_hook([2], lambda z, h: mean.expand_as(z)))])
    compare(ours, want, base)
    # resample: the head's z on the corrupted prompt
    other = torch.tensor([smollm2.tokenizer(OTHER, add_special_tokens=False).input_ids])
    hf_logits(smollm2_hf, other, pre_hooks=[(8, lambda m, a: grabbed.setdefault("o", a[0]))])
    ours, _, _ = workbench_logits(smollm2, prompt, {"op": "ablate_head", "heads": ["8.2"],
                                                    "mode": "resample"})
    want = hf_logits(smollm2_hf, batch.input_ids, pre_hooks=[
        (8, z_hook([2], lambda z, h: grabbed["o"][..., 2 * D_HEAD:3 * D_HEAD]))])
    compare(ours, want, base)


def test_attention_ops_match_patched_eager_attention(smollm2, smollm2_hf, prompt):
    ours, batch, checked = workbench_logits(smollm2, prompt, {
        "op": "attention_temperature", "heads": ["5.2", "9.0"], "temperature": 2.0})
    ids = batch.input_ids
    base = hf_logits(smollm2_hf, ids)
    want = hf_logits(smollm2_hf, ids, eager(scores=on_heads([(5, 2), (9, 0)],
                                                            lambda w, h: w / 2)))
    compare(ours, want, base)
    names = batch.prompts[0].segments["names"].tolist()
    ours, _, _ = workbench_logits(smollm2, prompt, {"op": "mask_keys", "heads": ["4.3"],
                                                    "segments": ["names"], "positions": [1]})

    def knock(w, h):
        w = w.clone()
        w[..., names + [1]] = float("-inf")
        return w
    want = hf_logits(smollm2_hf, ids, eager(scores=on_heads([(4, 3)], knock)))
    compare(ours, want, base)
    heads = [(2, 0), (6, 5), (12, 1)]
    ours, _, _ = workbench_logits(smollm2, prompt, {
        "op": "redistribute_attention", "heads": ["2.0", "6.5", "12.1", "29.0"], "p": 0.6,
        "target_segment": "names", "min_segment_mass": 0.05, "rho": 0.8})

    def var(w, h):
        rows = [redistribute_row(row, {0}, set(names), 0.6, 0.05, 0.8)
                for row in w[0].double().tolist()]
        return torch.tensor(rows, dtype=w.dtype)[None]
    want = hf_logits(smollm2_hf, ids, eager(weights=on_heads(heads, var)))
    compare(ours, want, base)


def test_value_ops_match_patched_eager_attention(smollm2, smollm2_hf, prompt):
    ours, batch, _ = workbench_logits(smollm2, prompt, {
        "op": "value_noise", "heads": ["3.1", "3.5", "7.4"], "sigma": 0.8, "seed": 3})
    ids = batch.input_ids
    base = hf_logits(smollm2_hf, ids)
    draws = {3: noise_sample(3, 0, 3, (1, ids.shape[1], 2, D_HEAD)),
             7: noise_sample(3, 0, 7, (1, ids.shape[1], 1, D_HEAD))}
    slot = {(3, 1): 0, (3, 5): 1, (7, 4): 0}

    def noisy(layer):
        def fn(v, h):
            norm = v.norm(dim=-1, keepdim=True)
            return v + 0.8 * norm / D_HEAD ** 0.5 * draws[layer][:, :, slot[layer, h]]
        return fn
    edit = on_heads([(3, 1), (3, 5)], noisy(3))
    edit7 = on_heads([(7, 4)], noisy(7))
    want = hf_logits(smollm2_hf, ids, eager(values=lambda v, layer: edit7(edit(v, layer), layer)))
    compare(ours, want, base)
    seen = {}
    other = torch.tensor([smollm2.tokenizer(OTHER, add_special_tokens=False).input_ids])
    hf_logits(smollm2_hf, other, eager(seen=seen))
    ours, _, _ = workbench_logits(smollm2, prompt, {"op": "kv_misalign",
                                                    "heads": ["3.1", "8.7"]})
    group = smollm2.info.n_heads // smollm2.info.n_key_value_heads

    def misaligned(v, layer):
        v = v.clone()
        for lay, h in [(3, 1), (8, 7)]:
            if lay == layer:
                v[:, h] = seen[layer][:, h // group]
        return v
    want = hf_logits(smollm2_hf, ids, eager(values=misaligned))
    compare(ours, want, base)
