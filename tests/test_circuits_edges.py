"""Edge-level circuits: the graph, the per-receiver forward, EAP / EAP-IG, edge patching.

Every number is checked against an independent computation: the bridge's logits, node-level
attribution patching, a plain Hugging Face hook per edge, hand-built linear and nonlinear models.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from circuits.attribution import attribution_patching
from circuits.edges import forward as edge_forward
from circuits.edges.eap import edge_scores
from circuits.edges.faithfulness import areas, bootstrap_mean_ci, faithfulness_curve
from circuits.edges.forward import GraphModel
from circuits.edges.graph import EdgeGraph
from circuits.edges.patching import EdgeSelection, circuit_metric, prune
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from tests.conftest import write_jsonl
from tests.float64 import float64_model
from workbench.errors import InputError
from workbench.models import load_model


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("edge_tasks"), n=6)


def brute_force_edges(n_layers: int, n_heads: int, n_kv: int) -> int:
    """Count edges from the definition: (sender layer, receiver layer) pairs, one loop each."""
    senders = [-1] + [l for l in range(n_layers) for _ in range(n_heads)] + []
    mlps = list(range(n_layers))
    count = 0
    for layer in range(n_layers):  # attention receivers: q per head, k and v per kv head
        upstream = 1 + sum(1 for s in senders[1:] if s < layer) + sum(1 for m in mlps if m < layer)
        count += (n_heads + 2 * n_kv) * upstream
        count += upstream + n_heads  # the MLP also reads its own layer's heads
    return count + 1 + n_layers * (n_heads + 1)  # the logits read every sender


def test_graph_shape_matches_the_definition():
    g = EdgeGraph(30, 9, 3)  # SmolLM2-135M
    assert (g.n_senders, g.n_receivers) == (301, 481)
    assert g.n_edges == brute_force_edges(30, 9, 3) == 70651
    assert g.sender_names[g.head_sender(4, 2)] == "a4.2"
    assert g.receiver_names[g.k_receiver(4, 1)] == "a4.kv1.k"
    assert g.prefix(g.mlp_receiver(0)) == 1 + 9 and g.prefix(g.q_receiver(1, 0)) == 11


def test_forward_matches_the_bridge(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    tb = task.batches(6)[0]
    gm = GraphModel(tiny_llama)
    with torch.inference_mode():
        ref = tiny_llama.bridge(tb.clean.input_ids, attention_mask=tb.clean.attention_mask,
                                use_cache=False)
        got = gm.run(gm.embed(tb.clean.input_ids), tb.clean.last_pos()).logits
    want = ref[torch.arange(tb.clean.size), tb.clean.last_pos()]
    assert (got - want).abs().max() < 1e-4 * want.std()


def test_patching_no_edge_is_clean_and_every_edge_is_corrupted(tiny_llama, task_path,
                                                                monkeypatch):
    with float64_model(tiny_llama, monkeypatch) as model:
        task = load_task(str(task_path), model)
        gm = GraphModel(model)
        got = circuit_metric(model, task, [np.arange(gm.graph.n_edges), np.array([], int)],
                             batch_size=4, graph_model=gm)
        for tb in task.batches(4):
            for row, batch in ((0, tb.clean), (1, tb.corrupted)):
                with torch.inference_mode():
                    logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                                          use_cache=False)
                last = logits[torch.arange(batch.size), batch.last_pos()].double()
                rows = torch.arange(batch.size)
                ld = (last[rows, tb.answer] - last[rows, tb.distractor]).numpy()
                np.testing.assert_allclose(got[row, tb.index], ld, rtol=0, atol=1e-10)


def test_eap_node_sums_equal_node_level_attribution_patching(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    scores = edge_scores(tiny_llama, task, method="eap", batch_size=4)
    node = attribution_patching(tiny_llama, task, batch_size=4)
    np.testing.assert_allclose(scores.head_scores(), node.effect, atol=2e-4)


@pytest.fixture(scope="module")
def linear_model():
    """A tiny Llama made linear in every edge input by hand: W_Q = W_K = 0 (uniform causal
    attention), every MLP's down projection 0, and (in the test) RMSNorm replaced by identity."""
    model = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        for block in model.bridge.original_model.model.layers:
            inner = getattr(block, "original_component", block)
            for lin in (inner.self_attn.q_proj, inner.self_attn.k_proj, inner.mlp.down_proj):
                getattr(lin, "original_component", lin).weight.zero_()
    return model


