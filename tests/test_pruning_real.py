"""Head importance and gates on the real SmolLM2-135M: the importance equals a central finite
difference of the loss in each gate (float64 throughout), gates of 1 leave the model exactly as it
is, and a gate of 0 is zero ablation of the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pruning.gates import gate_hooks, mask_gates
from pruning.importance import head_importance
from pruning.objectives import prepare
from pruning.prune import evaluate
from tests.conftest import DATA
from tests.float64 import float64_model
from workbench.forward import logits
from workbench.prompts import load_prompt_set

pytestmark = pytest.mark.real_model


@pytest.mark.parametrize("objective, file, heads", [
    ("lm", "natural.jsonl", [(0, 0), (14, 5), (29, 8)]),
    ("logit_diff", "ioi.jsonl", [(9, 6), (20, 3)]),
])
def test_importance_equals_a_finite_difference_on_smollm2(smollm2, monkeypatch, objective, file,
                                                          heads):
    data = prepare(smollm2, load_prompt_set(DATA / file), objective, n_prompts=2)
    with float64_model(smollm2, monkeypatch) as model:
        imp = head_importance(model, data, batch_size=2)
        eps = 1e-4
        for layer, head in heads:
            values = []
            for sign in (1, -1):
                gates = torch.ones(30, 9, dtype=torch.float64)
                gates[layer, head] += sign * eps
                values.append(evaluate(model, data, gates, batch_size=2))
            fd = (values[0] - values[1]) / (2 * eps)  # d metric / d g per prompt
            fd = fd if objective == "lm" else -fd  # importance loss: lm_loss or -logit_diff
            assert np.allclose(imp.gradients[:, layer, head], fd, rtol=1e-3, atol=0), \
                (layer, head, imp.gradients[:, layer, head], fd)
            assert imp.raw[layer, head] == pytest.approx(np.abs(fd).mean(), rel=1e-3)


def test_gates_of_one_and_zero_on_smollm2(smollm2):
    data = prepare(smollm2, load_prompt_set(DATA / "ioi.jsonl"), "logit_diff", n_prompts=3)
    batch = data.batches(3)[0]
    plain = logits(smollm2, batch)
    assert torch.equal(plain, logits(smollm2, batch, gate_hooks(torch.ones(30, 9))))

    def zero(z, hook):
        z = z.clone()
        z[:, :, 6] = 0.0
        return z
    gated = logits(smollm2, batch, gate_hooks(mask_gates(30, 9, [(9, 6)])))
    assert torch.equal(gated, logits(smollm2, batch, [("blocks.9.attn.hook_z", zero)]))
    assert not torch.equal(gated, plain)
