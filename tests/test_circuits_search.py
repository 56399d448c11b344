"""Faithfulness-sized circuits: the coarse-to-fine search on hand-built tables, the evaluator
against plain Hugging Face forwards, the refinement, and the circuits run's tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from circuits.discovery import Selection, ablation_means, group_keys, select_heads
from circuits.evaluate import MLP, CircuitEvaluator, mlp_means
from circuits.refine import RefineOptions, refine
from circuits.search import (prefix_evaluator, random_band, ranking, size_grid,
                             smallest_prefix)
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file
from workbench.errors import InputError


# ----- the search on hand-built tables ---------------------------------------------------------

def _brute_smallest(values: dict[int, float], target: float, cap: int) -> int | None:
    return next((s for s in range(1, cap + 1) if values[s] >= target), None)


def test_ranking_orders_nodes_by_magnitude_and_skips_nan():
    scores = np.array([[0.1, -0.9, np.nan], [0.5, 0.05, -0.5]])
    assert ranking(scores) == [(0, 1), (1, 0), (1, 2), (0, 0), (1, 1)]  # tie 0.5: node order
    assert ranking(scores, absolute=False)[:2] == [(1, 0), (0, 0)]
    assert ranking(scores, np.array([0.7, -2.0]))[:3] == [(1, MLP), (0, 1), (0, MLP)]


def test_size_grid_is_geometric_and_ends_at_the_cap():
    assert size_grid(270) == [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 270]
    assert size_grid(1) == [1] and size_grid(5, ratio=2) == [1, 2, 4, 5]
    with pytest.raises(InputError):
        size_grid(0)


def test_search_returns_the_smallest_faithful_prefix_of_a_hand_built_table():
    """Heads with scores; the faithfulness of a head set is a hand-built table (here: additive
    contributions, so the prefix curve is monotone); the search must return the brute-force
    smallest prefix for every target, with fewer evaluations than sizes."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 5))  # 30 heads
    order = ranking(scores)
    contribution = {h: abs(scores[h]) for h in order}
    total = sum(contribution.values())

    def table(heads):  # the hand-built faithfulness of a head set
        return sum(contribution[h] for h in heads) / total

    calls = []

    def evaluate(sizes):
        calls.append(list(sizes))
        return [table(order[:s]) for s in sizes]
    values = {s: table(order[:s]) for s in range(31)}
    for target in (0.05, 0.3, 0.5, 0.8, 0.8001, 0.95, 1.0):
        calls.clear()
        found = smallest_prefix(evaluate, target, 30)
        assert found.reached and found.chosen == _brute_smallest(values, target, 30)
        assert found.curve[found.chosen] >= target and values[found.chosen - 1] < target
        assert calls[0] == size_grid(30) and all(len(c) == 1 for c in calls[1:])
        assert found.evaluations == sum(map(len, calls)) < 30
    # a cap below the answer: not reached, the best size kept, said in one line
    found = smallest_prefix(evaluate, 0.95, 10)
    assert not found.reached and found.chosen == 10
    assert found.note().startswith("no prefix up to 10 nodes reaches faithfulness 0.95")


def test_search_on_a_non_monotone_table_finds_the_first_crossing_of_the_sampled_curve():
    # f dips after size 5 (a negative head), crosses 0.8 first at 7, again at 12
    f = {0: 0, 1: .1, 2: .3, 3: .5, 4: .6, 5: .7, 6: .75, 7: .85, 8: .6, 9: .6, 10: .7, 11: .75,
         12: .9, 13: .95, 14: 1.0, 15: 1.0, 16: 1.0}
    found = smallest_prefix(lambda sizes: [f[s] for s in sizes], 0.8, 16)
    # grid 1, 2, 3, 4, 6, 8, 11, 16: first crossing at 16, bisection between 11 and 16
    assert found.grid == [1, 2, 3, 4, 6, 8, 11, 16]
    assert found.chosen == 12 and found.bisected == [13, 12]
    # a grid that samples size 7 finds it
    assert smallest_prefix(lambda sizes: [f[s] for s in sizes], 0.8, 16,
                           grid=range(1, 17)).chosen == 7


