"""EAP-IG's Riemann rule (``--ig-rule right|left``) against a slow loop of plain autograd through the
Hugging Face final norm and unembedding, on a model whose heads and MLPs write 0 (the logits'
input is then the embedding, so the edge ``embed -> logits`` has an exact reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.edges.eap import ig_alphas
from tests.test_circuits_edges import embedding_only
from tests.float64 import float64_model


def test_ig_alphas_follow_the_rules():
    assert ig_alphas("eap-ig", 4, "right") == [1.0, 0.75, 0.5, 0.25]
    assert ig_alphas("eap-ig", 4, "left") == [0.0, 0.25, 0.5, 0.75]
    assert ig_alphas("eap", 4, "left") == [1.0]


@pytest.mark.parametrize("steps", [1, 3])
def test_right_and_left_riemann_sums_equal_a_slow_autograd_loop(tmp_path, monkeypatch, steps):
    from circuits.edges.eap import edge_scores
    from circuits.edges.forward import GraphModel
    from circuits.tasks import load_task

    model, path = embedding_only(tmp_path)
    hf = model.bridge.original_model
    with float64_model(model, monkeypatch):
        task = load_task(str(path), model)
        gm = GraphModel(model)
        edge = gm.graph.edge_names().index("embed->logits")
        got = {rule: edge_scores(model, task, method="eap-ig", ig_steps=steps, ig_rule=rule,
                                 graph_model=gm).per_prompt[0, edge] for rule in ("right", "left")}
        ids = torch.as_tensor(task.clean[0].input_ids)[None]
        ids_x = torch.as_tensor(task.corrupted[0].input_ids)[None]
        embed = hf.model.embed_tokens
        e, e_x = embed(ids).double().detach(), embed(ids_x).double().detach()
        a, d = int(task.answer[0]), int(task.distractor[0])
        norm = getattr(hf.model.norm, "original_component", hf.model.norm)
        head = getattr(hf.lm_head, "original_component", hf.lm_head)

        def grad_at(alpha: float) -> torch.Tensor:
            x = (e_x + alpha * (e - e_x)).requires_grad_(True)
            logits = head(norm(x[:, -1]))
            (logits[0, a] - logits[0, d]).backward()
            return x.grad

        want = {}
        for rule, ks in (("right", range(1, steps + 1)), ("left", range(steps))):
            g = sum(grad_at(k / steps) for k in ks) / steps
            want[rule] = float(((e_x - e) * g).sum())
        diff = float(((e_x - e) * (grad_at(1.0) - grad_at(0.0))).sum()) / steps
    for rule in ("right", "left"):
        assert got[rule] == pytest.approx(want[rule], rel=1e-9, abs=1e-10)
    assert abs(got["right"] - got["left"]) > 1e-4  # the rules differ at few steps
    assert got["right"] - got["left"] == pytest.approx(diff, rel=1e-8, abs=1e-12)
    assert np.isfinite(list(got.values())).all()
