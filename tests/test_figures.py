"""Figure functions on a synthetic record table: traces, axis titles, values against independent
loops over the records, sidecars that redraw the same figure, and the figure-set registry."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import networkx as nx
import numpy as np
import pandas as pd
import pytest
from plotly.colors import get_colorscale
from scipy import stats

from tests.conftest import ROOT
from tests.figure_fixture import ALPHAS, N_HEADS, N_LAYERS, PROMPTS, fixture_table, make_run
from tests.pruning_fixture import pruning_plots
from tests.test_figures_edges import edge_plots
from workbench.figures import (FIGURE_SETS, DRAWERS, FigureOptions, Plot, RunSource,
                               atlas_grid, attention_pattern, attention_text, by_depth,
                               circuit_graph, distribution, dose_response, faithfulness_bars,
                               head_heatmap, heatmap_of_means, load_plot, pattern_grid,
                               overlap_matrix, position_profile, register_figure_set, run_figures,
                               weighted_graph)
from workbench.figures.plot import sidecar_csv, sidecar_json
from workbench.figures.shapes import token_label
from workbench.figures.style import DIVERGING, SEQUENTIAL, axis_title, colour_scale, width_px


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return fixture_table().to_pylist()


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return fixture_table().to_pandas()


@pytest.fixture(scope="module")
def tokens() -> pd.DataFrame:
    from tests.figure_fixture import tokens_table

    return tokens_table().to_pandas()


def means(rows, metric, key, **where) -> dict:
    """Slow reference: mean value per key(row) over the rows of ``metric`` matching ``where``."""
    acc = defaultdict(list)
    for r in rows:
        if r["metric"] == metric and all(r[k] == v for k, v in where.items()):
            acc[key(r)].append(r["value"])
    return {k: float(np.mean(v)) for k, v in acc.items()}


def test_head_heatmap_values_hover_and_diverging_scale(records, rows):
    plot = head_heatmap(records, "score", unit="logit", n_layers=N_LAYERS, n_heads=N_HEADS,
                        table="probe_a")
    fig = plot.figure("single")
    [trace] = fig.data
    assert trace.type == "heatmap" and plot.name == "probe_a.heatmap.score"
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "head"
    assert trace.colorbar.title.text == "score<br>(logit)"
    expected = means(rows, "score", lambda r: (r["layer"], r["head"]))
    z = np.array(trace.z)
    assert z.shape == (N_HEADS, N_LAYERS)
    for (layer, head), value in expected.items():
        assert z[head, layer] == pytest.approx(value, abs=1e-12)
    assert np.all(np.array(trace.customdata) == len(PROMPTS))  # hover: number of prompts
    assert "prompts: %{customdata}" in trace.hovertemplate
    # the fixture's scores have both signs: diverging palette centred on zero
    assert trace.zmid == 0 and trace.zmin == -trace.zmax
    assert [c[1] for c in trace.colorscale] == [c[1] for c in get_colorscale(DIVERGING)]
    assert fig.layout.width == width_px("single") == 336
    assert head_heatmap(records, "score").figure("double").layout.width == 687


def test_colour_scale_choice():
    assert colour_scale(np.array([-1.0, 3.0])) == {"colorscale": DIVERGING, "zmid": 0.0,
                                                   "zmin": -3.0, "zmax": 3.0}
    assert colour_scale(np.array([0.2, 0.5, np.nan])) == {"colorscale": SEQUENTIAL, "zmin": 0.2,
                                                          "zmax": 0.5}
    assert colour_scale(np.array([0.2, 0.5]), from_zero=True)["zmin"] == 0.0
    # means that differ only by rounding (rows that sum to 1) get one colour, not noise
    assert colour_scale(np.array([0.326087, 0.326087 + 1e-16])) == {
        "colorscale": SEQUENTIAL, "zmin": pytest.approx(0.326087 / 2),
        "zmax": pytest.approx(0.326087 * 1.5)}
    # float32 noise in per-head means of causal patterns (issue 15): one colour, not a pattern
    noise = colour_scale(np.array([0.0408163260, 0.0408163272]))
    assert noise["zmax"] - noise["zmin"] == pytest.approx(0.0408163266, rel=1e-6)
    assert colour_scale(np.array([0.2, 0.5]), "diverging")["zmid"] == 0.0
    assert colour_scale(np.array([2.0, 2.0])) == {"colorscale": SEQUENTIAL, "zmin": 1.0,
                                                  "zmax": 3.0}
    assert axis_title("entropy", "nats") == "entropy (nats)" and axis_title("layer") == "layer"
    assert axis_title("normalised entropy", "fraction of ln(visible keys)", room_px=200) == \
        "normalised entropy<br>(fraction of ln(visible keys))"


def test_by_depth_mean_and_interval(records, rows):
    plot = by_depth(records, "score", unit="logit")
    fig = plot.figure()
    band, mean = fig.data
    assert band.fill == "toself" and mean.name == "mean"
    assert band.name == "10-90th pct. over heads x prompts"
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "score (logit)"
    units = means(rows, "score", lambda r: (r["layer"], r["head"], r["prompt_id"]))
    for layer in range(N_LAYERS):
        vals = np.array([v for (lay, _, _), v in units.items() if lay == layer])
        assert len(vals) == N_HEADS * len(PROMPTS)
        assert mean.y[layer] == pytest.approx(vals.mean())
        lo, hi = np.quantile(vals, [0.1, 0.9])
        assert band.y[layer] == pytest.approx(hi) and band.y[-1 - layer] == pytest.approx(lo)
    # a layer-level metric spreads over prompts only
    layer_plot = by_depth(records, "layer_norm")
    assert layer_plot.params["spread_over"] == ["prompt_id"]
    assert layer_plot.figure().data[0].name == "10-90th pct. over prompts"
    ci = by_depth(records, "score", interval="ci95").data
    vals = np.array([v for (lay, _, _), v in units.items() if lay == 0])
    want = stats.bootstrap((np.sort(vals),), np.mean, method="percentile", n_resamples=2000,
                           rng=np.random.default_rng(0)).confidence_interval
    assert (ci.loc[0, "lo"], ci.loc[0, "hi"]) == pytest.approx((want.low, want.high))
    half = 1.96 * vals.std(ddof=1) / np.sqrt(len(vals))  # normal approximation: close
    assert ci.loc[0, "hi"] - ci.loc[0, "lo"] == pytest.approx(2 * half, rel=0.25)


def test_distribution_over_heads_and_prompts(records, rows):
    plot = distribution(records, "score", over="heads", unit="logit")
    fig = plot.figure()
    [bars] = fig.data
    assert bars.type == "bar" and fig.layout.yaxis.title.text == "number of heads"
    assert fig.layout.xaxis.title.text == "score (logit)"
    per_head = list(means(rows, "score", lambda r: (r["layer"], r["head"])).values())
    counts, edges = np.histogram(per_head, bins=8)
    assert list(bars.y) == counts.tolist() and sum(bars.y) == N_LAYERS * N_HEADS
    assert np.allclose(bars.x, (edges[:-1] + edges[1:]) / 2)
    over_prompts = distribution(records, "score", over="prompts", where={"layer": 1, "head": 2})
    assert over_prompts.data["count"].sum() == len(PROMPTS)
    with pytest.raises(ValueError, match="over='layers'"):
        distribution(records, "score", over="layers")


def test_attention_pattern_over_tokens(records, rows, tokens):
    plot = attention_pattern(records, tokens, "attn", "p1", 2, 1, unit="fraction of attention",
                             table="probe_a")
    fig = plot.figure()
    [trace] = fig.data
    n = len(PROMPTS["p1"])
    expected = np.full((n, n), np.nan)
    for r in rows:
        if (r["metric"], r["prompt_id"], r["layer"], r["head"]) == ("attn", "p1", 2, 1):
            expected[r["query_pos"], r["key_pos"]] = r["value"]
    np.testing.assert_array_equal(np.array(trace.z, dtype=float), expected)
    assert np.allclose(np.nansum(expected, axis=1), 1.0)
    # every position labelled pos:token (repeated tokens stay apart)
    assert list(fig.layout.xaxis.ticktext) == ["0:A", "1:b", "2:\u21b5", "3:\u2423", "4:c", "5:d"]
    assert list(fig.layout.yaxis.ticktext) == list(fig.layout.xaxis.ticktext)
    # hover names both positions and tokens (repeated tokens are ambiguous without positions)
    assert list(trace.customdata[4][1]) == ["4:c", "1:b"]
    assert "query %{customdata[0]}, key %{customdata[1]}" in trace.hovertemplate
    assert fig.layout.yaxis.autorange == "reversed" and trace.zmin == 0
    assert fig.layout.xaxis.title.text == "key (position:token)"
    assert plot.name == "probe_a.pattern.attn.p1.L2H1"
    assert token_label(" cat") == "cat"
    with pytest.raises(ValueError, match="no records of metric 'attn'"):
        attention_pattern(records, tokens, "attn", "nope", 0, 0)


def test_position_profile_one_curve_per_layer(records, rows):
    plot = position_profile(records, "sink", unit="fraction of attention", n_layers=N_LAYERS)
    fig = plot.figure()
    curves, colourbar = fig.data[:-1], fig.data[-1]
    assert [c.name for c in curves] == [f"layer {i}" for i in range(N_LAYERS)]
    assert colourbar.marker.showscale and colourbar.marker.colorbar.title.text == "layer"
    assert fig.layout.xaxis.title.text == "key position (token)"
    expected = means(rows, "sink", lambda r: (r["layer"], r["key_pos"]))
    for layer, curve in enumerate(curves):
        for x, y in zip(curve.x, curve.y):
            assert y == pytest.approx(expected[(layer, x)])
    assert curves[0].line.color != curves[-1].line.color


def test_dose_response_from_condition_sweep(records, rows):
    plot = dose_response(records, "effect", unit="logit")
    fig = plot.figure()
    assert [t.name for t in fig.data] == ["L1H2", "L3H0"]
    assert fig.layout.xaxis.title.text == "alpha" and fig.layout.yaxis.title.text == \
        "effect (logit)"
    for trace, (layer, head) in zip(fig.data, ((1, 2), (3, 0))):
        assert list(trace.x) == list(ALPHAS)
        for alpha, y, up in zip(ALPHAS, trace.y, trace.error_y.array):
            vals = [r["value"] for r in rows if r["metric"] == "effect" and r["layer"] == layer
                    and r["head"] == head and r["condition"] == f"alpha={alpha:g}"]
            assert len(vals) == len(PROMPTS) and y == pytest.approx(np.mean(vals))
            want = stats.bootstrap((np.sort(vals),), np.mean, method="percentile",
                                   n_resamples=2000, rng=np.random.default_rng(0))
            assert up == pytest.approx(want.confidence_interval.high - np.mean(vals))
    assert plot.params["param"] == "alpha"  # "clean" rows are not part of the sweep


def ioi_like_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_node("L9H6", value=3.1)
    g.add_node((10, 7), value=-1.5)
    g.add_node("x", layer=5, head=5, value=0.4)
    g.add_edge("embed", "x", weight=0.5)
    g.add_edge("x", "L9H6", weight=1.0)
    g.add_edge("L9H6", "logits", weight=2.0)
    g.add_edge((10, 7), "logits", weight=-1.0)
    return g


def token_graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for pos, token in enumerate(["<s>", " a", " <b>", " c"]):
        g.add_node(pos, label=token)
    g.add_weighted_edges_from([(1, 0, 0.9), (2, 0, 0.5), (2, 1, 0.3), (3, 0, 0.2), (3, 3, 0.7)])
    return g


def test_weighted_graph_arcs_and_literal_labels():
    plot = weighted_graph(token_graph(), label="attention", unit="fraction")
    edges = plot.data[plot.data["element"] == "edge"]
    assert len(edges) == 5 and edges["value"].tolist() == [0.9, 0.5, 0.3, 0.2, 0.7]
    assert plot.data[plot.data["element"] == "node"]["label"].tolist() == ["<s>", " a", " <b>",
                                                                            " c"]
    fig = plot.figure()
    arcs = [t for t in fig.data if t.mode == "lines"]
    # one polyline per drawn edge (self-loop 3->3 not drawn), each ending at its target
    ends = [x for t in arcs for x in t.x if x is not None]
    assert sum(x is None for t in arcs for x in t.x) == 4
    assert {0.0, 1.0} <= set(ends)
    hover = next(t for t in fig.data if t.mode == "markers" and t.hovertext)
    assert sorted(hover.marker.color) == [0.2, 0.3, 0.5, 0.9]
    # tokens are drawn literally: markup characters become entities plotly turns back
    assert list(fig.layout.xaxis.ticktext) == ["&lt;s&gt;", " a", " &lt;b&gt;", " c"]
    with pytest.raises(ValueError, match="no nodes"):
        weighted_graph(nx.DiGraph())


def test_heatmap_of_means_equals_head_heatmap(records):
    """Means aggregated elsewhere (the app's pyarrow group-by) give the same plot."""
    direct = head_heatmap(records, "score", n_layers=N_LAYERS, n_heads=N_HEADS)
    rows = records[records.metric == "score"]
    grouped = rows.groupby(["layer", "head"])
    means = pd.DataFrame({"value": grouped.value.mean(), "n_rows": grouped.size(),
                          "n_prompts": grouped.prompt_id.nunique()}).reset_index()
    plot = heatmap_of_means(means.sample(frac=1, random_state=0), "score", n_layers=N_LAYERS,
                            n_heads=N_HEADS)
    pd.testing.assert_frame_equal(plot.data, direct.data)
    assert plot.params == direct.params and plot.name == direct.name
    with pytest.raises(ValueError, match="lack column"):
        heatmap_of_means(means.drop(columns="n_prompts"), "score")


def test_strings_from_runs_are_drawn_literally(records):
    """Metric names, units and task names reach plotly as text, never as its markup."""
    label = '<a href="http://x">y</a>&<br>'
    fig = head_heatmap(records, "score", label=label, unit="<b>u</b>").figure()
    [trace] = fig.data
    assert "<a" not in trace.hovertemplate and "&lt;a href" in trace.hovertemplate
    assert trace.colorbar.title.text == ('&lt;a href="http://x"&gt;y&lt;/a&gt;&amp;&lt;br&gt;'
                                         "<br>(&lt;b&gt;u&lt;/b&gt;)")
    fig = by_depth(records, "score", label=label).figure()
    assert fig.layout.yaxis.title.text.startswith("&lt;a")
    assert "<a" not in fig.layout.yaxis.title.text.replace("<br>", "")
    fig = overlap_matrix(pd.DataFrame({"task_a": ["<i>t</i>"], "task_b": ["<i>t</i>"],
                                       "value": [1.0]})).figure()
    assert list(fig.data[0].x) == ["&lt;i&gt;t&lt;/i&gt;"]


def test_circuit_graph_positions_and_arrows():
    plot = circuit_graph(ioi_like_graph(), label="direct effect", unit="logit diff", n_heads=12)
    fig = plot.figure()
    nodes = plot.data[plot.data["element"] == "node"].set_index("node")
    assert nodes.loc["L9H6", ["x", "y"]].tolist() == [9, 6]
    assert nodes.loc["(10, 7)", ["x", "y"]].tolist() == [10, 7]
    assert nodes.loc["x", ["x", "y", "label"]].tolist() == [5, 5, "L5H5"]
    assert nodes.loc["embed", "x"] == 4 and nodes.loc["logits", "x"] == 11  # before / after
    assert len(fig.layout.annotations) == 4  # one arrow per edge
    arrow = {(a.ax, a.ay, a.x, a.y): a for a in fig.layout.annotations}
    assert arrow[(9, 6, 11, 5.5)].arrowwidth == pytest.approx(1.5)  # the heaviest edge
    assert arrow[(10, 7, 11, 5.5)].arrowcolor == "#0072B2"  # negative weight
    valued, other = fig.data
    assert sorted(valued.text) == ["L10H7", "L5H5", "L9H6"] and valued.marker.cmid is None
    assert valued.marker.cmin == -3.1 and valued.marker.colorbar.title.text == \
        "direct effect<br>(logit diff)"
    assert sorted(other.text) == ["embed", "logits"]
    assert fig.layout.xaxis.title.text == "layer" and fig.layout.yaxis.title.text == "head"


def test_overlap_matrix_from_long_or_square():
    square = pd.DataFrame([[1.0, 0.25], [0.25, 1.0]], index=["ioi", "induction"],
                          columns=["ioi", "induction"])
    plot = overlap_matrix(square, metric="jaccard", baseline=0.07, order=["ioi", "induction"])
    fig = plot.figure()
    [trace] = fig.data
    assert list(trace.x) == ["ioi", "induction"] and np.array(trace.z).tolist() == \
        square.to_numpy().tolist()
    assert trace.texttemplate == "%{z:.2f}" and fig.layout.xaxis.title.text == \
        "random baseline: 0.07"
    assert trace.zmin == 0 and trace.colorscale[0][1] == "#440154"  # viridis, starting at 0
    long = plot.data
    assert overlap_matrix(long, order=["ioi", "induction"]).data.equals(long)
    assert overlap_matrix(long).params["tasks"] == ["induction", "ioi"]  # sorted by default


def fixture_plots(tmp_path) -> list[Plot]:
    source = RunSource(make_run(tmp_path / "runs"))
    plots = run_figures(source)
    plots.append(distribution(source.records("probe_a", "score"), "score"))
    plots.append(circuit_graph(ioi_like_graph()))
    plots.append(overlap_matrix(pd.DataFrame({"task_a": ["a", "a", "b"], "task_b": ["a", "b", "b"],
                                              "value": [1.0, 0.1 / 3, 1.0]})))
    plots.append(weighted_graph(token_graph()))
    plots.append(faithfulness_bars(faithfulness_rows()))
    plots.append(atlas_grid(atlas_frame(), [{"name": "sink", "label": "sink head"},
                                            {"name": "induction", "label": "induction head"}]))
    plots += pruning_plots()
    plots += edge_plots()
    from tests.test_circuits_ioi_cli import _class_rows
    from tests.test_circuits_search import curve_fixture
    from workbench.figures.circuit_curve import curve_plot
    from workbench.figures.ioi_sets import ioi_class_plot

    plots.append(curve_plot(*curve_fixture(), "ioi"))
    plots.append(ioi_class_plot(_class_rows(), "ioi", n_layers=4))
    pattern = np.tril(np.full((2, 2, 3, 3), 1 / 3))  # live views (app Live pattern page)
    plots.append(pattern_grid(pattern, ["a", " b", "\n"]))
    plots.append(attention_text(["a", " b", "\n"], [0.5, 0.25, 0.25], 2, "layer 0, head 0"))
    return plots


def atlas_frame() -> pd.DataFrame:
    """A small atlas: two roles scored on the fixture grid, every third head labelled."""
    rng = np.random.default_rng(0)
    grid = pd.DataFrame([(la, h) for la in range(N_LAYERS) for h in range(N_HEADS)],
                        columns=["layer", "head"]).assign(model="fixture")
    for role in ("sink", "induction"):
        grid[f"{role}_score"] = rng.random(len(grid))
        grid[f"{role}_rank"] = grid[f"{role}_score"].rank(ascending=False, method="min")
        grid[role] = np.arange(len(grid)) % 3 == 0
    return grid


def faithfulness_rows() -> pd.DataFrame:
    """A faithfulness table of two tasks, one method, 3 random circuits each."""
    rows = []
    for task, faith, draws in (("ioi", 0.8, [0.1, 0.3, 0.2]), ("induction", 0.5, [0.0, 0.05,
                                                                                  -0.05])):
        rows.append({"probe": "path_patching", "metric": "faithfulness", "segment": task,
                     "condition": None, "value": faith})
        rows.append({"probe": "path_patching", "metric": "faithfulness_random", "segment": task,
                     "condition": None, "value": float(np.mean(draws))})
        rows += [{"probe": "path_patching", "metric": "faithfulness_random_draw",
                  "segment": task, "condition": f"draw={i}", "value": v}
                 for i, v in enumerate(draws)]
    return pd.DataFrame(rows)


def test_sidecars_hold_exactly_what_is_drawn(tmp_path):
    """Every kind: the CSV + JSON sidecars read back to the same data and redraw the same figure
    (drawers see nothing but data and params)."""
    plots = fixture_plots(tmp_path)
    assert {p.kind for p in plots} == set(DRAWERS)
    for plot in plots:
        (tmp_path / f"{plot.name}.csv").write_bytes(sidecar_csv(plot))
        (tmp_path / f"{plot.name}.json").write_bytes(sidecar_json(plot, width="single"))
        back = load_plot(tmp_path / f"{plot.name}.json")
        pd.testing.assert_frame_equal(back.data, plot.data.reset_index(drop=True),
                                      check_exact=True)
        assert back.params == plot.params and back.kind == plot.kind
        for width in ("single", "double"):
            assert back.figure(width).to_json() == plot.figure(width).to_json(), plot.name


def test_generic_figure_set_follows_the_data_shapes(tmp_path):
    source = RunSource(make_run(tmp_path / "runs"))
    names = [p.name for p in run_figures(source)]
    assert names == [
        "probe_a.profile.attn", "probe_a.pattern.attn.p0.L0H0", "probe_a.pattern.attn.p0.L0H1",
        "probe_a.pattern.attn.p0.L0H2", "probe_a.pattern.attn.p0.L1H0",
        "probe_a.heatmap.effect.clean", "probe_a.depth.effect.clean",
        "probe_a.dose.effect", "probe_a.depth.layer_norm",
        "probe_a.heatmap.score", "probe_a.depth.score",
        "probe_a.heatmap.seg_mass.IO", "probe_a.depth.seg_mass.IO",
        "probe_a.heatmap.seg_mass.S1", "probe_a.depth.seg_mass.S1",
        "probe_a.profile.sink"]
    # causal patterns (rows sum to 1) have the same per-head mean 1 / (mean row length) for every
    # head: those heatmaps and by-depth lines would draw float noise, so they are skipped
    assert {(s["name"], s["reason"].split(" (")[0]) for s in source.skipped} == {
        ("probe_a.heatmap.attn", "constant values"), ("probe_a.heatmap.sink", "constant values"),
        ("probe_a.depth.attn", "the same mean and spread at every layer"),
        ("probe_a.depth.sink", "the same mean and spread at every layer")}
    chosen = run_figures(RunSource(source.run), FigureOptions(prompts=("p2",), heads=((3, 1),)))
    assert [p.name for p in chosen if p.kind == "pattern"] == ["probe_a.pattern.attn.p2.L3H1"]
    assert not source.notes


def test_each_variant_gets_the_figures_its_own_rows_allow(tmp_path):
    """Segment A has per-head rows, segment B only layer-level rows: no heatmap for B."""
    from workbench.records import concat, conform, records

    run = make_run(tmp_path / "runs")
    mix = concat([records("mix", [1.0, 2.0], layer=0, head=[0, 1], prompt_id="p0", segment="A"),
                  records("mix", [3.0, 4.0], layer=[0, 1], prompt_id="p0", segment="B")])
    run.write_table("probe_b", conform(mix, run_id="fixture", probe="probe_b"))
    source = RunSource(run)
    plots = run_figures(source, FigureOptions(tables=("probe_b",), prompts=("p0",)))
    assert [p.name for p in plots] == ["probe_b.heatmap.mix.A", "probe_b.depth.mix.B"]
    assert plots[1].data["mean"].tolist() == [3.0, 4.0]
    assert [(s["name"], s["reason"]) for s in source.skipped] == [
        ("probe_b.depth.mix.A", "one layer only: nothing to compare across depth")]
    assert plots[0].params["table"] == "probe_b"
    # patterns were asked for (--prompt) and the table has none: say so
    assert source.notes == ["probe_b: no attention-pattern records (no metric has query_pos and "
                            "key_pos for a head), so no pattern figures"]


def test_registered_set_replaces_generic_figures_for_its_metrics(tmp_path):
    source = RunSource(make_run(tmp_path / "runs"))

    def only_score(src, table, options):
        return [head_heatmap(src.records(table, "score"), "score", name="custom")]

    register_figure_set("probe_a", covers=("score", "attn", "sink", "effect", "seg_mass"),
                        patterns=True)(only_score)
    try:
        assert [p.name for p in run_figures(source)] == ["custom", "probe_a.depth.layer_norm"]
        assert source.notes == ["probe_a: no attention-pattern records (no metric has query_pos "
                                "and key_pos for a head), so no pattern figures"]
        with pytest.raises(ValueError, match="already has a figure set"):
            register_figure_set("probe_a")(only_score)
    finally:
        del FIGURE_SETS["probe_a"]


def test_entropy_set_matches_the_probes_own_means(tmp_path, small_prompts):
    """The entropy heatmaps (means of per-query rows) equal the probe's stored mean_* summaries,
    computed independently inside the probe; the mean_* metrics get no duplicate figures."""
    from workbench_cli.cli import main
    from workbench.store import list_runs

    main(["run", "--model", "tiny-gpt2", "--prompts", str(small_prompts), "--runs-dir",
          str(tmp_path), "--device", "cpu", "--no-progress", "--param",
          "attention_entropy.segment=names"])
    [(run, _)] = list_runs(tmp_path)
    source = RunSource(run)
    plots = {p.name: p for p in run_figures(source)}
    metrics = ("entropy_norm", "entropy", "segment_entropy_norm", "segment_entropy",
               "segment_mass")
    assert list(plots) == [
        f"attention_entropy.{kind}.{metric}{'.heads' if kind == 'hist' else ''}"
        for metric in metrics for kind in ("heatmap", "depth", "hist")]
    for metric in metrics:
        stored = run.read_table("attention_entropy", filters=[("metric", "=", f"mean_{metric}")])
        stored = stored.to_pandas().set_index(["layer", "head"])["value"].sort_index()
        heat = plots[f"attention_entropy.heatmap.{metric}"]
        got = heat.data.set_index(["layer", "head"])["value"].sort_index()
        assert len(got) == 16 and np.allclose(got, stored, atol=1e-12), metric
        assert (heat.data["n_prompts"] == 3).all()
    fig = plots["attention_entropy.heatmap.entropy_norm"].figure()
    assert fig.data[0].colorbar.title.text == \
        "normalised entropy<br>(fraction of ln(visible keys))"
    assert source.notes == ["attention_entropy: no attention-pattern records (no metric has "
                            "query_pos and key_pos for a head), so no pattern figures"]


def test_figures_package_imports_no_torch():
    code = ("import sys, workbench.figures, workbench.figures.command; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_pdf_dates_are_fixed_in_place():
    from workbench.figures.export import normalise

    raw = b"<</CreationDate (D:20261122200133+05'30')\n/ModDate (D:20261122200133-07'00')>>"
    fixed = normalise(raw, "pdf")
    assert fixed == (b"<</CreationDate (D:20000101000000+00'00')\n"
                     b"/ModDate (D:20000101000000+00'00')>>")
    assert len(fixed) == len(raw)  # the PDF's cross-reference offsets stay valid
    svg = b'<defs id="defs-a1b2c3"><clipPath id="clipa1b2c3x"/><text>a1b2c3</text>'
    assert normalise(svg, "svg", uid=b"000000") == \
        b'<defs id="defs-000000"><clipPath id="clip000000x"/><text>a1b2c3</text>'