def test_search_and_selection_bounds():
    with pytest.raises(InputError):
        smallest_prefix(lambda s: s, float("nan"), 5)
    for bad in ("top_k=0", "top_percent=0", "top_k=2.5", "top_k=-1", "faithfulness=0",
                "faithfulness=1.5", "faithfulness=nan"):
        with pytest.raises(InputError, match="out of range"):
            Selection.parse(bad)
    assert Selection.parse("faithfulness=0.8").by_faithfulness
    with pytest.raises(InputError, match="sizes the circuit by forwards"):
        select_heads(np.ones((2, 2)), Selection.parse("faithfulness=0.8"))
    for bad in (dict(tolerance=-0.1), dict(tolerance=float("inf")), dict(candidates=10 ** 9),
                dict(rounds=-1), dict(budget=float("nan")), dict(budget=-1)):
        with pytest.raises(InputError):
            RefineOptions(**bad)


# ----- the evaluator against plain Hugging Face hooks ------------------------------------------

@pytest.fixture(scope="module")
def tiny_task(tiny_llama, tmp_path_factory):
    path = tiny_ioi_file(tmp_path_factory.mktemp("search"), n=8)
    return load_task(str(path), tiny_llama)


def hf_circuit_ld(model, task, circuit, means, mlp=None, batch_size=4) -> np.ndarray:
    """The independent forward: a plain Hugging Face model (no bridge, no hooks of ours), each
    ablated head's slice of ``o_proj``'s input and each ablated MLP's output replaced by its mean;
    full logits, then the LD at the last real token."""
    from tests.test_circuits_patching import hf_twin, o_proj

    hf, d_head = hf_twin(model), model.info.d_head
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    out = np.zeros(len(task))
    for tb in task.batches(batch_size):
        handles = []
        keys = group_keys(task, tb.index)
        for layer in range(n_layers):
            ablated = [h for h in range(n_heads) if (layer, h) not in circuit]
            mean = means.batch(layer, keys, tb.clean.seq_len)

            def pre(module, args, ablated=ablated, mean=mean):
                x = args[0].clone()
                for h in ablated:
                    x[..., h * d_head:(h + 1) * d_head] = mean[:, :, h].to(x.dtype)
                return (x,)
            handles.append(o_proj(hf, layer).register_forward_pre_hook(pre))
            if mlp is not None and (layer, MLP) not in circuit:
                mlp_mean = mlp.batch(layer, keys, tb.clean.seq_len)

                def post(module, args, output, mlp_mean=mlp_mean):
                    return mlp_mean.to(output.dtype)
                handles.append(hf.model.layers[layer].mlp.register_forward_hook(post))
        try:
            with torch.inference_mode():
                logits = hf(input_ids=tb.clean.input_ids,
                            attention_mask=tb.clean.attention_mask).logits
        finally:
            for handle in handles:
                handle.remove()
        want = tb.logit_diff(logits[torch.arange(tb.clean.size), tb.clean.last_pos()])
        out[tb.index] = want.double().numpy()
    return out


def test_evaluator_equals_plain_hf_forwards_for_stacked_and_resumed_circuits(tiny_llama,
                                                                              tiny_task):
    means = ablation_means(tiny_llama, tiny_task, batch_size=4)
    mlps = mlp_means(tiny_llama, tiny_task, batch_size=4)
    ev = CircuitEvaluator(tiny_llama, tiny_task, means, mlp=mlps, batch_size=4, per_forward=3)
    circuits = [[(0, 1), (2, 3), (3, 0), (1, MLP), (3, MLP)], [(1, 2), (0, MLP)], [],
                ev.nodes, [(3, 3)]]
    got = ev.logit_diffs(circuits)
    for row, circuit in zip(got, circuits):
        np.testing.assert_allclose(row, hf_circuit_ld(tiny_llama, tiny_task, circuit, means,
                                                      mlps), atol=1e-4)
    np.testing.assert_allclose(ev.model_ld, got[3], atol=1e-5)
    base = ev.capture_base(circuits[0])
    variants = [set(circuits[0]) - {(2, 3)}, set(circuits[0]) | {(3, 1)},
                set(circuits[0]) - {(3, MLP)}, circuits[0]]
    for row, circuit in zip(ev.variants(base, variants), variants):
        np.testing.assert_allclose(row, hf_circuit_ld(tiny_llama, tiny_task, circuit, means,
                                                      mlps), atol=1e-4)
    # the cost: 1 (clean) + 1 (empty) + 5 + 1 (base) + resumed fractions of 4 layers
    assert ev.evaluations == pytest.approx(8 + (2 / 4 + 1 / 4 + 1 / 4))