def test_eap_equals_edge_patching_on_a_linear_model(linear_model, task_path, monkeypatch):
    monkeypatch.setattr(edge_forward, "rms_norm", lambda x, weight, eps: x)
    monkeypatch.setattr(edge_forward, "rms_norm_factors", lambda x, weight, eps: (
        torch.ones_like(x[..., :1]), torch.ones_like(weight), torch.zeros_like(x[..., :1])))
    model = linear_model
    model.bridge.to(torch.float64)
    try:
        task = load_task(str(task_path), model)
        gm = GraphModel(model)
        scores = edge_scores(model, task, method="eap", batch_size=6, graph_model=gm)
        every = np.arange(gm.graph.n_edges)
        picked = np.random.default_rng(0).choice(gm.graph.n_edges, 12, replace=False)
        circuits = [every] + [np.delete(every, e) for e in picked]
        got = circuit_metric(model, task, circuits, batch_size=6, graph_model=gm)
        measured = got[1:] - got[0]  # [edges, prompts]: edge patched minus clean
        np.testing.assert_allclose(measured.T, scores.per_prompt[:, picked], atol=1e-9)
        assert np.abs(measured).max() > 1e-3
    finally:
        model.bridge.to(torch.float32)


def embedding_only(tmp_path):
    """A fresh tiny Llama whose heads and MLPs write 0 (the logits read the embedding alone) and
    a one-prompt task file for it."""
    model = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        for block in model.bridge.original_model.model.layers:
            inner = getattr(block, "original_component", block)
            for lin in (inner.self_attn.o_proj, inner.mlp.down_proj):
                getattr(lin, "original_component", lin).weight.zero_()
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"id": "a", "text": "John gave a drink to Mary", "corrupted_text": "John gave a drink to Bob",
         "answer": " and", "distractor": " the"}])
    return model, path


def test_eap_ig_converges_to_the_path_integral(tmp_path, monkeypatch):
    """Heads and MLPs write 0, so the logits' input is the embedding and the metric is a
    nonlinear function of it (final RMSNorm): the path integral of embed -> logits is exactly
    m(corrupted) - m(clean)."""
    model, path = embedding_only(tmp_path)
    with float64_model(model, monkeypatch):
        task = load_task(str(path), model)
        gm = GraphModel(model)
        edge = gm.graph.edge_names().index("embed->logits")
        clean, corrupted = circuit_metric(model, task, [np.arange(gm.graph.n_edges),
                                                        np.array([], int)], graph_model=gm)
        exact = corrupted - clean
        errors = [np.abs(edge_scores(model, task, method="eap-ig", ig_steps=m,
                                     graph_model=gm).per_prompt[:, edge] - exact).max()
                  for m in (1, 4, 16, 64)]
    assert np.abs(exact).min() > 0.05
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < errors[1] / 8 and errors[3] < 0.02 * np.abs(exact).max()


def test_one_edge_equals_a_plain_hugging_face_hook(tiny_llama, task_path):
    from tests.hf_reference import tiny_hf
    from tests.plain_hf_edges import hf_edge_effect

    hf = tiny_hf("llama")
    task = load_task(str(task_path), tiny_llama)
    gm = GraphModel(tiny_llama)
    g = gm.graph
    edges = [(g.head_sender(0, 1), g.q_receiver(2, 3)), (g.head_sender(1, 2), g.mlp_receiver(3)),
             (g.mlp_sender(0), g.logits_receiver), (0, g.v_receiver(1, 0)),
             (g.head_sender(0, 3), g.k_receiver(2, 1))]
    s, r = g.edges
    index = [int(np.nonzero((s == a) & (r == b))[0][0]) for a, b in edges]
    every = np.arange(g.n_edges)
    got = circuit_metric(tiny_llama, task, [every] + [np.delete(every, i) for i in index],
                         graph_model=gm)
    for k, (sender, receiver) in enumerate(edges):
        want = [hf_edge_effect(hf, g, sender, receiver, c, x, int(a), int(d))
                for c, x, a, d in zip(task.clean, task.corrupted, task.answer, task.distractor)]
        np.testing.assert_allclose(got[k + 1] - got[0], want, atol=1e-4)
        assert np.abs(want).max() > 1e-3


