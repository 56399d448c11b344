"""Path patching against a slow reference made of full forward passes with hand-written hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.path_patching import path_patching
from circuits.patching import activation_patching
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from workbench.errors import InputError
from workbench.heads import format_head


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("tasks"), n=4)


def full_forward(model, batch, hooks):
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    return logits[torch.arange(batch.size), batch.last_pos()]


def all_z(model, batch):
    zs = {}
    full_forward(model, batch, [(f"blocks.{l}.attn.hook_z",
                                 lambda z, hook, l=l: zs.__setitem__(l, z.clone()))
                                for l in range(model.info.n_layers)])
    return zs


def reference(model, tb, sender, receivers, kinds):
    """Wang et al.'s two steps with full forwards: (1) clean run, sender's z from the corrupted
    run, every other head frozen to its clean z; record the receivers' q/k/v (or read the logits);
    (2) clean run with only those receivers' q/k/v replaced."""
    clean_z, corrupted_z = all_z(model, tb.clean), all_z(model, tb.corrupted)

    def freeze(layer):
        def hook(z, hook):
            out = clean_z[layer].clone()
            if layer == sender[0]:
                out[:, :, sender[1]] = corrupted_z[layer][:, :, sender[1]]
            return out
        return hook
    step1 = [(f"blocks.{l}.attn.hook_z", freeze(l)) for l in range(model.info.n_layers)]
    return tb.logit_diff(two_steps(model, tb, step1, receivers, kinds)).numpy()


def two_steps(model, tb, step1, receivers, kinds):
    """Last-token logits of Wang et al.'s two steps: ``step1`` (hooks that freeze every head and
    patch the sender) on the clean run, read at the logits, or recording the receivers' q/k/v;
    then (step 2) a clean run with only those receivers' q/k/v replaced."""
    if receivers == "logits":
        return full_forward(model, tb.clean, step1)
    kept = {}
    step1 = list(step1)
    for layer, _ in receivers:
        for kind in kinds:
            step1.append((f"blocks.{layer}.attn.hook_{kind}",
                          lambda t, hook, key=(layer, kind): kept.__setitem__(key, t.clone())))
    full_forward(model, tb.clean, step1)
    per_kv = model.info.n_heads // model.info.n_key_value_heads
    step2 = []
    for layer, head in receivers:
        for kind in kinds:
            index = head if kind == "q" else head // per_kv

            def hook(t, hook, key=(layer, kind), index=index):
                t = t.clone()
                t[:, :, index] = kept[key][:, :, index]
                return t
            step2.append((f"blocks.{layer}.attn.hook_{kind}", hook))
    return full_forward(model, tb.clean, step2)


@pytest.mark.parametrize("which", ["tiny_llama", "tiny_gpt2"])
def test_to_the_logits_matches_the_reference(which, request, task_path):
    model = request.getfixturevalue(which)
    task = load_task(str(task_path), model)
    senders = [(0, 1), (1, 3), (2, 0)]
    got = path_patching(model, task, senders=senders, heads_per_forward=2, batch_size=4)
    tb = task.batches(4)[0]
    for sender in senders:
        want = reference(model, tb, sender, "logits", "")
        np.testing.assert_allclose(got.patched[tb.index, sender[0], sender[1]], want, atol=1e-4)
        assert np.abs(want - got.clean[tb.index]).max() > 1e-3
    assert got.condition == "receivers=logits"


@pytest.mark.parametrize("kinds", ["q", "kv", "qkv"])
def test_to_receiver_inputs_matches_the_reference(kinds, tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    receivers = [(0, 1), (2, 1), (3, 3)]  # 0.1 is upstream of every sender but 0.x
    got = path_patching(tiny_llama, task, receivers=receivers, receiver_input=kinds,
                        heads_per_forward=3, batch_size=4)
    one = path_patching(tiny_llama, task, receivers=receivers, receiver_input=kinds,
                        heads_per_forward=1, batch_size=4)
    np.testing.assert_allclose(got.patched, one.patched, atol=1e-5)
    tb = task.batches(4)[0]
    for sender in [(0, 2), (1, 0), (2, 3)]:
        want = reference(tiny_llama, tb, sender, receivers, kinds)
        np.testing.assert_allclose(got.patched[tb.index, sender[0], sender[1]], want, atol=1e-4)
    assert np.abs(got.patched[:, :3] - got.clean[:, None, None]).max() > 1e-3
    assert np.isnan(got.patched[:, 3]).all()  # the last receiver's layer and later: no path
    assert got.condition == f"receivers={kinds} of {','.join(map(format_head, receivers))}"


def test_last_layer_sender_to_logits_is_activation_patching(tiny_gpt2, task_path):
    task = load_task(str(task_path), tiny_gpt2)
    heads = [(3, 0), (3, 2)]
    path = path_patching(tiny_gpt2, task, senders=heads)
    activation = activation_patching(tiny_gpt2, task, heads=heads)
    np.testing.assert_allclose(path.patched, activation.patched, atol=1e-5, equal_nan=True)


def test_bad_receivers_are_refused(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    with pytest.raises(InputError, match="receiver input 'qx' must be letters from 'qkv'"):
        path_patching(tiny_llama, task, receivers=[(2, 0)], receiver_input="qx")
    with pytest.raises(InputError, match="at least one receiver head"):
        path_patching(tiny_llama, task, receivers=[])
    with pytest.raises(InputError, match=f"head {format_head((9, 0))} is out of range"):
        path_patching(tiny_llama, task, receivers=[(9, 0)])
