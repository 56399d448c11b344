"""Circuit selection, mean-ablation faithfulness, circuit graphs, overlap and its random baseline."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from circuits.discovery import (Selection, ablation_means, circuit_graph, circuit_logit_diff,
                                faithfulness, group_keys, select_heads)
from circuits.methods import METHODS, DiscoveryOptions
from circuits.path_patching import path_patching
from circuits.overlap import (expected_jaccard, hypergeometric_tail, overlap, overlap_table,
                              shared_by_all)
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file, tiny_ioi_rows
from tests.conftest import write_jsonl
from workbench.errors import InputError
from workbench.heads import format_head


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("tasks"), n=6)


def test_selection_by_count_percent_and_threshold():
    scores = np.array([[0.1, -0.9, np.nan], [0.5, 0.05, -0.2]])
    assert select_heads(scores, Selection("top_k", 2)) == [(0, 1), (1, 0)]
    assert select_heads(scores, Selection("top_k", 2, absolute=False)) == [(0, 0), (1, 0)]
    assert select_heads(scores, Selection("top_percent", 50)) == [(0, 1), (1, 0), (1, 2)]
    assert select_heads(scores, Selection("threshold", 0.2)) == [(0, 1), (1, 0), (1, 2)]
    assert select_heads(scores, Selection("top_k", 99)) == [(0, 0), (0, 1), (1, 0), (1, 1),
                                                             (1, 2)]  # NaN is never picked
    assert Selection.parse("top_percent=2") == Selection("top_percent", 2.0)
    assert str(Selection.parse("top_k=10")) == "top_k=10"
    for bad in ("top_k", "top_k=x", "best=3", "top_percent=120"):
        with pytest.raises(InputError):
            Selection.parse(bad)


def test_ablation_means_are_per_length_position_means_of_corrupted_z(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    means = ablation_means(tiny_llama, task, batch_size=4)
    layer = 2
    by_length = {}
    for tok in task.corrupted:  # one prompt at a time, full forward, no padding
        kept = {}
        ids = torch.from_numpy(tok.input_ids)[None]
        with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=[(
                f"blocks.{layer}.attn.hook_z", lambda z, hook: kept.update(z=z[0].clone()))]):
            tiny_llama.bridge(ids)
        by_length.setdefault(tok.n_tokens, []).append(kept["z"])
    assert set(means.by_group) == {(None, n) for n in by_length}  # no meta.template: by length
    for n, zs in by_length.items():
        torch.testing.assert_close(means.by_group[None, n][layer], torch.stack(zs).mean(0),
                                   atol=1e-5, rtol=1e-5)


def test_ablation_means_group_prompts_by_template_and_warn_on_tiny_groups(tiny_llama, tmp_path):
    # two templates of equal token length (20): position-wise means must not mix them
    rows = [r for i, r in enumerate(tiny_ioi_rows(18)) if i % 3 == 0]  # TEMPLATES[0] only
    for i, row in enumerate(rows):
        template = i % 3 == 0  # template 1 for 2 prompts, template 0 for 4
        if template:
            row["text"] = row["text"].replace("store", "school")
            row["corrupted_text"] = row["corrupted_text"].replace("store", "school")
        row["meta"] = {"template": int(template)}
    task = load_task(str(write_jsonl(tmp_path / "two.jsonl", rows)), tiny_llama)
    assert {t.n_tokens for t in task.corrupted} == {20}
    with pytest.warns(UserWarning, match=r"template 1 \(20 tokens\) has 2 corrupted prompts"):
        means = ablation_means(tiny_llama, task, batch_size=4)
    layer, groups = 1, {}
    for tok, clean in zip(task.corrupted, task.clean):
        kept = {}
        with torch.inference_mode(), tiny_llama.bridge.hooks(fwd_hooks=[(
                f"blocks.{layer}.attn.hook_z", lambda z, hook: kept.update(z=z[0].clone()))]):
            tiny_llama.bridge(torch.from_numpy(tok.input_ids)[None])
        groups.setdefault((clean.prompt.meta["template"], 20), []).append(kept["z"])
    assert set(means.by_group) == {(0, 20), (1, 20)}
    for key, zs in groups.items():
        torch.testing.assert_close(means.by_group[key][layer], torch.stack(zs).mean(0),
                                   atol=1e-5, rtol=1e-5)
    tb = task.batches(6)[0]
    got = means.batch(layer, group_keys(task, tb.index), tb.clean.seq_len)
    want = torch.stack([torch.stack(groups[task.clean[i].prompt.meta["template"], 20]).mean(0)
                        for i in tb.index])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_faithfulness_bounds_and_a_hand_made_ablation(tiny_llama, task_path):
    from tests.test_circuits_patching import hf_twin, o_proj

    task = load_task(str(task_path), tiny_llama)
    means = ablation_means(tiny_llama, task)
    everything = [(l, h) for l in range(4) for h in range(4)]
    full = faithfulness(tiny_llama, task, everything, means=means)
    assert full.faithfulness == pytest.approx(1.0) and full.normalised == pytest.approx(1.0)
    empty = faithfulness(tiny_llama, task, [], means=means, n_random=2)
    assert empty.circuit == pytest.approx(empty.empty) and empty.normalised == pytest.approx(0.0)
    assert empty.random == pytest.approx(empty.faithfulness)  # random circuits of size 0
    assert len(empty.random_draws) == 2 and np.mean(empty.random_draws) == pytest.approx(
        empty.random)
    circuit = [(0, 1), (2, 3), (3, 0)]
    got = circuit_logit_diff(tiny_llama, task, circuit, means)
    hf, d_head = hf_twin(tiny_llama), tiny_llama.info.d_head
    for tb in task.batches(16):
        handles = []
        for layer in range(4):
            ablated = [h for h in range(4) if (layer, h) not in circuit]
            mean = means.batch(layer, group_keys(task, tb.index), tb.clean.seq_len)

            def pre(module, args, ablated=ablated, mean=mean):
                x = args[0].clone()
                for h in ablated:
                    x[..., h * d_head:(h + 1) * d_head] = mean[:, :, h]
                return (x,)
            handles.append(o_proj(hf, layer).register_forward_pre_hook(pre))
        with torch.inference_mode():
            logits = hf(input_ids=tb.clean.input_ids, attention_mask=tb.clean.attention_mask).logits
        for handle in handles:
            handle.remove()
        want = tb.logit_diff(logits[torch.arange(tb.clean.size), tb.clean.last_pos()])
        np.testing.assert_allclose(got[tb.index], want.numpy(), atol=1e-4)


def test_circuit_graph_and_path_discovery(tiny_llama, task_path):
    graph = circuit_graph([(1, 2), (3, 0)], np.arange(16.0).reshape(4, 4),
                          [((1, 2), (3, 0), 0.5), ((3, 0), "logits", 0.25)])
    a, b = format_head((1, 2)), format_head((3, 0))
    assert sorted(graph.nodes) == sorted([a, b, "logits"])
    assert graph.nodes[a] == {"layer": 1, "head": 2, "score": 6.0}
    assert graph.edges[a, b]["weight"] == 0.5
    task = load_task(str(task_path), tiny_llama)
    top5 = Selection("top_k", 5)
    found = METHODS["path"](tiny_llama, task, top5, DiscoveryOptions(stages=2))
    stage1, stage2 = (set(select_heads(e.score, top5)) for e in found.effects)
    assert any(layer > 0 for layer, _ in stage1)  # so stage 2 has receivers with senders
    assert set(found.circuit) == stage1 | stage2 and len(found.effects) == 2
    assert {(s, r) for s, r, _ in found.edges if r == "logits"} == {(h, "logits") for h in stage1}
    inner = [(s, r, w) for s, r, w in found.edges if r != "logits"]
    assert len({r for _, r, _ in inner}) >= 2  # several receivers: a joint weight would repeat
    for sender, receiver, weight in inner:
        assert receiver in stage1 and sender in stage2 and receiver[0] > sender[0]
    for sender, receiver, weight in (inner[0], inner[1], inner[-1]):
        alone = path_patching(tiny_llama, task, receivers=[receiver], senders=[sender])
        assert weight == pytest.approx(alone.score[sender], abs=1e-6)  # this edge, not the stage
    assert found.graph().graph["edge_weight"].startswith("path-patching score of the sender "
                                                         "through this receiver alone")
    graph = found.graph()
    assert set(graph.nodes) == {format_head(h) for h in found.circuit} | {"logits"}
    assert graph.number_of_edges() == len(found.edges)


def test_overlap_metrics_and_baseline_on_hand_made_sets():
    a = {(0, 0), (0, 1), (1, 0)}
    b = {(0, 1), (1, 0), (2, 2), (3, 3)}
    o = overlap(a, b, 16, ("ioi", "colors"))
    assert o.shared == ((0, 1), (1, 0)) and o.n_shared == 2
    assert o.jaccard == pytest.approx(2 / 5) and o.overlap_coefficient == pytest.approx(2 / 3)
    assert o.shared_over_first == pytest.approx(2 / 3) and o.shared_over_second == 0.5
    assert o.expected_shared == pytest.approx(12 / 16)
    # brute force: every 4-head set out of 16, how many share >= 2 heads with a?
    hits = sum(len(a & set(s)) >= 2 for s in itertools.combinations(
        [(l, h) for l in range(4) for h in range(4)], 4))
    assert o.p_value == pytest.approx(hits / math.comb(16, 4), rel=1e-12)
    # brute force expected Jaccard over the same 1820 random sets
    sets = list(itertools.combinations([(l, h) for l in range(4) for h in range(4)], 4))
    brute = sum(len(a & set(s)) / len(a | set(s)) for s in sets) / len(sets)
    assert o.expected_jaccard == pytest.approx(brute, rel=1e-12)
    assert expected_jaccard(16, 0, 0) == 0.0
    assert hypergeometric_tail(0, 16, 3, 4) == 1.0
    assert hypergeometric_tail(4, 16, 3, 4) == 0.0
    pmf = [hypergeometric_tail(k, 270, 20, 30) - hypergeometric_tail(k + 1, 270, 20, 30)
           for k in range(21)]
    assert sum(k * p for k, p in enumerate(pmf)) == pytest.approx(20 * 30 / 270)
    with pytest.raises(InputError, match="between 0 and 16"):
        hypergeometric_tail(1, 16, 17, 2)


@pytest.mark.parametrize("n_total, n_first, n_second", [(270, 20, 30), (270, 20, 20), (16, 3, 4),
                                                        (144, 26, 32), (50, 50, 7)])
def test_hypergeometric_values_match_the_exact_integer_sums(n_total, n_first, n_second):
    """The former exact implementation (integers, math.comb) is the reference for scipy's."""
    from fractions import Fraction

    def tail(k):
        hits = sum(math.comb(n_first, j) * math.comb(n_total - n_first, n_second - j)
                   for j in range(max(k, 0), min(n_first, n_second) + 1))
        return float(Fraction(hits, math.comb(n_total, n_second)))
    exact_jaccard = sum(Fraction(math.comb(n_first, j) * math.comb(n_total - n_first, n_second - j)
                                 * j, n_first + n_second - j)
                        for j in range(1, min(n_first, n_second) + 1)) / math.comb(n_total, n_second)
    for k in range(-1, min(n_first, n_second) + 2):
        assert hypergeometric_tail(k, n_total, n_first, n_second) == pytest.approx(
            tail(k), rel=1e-9, abs=1e-300)
    assert expected_jaccard(n_total, n_first, n_second) == pytest.approx(float(exact_jaccard),
                                                                         rel=1e-9)


def test_overlap_table_pairs_and_shared_by_all():
    circuits = {"a": [(0, 0), (1, 1)], "b": [(1, 1)], "c": [(1, 1), (2, 2)]}
    table = overlap_table(circuits, 9)
    assert [(o.first, o.second) for o in table] == [("a", "b"), ("a", "c"), ("b", "c")]
    assert table[0].overlap_coefficient == 1.0 and table[0].jaccard == 0.5
    assert shared_by_all(circuits) == [(1, 1)]
    with pytest.raises(InputError, match="at least two tasks"):
        overlap_table({"a": []}, 9)
    assert math.isnan(overlap([], [(0, 0)], 9).overlap_coefficient)