def test_bootstrap_intervals_cover_the_full_set_value(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    scores = edge_scores(tiny_llama, task, method="eap-ig", ig_steps=2, batch_size=6)
    low, high = bootstrap_mean_ci(scores.per_prompt, n_boot=300)
    assert ((low <= scores.scores + 1e-12) & (scores.scores <= high + 1e-12)).all()
    curve = faithfulness_curve(tiny_llama, task, scores, fractions=(0.05, 0.2, 0.5, 1.0),
                               batch_size=6, n_boot=300)
    assert curve.faithfulness[-1] == pytest.approx(1.0)
    ok = np.isfinite(curve.low)
    assert ((curve.low[ok] <= curve.faithfulness[ok] + 1e-9) &
            (curve.faithfulness[ok] <= curve.high[ok] + 1e-9)).all()
    assert curve.cpr_low <= curve.cpr <= curve.cpr_high


def test_areas_by_hand():
    cpr, cmd = areas([0.0, 0.5, 1.0], [0.0, 1.0, 1.0])
    assert (cpr, cmd) == pytest.approx((0.75, 0.25))


def test_pruning_drops_dangling_edges():
    g = EdgeGraph(2, 2, 1)
    s, r = g.edges

    def edge(a, b):
        return int(np.nonzero((s == a) & (r == b))[0][0])

    h00, h10 = g.head_sender(0, 0), g.head_sender(1, 0)
    kept = [edge(0, g.q_receiver(0, 0)), edge(h00, g.k_receiver(1, 0)), edge(h10, g.logits_receiver)]
    dangling = [edge(0, g.mlp_receiver(0)),  # MLP 0 reaches nothing
                edge(g.head_sender(0, 1), g.logits_receiver)]  # head 0.1 has no input
    assert list(prune(g, kept + dangling)) == sorted(kept)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="acdc"), "--method"), (dict(metric="bleu"), "--metric"),
    (dict(ablation="noise"), "--ablation"), (dict(method="eap", metric="kl"), "eap-ig"),
    (dict(ig_steps=0), "--ig-steps")])
def test_bad_options_are_refused_naming_the_option(tiny_llama, task_path, kwargs, message):
    task = load_task(str(task_path), tiny_llama)
    with pytest.raises(InputError, match=message):
        edge_scores(tiny_llama, task, **kwargs)


def test_edge_selection_parses_and_refuses():
    assert EdgeSelection.parse("top_n=5").count(np.arange(10.0)) == 5
    assert EdgeSelection.parse("top_percent=25").count(np.arange(10.0)) == 3
    assert EdgeSelection.parse("threshold=7").count(np.arange(10.0)) == 3
    with pytest.raises(InputError, match="--select"):
        EdgeSelection.parse("best=3")


def test_edge_digraph_draws_each_edge_with_its_own_weight():
    from workbench.figures import circuit_graph

    g = EdgeGraph(2, 2, 1)
    index = np.array([0, 5, g.n_edges - 1])
    weights = np.array([0.5, -0.25, 2.0])
    graph = g.to_networkx(index, weights)
    names = g.edge_names(index)
    assert sorted(d["weight"] for *_, d in graph.edges(data=True)) == sorted(weights)
    plot = circuit_graph(graph, label="edge score")
    edges = plot.data[plot.data.element == "edge"]
    assert sorted(edges.value) == sorted(weights) and len(names) == 3