def test_refinement_prunes_to_a_faithful_circuit_and_counts_its_forwards(tiny_llama, tiny_task):
    means = ablation_means(tiny_llama, tiny_task, batch_size=4)
    ev = CircuitEvaluator(tiny_llama, tiny_task, means, batch_size=4)
    scores = np.random.default_rng(1).normal(size=(4, 4))
    order = ranking(scores)
    target = 0.8
    found = smallest_prefix(prefix_evaluator(ev, order), target, 16)
    start = order[:found.chosen]
    refined = refine(ev, start, order, target, RefineOptions(tolerance=0.05, candidates=4,
                                                            rounds=2))
    f = ev.faithfulness([refined.circuit])[0]
    assert f == pytest.approx(refined.faithfulness, abs=1e-9)
    if found.reached:
        assert refined.faithfulness >= target and len(refined.circuit) <= len(start)
    assert set(refined.circuit) == (set(start) | set(refined.added)) - set(refined.removed)
    assert refined.forward_calls > 0 and refined.evaluations > 0
    for action, node, value in refined.steps:  # every logged value is that circuit's faithfulness
        assert action in ("add", "remove") and math.isfinite(value)
    stopped = refine(ev, start, order, target, RefineOptions(budget=0))
    assert stopped.out_of_budget and stopped.steps == [] and stopped.circuit == sorted(start)
    assert stopped.evaluations == pytest.approx(1.0)  # the start circuit's capture only
    small = refine(ev, start, order, target, RefineOptions(tolerance=0.05, budget=1.5))
    assert small.evaluations < 1.5 + 1.0  # stops at the first step past the budget
    band = random_band(ev, [2, 4], 3, seed=0)
    assert {k: len(v) for k, v in band.items()} == {2: 3, 4: 3}


# ----- the circuits command with --select faithfulness=F ---------------------------------------

def _cli_args(task, runs, *extra):
    return ["circuits", "--model", "tiny-llama", "--device", "cpu", "--runs-dir", str(runs),
            "--no-progress", "--n-random", "2", "--task", str(task), "--n-prompts", "4",
            "--batch-size", "2", *extra]


