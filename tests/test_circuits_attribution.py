"""Attribution patching (EAP): exact on a model linear in the patched z, close to it elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution import attribution_patching, z_gradients
from circuits.effects import spearman
from circuits.patching import activation_patching
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from workbench.models import load_model


@pytest.fixture(scope="module")
def linear_tail_model():
    """A tiny Llama made linear in the last layer's z by hand: the final RMSNorm's scale is fixed to
    1 (so it only multiplies by its weight) and the last MLP's output is zeroed. The logit
    difference is then an affine function of ``blocks.3.attn.hook_z``."""
    model = load_model("tiny-llama", device="cpu")
    last = model.info.n_layers - 1
    model.bridge.add_hook("ln_final.hook_scale", lambda scale, hook: torch.ones_like(scale))
    model.bridge.add_hook(f"blocks.{last}.hook_mlp_out", lambda out, hook: torch.zeros_like(out))
    return model


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("tasks"), n=6)


@pytest.mark.filterwarnings("ignore:A forward hook edited hook_scale")
@pytest.mark.parametrize("direction", ["corrupted_into_clean", "clean_into_corrupted"])
@pytest.mark.parametrize("positions", [None, "IO,last"])
def test_exact_where_the_metric_is_linear_in_z(linear_tail_model, task_path, direction, positions):
    model = linear_tail_model
    task = load_task(str(task_path), model)
    estimate = attribution_patching(model, task, direction=direction, positions=positions,
                                    batch_size=4)
    measured = activation_patching(model, task, direction=direction, positions=positions,
                                   batch_size=4)
    last = model.info.n_layers - 1
    np.testing.assert_allclose(estimate.patched[:, last], measured.patched[:, last],
                               rtol=1e-5, atol=1e-5)
    assert np.abs(measured.patched[:, last] - measured.base[:, None]).max() > 0.05
    np.testing.assert_allclose(estimate.clean, measured.clean, atol=1e-5)
    np.testing.assert_allclose(estimate.corrupted, measured.corrupted, atol=1e-5)
    # earlier layers reach the logits through attention (non-linear): only approximately equal
    assert np.abs(estimate.patched[:, :last] - measured.patched[:, :last]).max() > 1e-3


def test_gradient_matches_finite_differences(tiny_gpt2, task_path):
    task = load_task(str(task_path), tiny_gpt2)
    tb = task.batches(6)[0]
    _, zs, grads = z_gradients(tiny_gpt2, tb.clean, tb.answer, tb.distractor)
    layer, head, pos, eps = 1, 2, 3, 1e-2
    direction = torch.randn(zs[layer].shape[-1], generator=torch.Generator().manual_seed(0))

    def ld_with(shift):
        def hook(z, hook):
            z = z.clone()
            z[:, pos, head] += shift * direction
            return z
        with torch.inference_mode(), tiny_gpt2.bridge.hooks(fwd_hooks=[
                (f"blocks.{layer}.attn.hook_z", hook)]):
            logits = tiny_gpt2.bridge(tb.clean.input_ids, attention_mask=tb.clean.attention_mask)
        return tb.logit_diff(logits[torch.arange(tb.clean.size), tb.clean.last_pos()])

    numeric = (ld_with(eps) - ld_with(-eps)) / (2 * eps)
    analytic = (grads[layer][:, pos, head] * direction).sum(-1)
    torch.testing.assert_close(analytic, numeric, atol=2e-3, rtol=1e-2)
    assert analytic.abs().max() > 1e-3


def test_attribution_ranks_heads_like_activation_patching(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    estimate = attribution_patching(tiny_llama, task)
    measured = activation_patching(tiny_llama, task)
    assert spearman(estimate.score, measured.score) > 0.3  # random tiny model: weak but positive
    assert all(p.grad is None for p in tiny_llama.bridge.parameters())  # no parameter gradients