def test_mean_and_resample_ablations_match_plain_hugging_face(tiny_llama, task_path):
    from circuits.edges.ablation import AblationSource, template_groups
    from tests.hf_heads import head_outputs
    from tests.hf_reference import tiny_hf

    hf = tiny_hf("llama")
    task = load_task(str(task_path), tiny_llama)
    gm = GraphModel(tiny_llama)
    g = gm.graph

    def heads(i):  # [layer, pos, head, d_model] per-head outputs after W_O, corrupted prompt i
        ids = torch.as_tensor(task.corrupted[i].input_ids)[None]
        return head_outputs(hf, g.n_heads, "hook_result", input_ids=ids)

    mean = AblationSource(gm, task, "mean", 6)
    resample = AblationSource(gm, task, "resample", 6)
    groups = template_groups(task)
    assert any(len(group) > 1 for group in groups)
    for group in groups:
        want_mean = torch.stack([heads(i) for i in group]).mean(0)
        for k, i in enumerate(group):
            want_other = heads(group[(k + 1) % len(group)])
            for layer in range(g.n_layers):
                for h in range(g.n_heads):
                    s = g.head_sender(layer, h)
                    np.testing.assert_allclose(mean.per_prompt[i][s].double(),
                                               want_mean[layer, :, h], atol=1e-4)
                    np.testing.assert_allclose(resample.per_prompt[i][s].double(),
                                               want_other[layer, :, h], atol=1e-4)


def test_receiver_gradients_equal_gradients_at_per_receiver_copies(tiny_llama, task_path,
                                                                    monkeypatch):
    """The fast path (one ordinary forward, per-head projections of the gradient, the norm's
    Jacobian by formula) equals autograd through ``block - 1`` copies of every layer's input."""
    with float64_model(tiny_llama, monkeypatch):
        task = load_task(str(task_path), tiny_llama)
        gm = GraphModel(tiny_llama)
        tb = task.batches(6)[0]
        last = tb.clean.last_pos()
        embeds = gm.embed(tb.clean.input_ids).double()

        def metric(logits):
            return logits[:, 5] - logits.logsumexp(-1)
        with torch.enable_grad():
            slow = gm.run(embeds, last, deltas=True)
            want = torch.autograd.grad(metric(slow.logits).sum(), slow.deltas)
        fast = gm.receiver_gradients(embeds, last, metric, outputs=True)
        steps = [embeds, 0.3 * embeds, embeds.flip(1)]
        mean = []
        for e in steps:
            with torch.enable_grad():
                r = gm.run(e, last, deltas=True)
                mean.append(torch.autograd.grad(metric(r.logits).sum(), r.deltas))
        three = gm.receiver_gradients(steps, last, metric)

    def layout(deltas):  # run()'s per-layer list -> [batch, receivers, pos, d_model]
        return torch.cat([x.transpose(1, 2) for x in deltas], 1)
    torch.testing.assert_close(three.grads, sum(layout(m) for m in mean) / 3, atol=1e-10,
                               rtol=1e-8)
    want = layout(want)
    assert fast.grads.shape == want.shape == (6, gm.graph.n_receivers, *embeds.shape[1:])
    torch.testing.assert_close(fast.grads, want, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fast.outs, slow.outs, atol=1e-10, rtol=1e-8)
    with float64_model(tiny_llama, monkeypatch):
        torch.testing.assert_close(gm.sender_outputs(embeds), slow.outs, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(fast.values, metric(slow.logits).detach(), atol=1e-10, rtol=0)
    assert float(want.abs().max()) > 1e-3


def test_rms_norm_factors_give_the_vjp_of_a_central_difference():
    """``u^T J = w * (s u) - x c <n, u>`` for the factors of :func:`rms_norm_factors`."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    weight = torch.randn(8, generator=gen, dtype=torch.float64)
    cot = torch.randn(2, 3, 8, generator=gen, dtype=torch.float64)
    s, w, c = edge_forward.rms_norm_factors(x, weight, 1e-6)
    n = edge_forward.rms_norm(x, weight, 1e-6)
    got = w * (s * cot) - x * c * (n * cot).sum(-1, keepdim=True)
    step = 1e-6
    for j in range(8):
        e = torch.zeros(8, dtype=torch.float64)
        e[j] = step
        dy = (edge_forward.rms_norm(x + e, weight, 1e-6)
              - edge_forward.rms_norm(x - e, weight, 1e-6)) / (2 * step)
        torch.testing.assert_close(got[..., j], (cot * dy).sum(-1), atol=1e-8, rtol=1e-6)