@pytest.mark.parametrize("extra, message", [
    (["--select", "top_k=0"], "selection top_k=0 is out of range"),
    (["--select", "top_percent=0"], "selection top_percent=0 is out of range"),
    (["--select", "faithfulness=1.2"], "selection faithfulness=1.2 is out of range"),
    (["--select", "top_k=5", "--nodes", "heads,mlps"], "only apply to --select faithfulness"),
    (["--select", "faithfulness=0.8", "--method", "path"], "path patching's staged circuit"),
    (["--select", "faithfulness=0.8", "--held-out", "5"], "--held-out 5 needs 9 prompts"),
    (["--select", "faithfulness=0.8", "--nodes", "mlps"], "--nodes 'mlps' is not one of"),
    (["--select", "faithfulness=0.8", "--refine-tolerance", "nan"], "--refine-tolerance nan"),
    (["--select", "faithfulness=0.8", "--both-directions"], "--both-directions patches"),
])
def test_bad_sizing_input_exits_2_and_writes_nothing(capsys, tmp_path, extra, message):
    from tests.circuit_tasks import tiny_ioi_file
    from tests.test_run import cli

    task = tiny_ioi_file(tmp_path, n=8)
    code, _, err = cli(capsys, *_cli_args(task, tmp_path / "runs", *extra))
    assert code == 2 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_faithfulness_selection_tables_equal_independent_forwards(capsys, tmp_path, tiny_llama):
    """Attribution and EAP-IG node rankings, heads and MLPs: the chosen circuit, every curve
    point, the held-out check and the faithfulness table are plain HF forwards' numbers."""
    import pyarrow.parquet as pq

    from circuits.sized import subset
    from tests.circuit_tasks import tiny_ioi_file
    from tests.test_run import cli
    from workbench.store import list_runs

    path = tiny_ioi_file(tmp_path, n=8)
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *_cli_args(path, runs, "--select", "faithfulness=0.8",
                                            "--method", "attribution", "--method", "eap-ig",
                                            "--nodes", "heads,mlps", "--held-out", "4",
                                            "--spot-check", "0"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    frames = {n: pq.read_table(run.table_path(n)).to_pandas() for n in manifest["tables"]}
    assert {"faithfulness_curve", "circuit_search"} <= set(frames)
    everything = load_task(str(path), tiny_llama)
    means, mlps = ablation_means(tiny_llama, everything), mlp_means(tiny_llama, everything)
    scored, held = load_task(str(path), tiny_llama, n_prompts=4), subset(everything, 4, 8)
    nodes = [(l, h) for l in range(4) for h in [*range(4), MLP]]

    def normalised(task, circuit):
        lds = [hf_circuit_ld(tiny_llama, task, c, means, mlps, batch_size=2).mean()
               for c in (circuit, nodes, [])]
        return (lds[0] - lds[2]) / (lds[1] - lds[2])
    search, curve = frames["circuit_search"], frames["faithfulness_curve"]
    circuits, faith = frames["circuits"], frames["faithfulness"]
    for probe in ("attribution_patching", "eap_ig_nodes"):
        s = search[(search.probe == probe)]
        v = s[s.condition.isna()].set_index("metric").value
        heads = circuits[(circuits.probe == probe) & (circuits.metric == "member")]
        circuit = [(int(r.layer), int(r.head)) for r in heads.itertuples()]
        circuit += [(int(l), MLP) for l in s[s.metric == "mlp_member"].layer]
        assert int(v["size"]) == len(circuit)
        want = normalised(scored, circuit)
        assert v["faithfulness_normalised"] == pytest.approx(want, abs=1e-4)
        f = faith[faith.probe == probe].set_index("metric").value
        assert f["faithfulness_normalised"] == pytest.approx(want, abs=1e-4)
        assert v["held_out_faithfulness_normalised"] == pytest.approx(normalised(held, circuit),
                                                                      abs=1e-4)
        if v["reached"]:
            assert v["faithfulness_normalised"] >= 0.8
        curve_cost = v["evaluations_curve"] + 2  # with the model's and the empty circuit's runs
        assert v["evaluations_search"] + 2 + v["evaluations_refine"] <= 3 * curve_cost + 1
        c = curve[(curve.probe == probe) & (curve.metric == "faithfulness_normalised")]
        assert {int(x.split("=")[1]) for x in c.condition} >= set(size_grid(int(v["cap"])))
        effects = frames["head_effects"]
        sc = effects[(effects.probe == probe) & (effects.metric == "score")]
        grid = np.full((4, 4), np.nan)
        grid[sc["layer"].astype(int), sc["head"].astype(int)] = sc["value"]
        mlp = s[s.metric == "mlp_score"].sort_values("layer").value.to_numpy()
        order = ranking(grid, mlp)
        for r in c.itertuples():
            size = int(r.condition.split("=")[1])
            if size in (1, 3, 11):
                assert r.value == pytest.approx(normalised(scored, order[:size]), abs=1e-4)
        assert f"{probe} {scored.name}: target 0.8" in out
    assert "held out (4 prompts not used to find it)" in out


def curve_fixture():
    """A faithfulness curve (sizes 0-4, random draws at sizes 1 and 4) and its search (target
    0.8, size 3 chosen at 0.83), as ``faithfulness_curve`` / ``circuit_search`` rows."""
    import pandas as pd

    def row(metric, value, condition=None, probe="attribution_patching"):
        return {"probe": probe, "metric": metric, "segment": "ioi", "condition": condition,
                "value": value}
    curve = pd.DataFrame([row("faithfulness_normalised", v, f"size={s}")
                          for s, v in ((0, 0.0), (1, 0.2), (2, 0.5), (4, 0.85), (3, 0.7))]
                         + [row("faithfulness_random_draw", v, f"size={s};draw={i}")
                            for s, vals in ((1, (-0.1, 0.1)), (4, (0.0, 0.2)))
                            for i, v in enumerate(vals)])
    search = pd.DataFrame([row("target", 0.8), row("size", 3.0),
                           row("faithfulness_normalised", 0.83), row("reached", 1.0)])
    return curve, search


def test_faithfulness_curve_figure_draws_the_curve_band_target_and_chosen_circuit():
    from workbench.figures.circuit_curve import curve_plot
    from workbench.figures.plot import DRAWERS

    curve, search = curve_fixture()
    plot = curve_plot(curve, search, "ioi")
    data = plot.data
    chosen = data[data["chosen"]]
    assert chosen[["size", "faithfulness"]].values.tolist() == [[3.0, 0.83]]
    band = data[data["n_random"] > 0].set_index("size")
    assert band.loc[4.0, "random_lo"] == 0.0 and band.loc[4.0, "random_hi"] == 0.2
    assert band.loc[1.0, "random_mean"] == pytest.approx(0.0)
    assert plot.params["target"] == 0.8
    fig = DRAWERS["faithfulness_curve"](data, plot.params, "single")
    names = [t.name for t in fig.data]
    assert "chosen (3 nodes)" in names and any(n.startswith("random (")
                                                          for n in names)
