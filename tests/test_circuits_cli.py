"""``workbench circuits`` end to end on a tiny model: tables, manifest, overlap, bad input."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from circuits.effects import spearman
from circuits.overlap import overlap
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import write_jsonl
from tests.test_run import cli
from workbench.records import RECORD_SCHEMA
from workbench.store import list_runs
from workbench.heads import format_head


@pytest.fixture
def two_tasks(tmp_path):
    first = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(4, seed=1))
    rows = [{**r, "id": r["id"].replace("ioi", "beta")} for r in tiny_ioi_rows(4, seed=2)]
    return first, write_jsonl(tmp_path / "beta.jsonl", rows)


def args(tasks, runs, *extra):
    out = ["circuits", "--model", "tiny-llama", "--device", "cpu", "--runs-dir", str(runs),
           "--no-progress", "--n-random", "1"]
    for task in tasks:
        out += ["--task", str(task)]
    return out + list(extra)


def test_circuits_run_writes_every_table(capsys, two_tasks, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *args(two_tasks, runs, "--method", "attribution", "--method",
                                       "activation", "--select", "top_k=3"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert manifest["kind"] == "circuits" and manifest["status"] == "complete"
    assert set(manifest["timings"]) >= {"attribution.alpha_s", "activation.beta_s",
                                        "faithfulness.activation.alpha_s"}
    assert [p["name"] for p in manifest["probes"]] == ["attribution_patching",
                                                      "activation_patching"]
    tables = {name: pq.read_table(run.table_path(name)) for name in manifest["tables"]}
    assert set(tables) == {"task_metrics", "head_effects", "circuits", "faithfulness", "overlap",
                           "method_agreement", "spot_check"}
    assert {"prompts", "tokens"} <= set(run.tables())
    for table in tables.values():
        assert table.schema.equals(RECORD_SCHEMA, check_metadata=False)
    frames = {name: t.to_pandas() for name, t in tables.items()}
    effects, circuits = frames["head_effects"], frames["circuits"]
    scores = effects[effects.metric == "score"]
    assert len(scores) == 2 * 2 * 16 and set(scores.condition) == {"corrupted_into_clean"}
    members = {}
    for (probe, task), rows in circuits[circuits.metric == "member"].groupby(["probe", "segment"]):
        members[probe, task] = {(int(r.layer), int(r.head)) for r in rows.itertuples()}
        assert len(members[probe, task]) == 3
        top = scores[(scores.probe == probe) & (scores.segment == task)]
        top = top.assign(mag=top.value.abs()).nlargest(3, "mag")
        assert members[probe, task] == {(int(r.layer), int(r.head)) for r in top.itertuples()}
    ov = frames["overlap"]
    row = ov[(ov.probe == "activation_patching") & (ov.metric == "jaccard")]
    assert row.segment.tolist() == ["alpha|beta"]
    want = overlap(members["activation_patching", "alpha"], members["activation_patching", "beta"],
                   16)
    assert row.value.item() == pytest.approx(want.jaccard)
    p = ov[(ov.probe == "activation_patching") & (ov.metric == "p_value")].value.item()
    assert p == pytest.approx(want.p_value)
    grid = {probe: np.full((4, 4), np.nan) for probe in scores.probe.unique()}
    for r in scores[scores.segment == "alpha"].itertuples():
        grid[r.probe][r.layer, r.head] = r.value
    rho = frames["method_agreement"].query("segment == 'alpha'").value.item()
    assert rho == pytest.approx(spearman(grid["attribution_patching"],
                                         grid["activation_patching"]))
    faith = frames["faithfulness"]
    assert set(faith.metric) == {"logit_diff", "faithfulness", "faithfulness_normalised",
                                 "faithfulness_random", "circuit_accuracy",
                                 "faithfulness_random_draw", "faithfulness_lo", "faithfulness_hi",
                                 "faithfulness_normalised_lo", "faithfulness_normalised_hi"}
    for metric in ("faithfulness", "faithfulness_normalised"):
        for (probe, task), f in faith.groupby(["probe", "segment"]):
            lo, mid, hi = (f[f.metric == m].value.item() for m in
                           (f"{metric}_lo", metric, f"{metric}_hi"))
            assert lo <= mid <= hi
            assert f"{mid:.3f} [{lo:.3f}, {hi:.3f}]" in out
    draws = faith[faith.metric == "faithfulness_random_draw"]  # --n-random 1: one per task/method
    mean = faith[faith.metric == "faithfulness_random"]
    assert (draws.condition == "draw=0").all() and len(draws) == len(mean)
    assert "overlap: shared, Jaccard" in out and "alpha|beta" in out


@pytest.mark.parametrize("extra, message", [
    (["--method", "magic"], "unknown method(s) ['magic']"),
    (["--select", "top_k"], "selection 'top_k' is not method=value"),
    (["--positions", "S9"], "has no segment 'S9' (patching positions)"),
    (["--direction", "up"], "direction 'up' is not one of"),
    (["--grids", "resid_pre,resid_mid"], "--grids: unknown component(s) 'resid_mid'"),
    (["--grid-layers", "1"], "--grid-layers chooses the layers of the --grids; give --grids too"),
    (["--grids", "mlp_out", "--grid-layers", "1,a"], "--grid-layers: 'a' is not a layer index"),
    (["--grids", "mlp_out", "--grid-layers", "9"], "grid layers [9]: the model has layers 0..3"),
])
def test_bad_input_exits_2_and_writes_nothing(capsys, two_tasks, tmp_path, extra, message):
    runs = tmp_path / "runs"
    code, _, err = cli(capsys, *args(two_tasks, runs, *extra))
    assert code == 2 and message in err
    assert not runs.exists()


def test_unequal_lengths_are_refused(capsys, tmp_path):
    rows = tiny_ioi_rows(3)
    rows[1]["corrupted_text"] = rows[1]["corrupted_text"] + " and more"
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    code, _, err = cli(capsys, *args([path], tmp_path / "runs"))
    assert code == 2 and "prompt 'tiny-ioi-1': corrupted_text has" in err
    assert "patching needs equal lengths" in err and not (tmp_path / "runs").exists()


def test_heads_option_patches_only_the_chosen_heads(capsys, two_tasks, tmp_path):
    runs = tmp_path / "runs"
    for method in ("activation", "attribution", "path"):
        code, out, err = cli(capsys, *args(two_tasks[:1], runs, "--method", method,
                                           "--heads", "3.1, 1.2,0.0", "--select", "top_k=2",
                                           "--stages", "1", "--run-id", method))
        assert code == 0, err
        [(run, _)] = [r for r in list_runs(runs) if r[0].run_id == method]
        effects = pq.read_table(run.table_path("head_effects")).to_pandas()
        scores = effects[effects.metric == "score"]
        heads = {(int(r.layer), int(r.head)) for r in scores.itertuples()}
        want = {(0, 0), (1, 2), (3, 1)}
        assert heads == want, method
        members = pq.read_table(run.table_path("circuits")).to_pandas().query("metric == 'member'")
        assert {(int(r.layer), int(r.head)) for r in members.itertuples()} <= want
        assert ("edges (sender -> receiver: the sender's score through that receiver alone)"
                in out) == (method == "path")


@pytest.mark.parametrize("heads, message", [
    ("1.2,x", "--heads: head 'x' is not of the form L9H6"),
    ("1.2,9.0", f"--heads: head {format_head((9, 0))} is out of range"),
    (",", "--heads: no head given"),
])
def test_bad_heads_are_refused_naming_the_item(capsys, two_tasks, tmp_path, heads, message):
    runs = tmp_path / "runs"
    code, _, err = cli(capsys, *args(two_tasks[:1], runs, "--heads", heads))
    assert code == 2 and message in err, err
    assert not runs.exists()


def test_attribution_spot_check_is_written_and_reported(capsys, two_tasks, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *args(two_tasks[:1], runs, "--method", "attribution",
                                       "--spot-check", "4", "--both-directions"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert manifest["probes"][0]["params"]["spot_check"] == 4
    spot = pq.read_table(run.table_path("spot_check")).to_pandas()
    est = spot[spot.metric == "score_attribution"]
    scores = pq.read_table(run.table_path("head_effects")).to_pandas().query("metric == 'score'")
    top = scores.assign(mag=scores.value.abs()).nlargest(4, "mag")
    assert {(r.layer, r.head) for r in est.itertuples()} == {(r.layer, r.head)
                                                            for r in top.itertuples()}
    flags = spot[spot.metric == "disagrees"]
    assert len(flags) == 4 and set(flags.value) <= {0.0, 1.0}
    assert "spot check (attribution vs activation patching" in out
    assert f"{int(flags.value.sum())} of 4 disagree" in out
    both = pq.read_table(run.table_path("directions")).to_pandas()
    members = pq.read_table(run.table_path("circuits")).to_pandas().query("metric == 'member'")
    assert {(r.layer, r.head) for r in both.itertuples()} == {(r.layer, r.head)
                                                             for r in members.itertuples()}
    flagged = both[both.metric == "one_direction_only"].value.sum()
    assert f"{int(flagged)} of {len(members)} heads matter in one direction only" in out
    code, _, err = cli(capsys, *args(two_tasks[:1], runs, "--spot-check", "-1"))
    assert code == 2 and "--spot-check -1: expected an integer in [0, 100000]" in err


@pytest.fixture
def grid_run(capsys, two_tasks, tmp_path):
    """A tiny circuits run with --grids resid_pre,mlp_out --dla: (run, manifest, report)."""
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *args(two_tasks[:1], runs, "--select", "top_k=3",
                                       "--spot-check", "0", "--grids", "resid_pre",
                                       "--grids", "mlp_out", "--dla", "--batch-size", "2"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    return run, manifest, out, runs


def test_grids_and_dla_are_written_reported_and_equal_the_functions(grid_run, two_tasks):
    from circuits.dla import direct_logit_attribution
    from circuits.grids import patching_grid
    from circuits.tasks import load_task
    from workbench.figures.circuit_sets import grid_plot
    from workbench.figures.registry import FIGURE_SETS
    from workbench.models import load_model

    run, manifest, out, _ = grid_run
    assert {"patching_grid", "direct_logit_attribution"} <= set(manifest["tables"])
    assert manifest["config_key"]["grids"] == ["resid_pre", "mlp_out"]
    assert {"grid.resid_pre.alpha_s", "grid.mlp_out.alpha_s", "dla.alpha_s"} <= \
        set(manifest["timings"])
    grid = pq.read_table(run.table_path("patching_grid")).to_pandas()
    dla = pq.read_table(run.table_path("direct_logit_attribution")).to_pandas()
    model = load_model("tiny-llama", device="cpu")
    task = load_task(str(two_tasks[0]), model)
    want = patching_grid(model, task, "mlp_out", batch_size=2)
    mine = grid[grid.condition.str.startswith("mlp_out")]
    got = mine[mine.metric == "score"].pivot_table(index="layer", columns="query_pos",
                                                   values="value")
    np.testing.assert_allclose(got.to_numpy(), want.score, atol=1e-6)
    ref = direct_logit_attribution(model, task, batch_size=2)
    heads = dla[(dla.metric == "dla_mean") & (dla.condition == "head")]
    heads = heads.pivot_table(index="layer", columns="head", values="value")
    np.testing.assert_allclose(heads.to_numpy(), ref.heads.mean(0), atol=1e-6)
    assert "patching grids (layer @ position from the end" in out
    assert "alpha resid_pre: L" in out and "alpha mlp_out: L" in out
    assert "direct logit attribution (mean over prompts" in out
    # the figure: layer x position, rows labelled with the first prompt's tokens
    tokens = pq.read_table(run.table_path("tokens")).to_pandas()
    plot = grid_plot(mine, n_layers=4, tokens=tokens)
    z = plot.data.pivot_table(index="layer", columns="head", values="value").to_numpy()
    np.testing.assert_allclose(z, want.score, atol=1e-6)
    first = task.clean[0]
    assert plot.params["row_labels"][-1] == \
        f"-1 {model.tokenizer.decode([first.input_ids[-1]])!r}"
    assert {"patching_grid", "direct_logit_attribution"} <= set(FIGURE_SETS)


def test_app_circuits_page_draws_the_grid(grid_run, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from tests.test_app import MAIN, charts, no_errors

    run, _, _, runs = grid_run
    grid = pq.read_table(run.table_path("patching_grid")).to_pandas()
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["run"] = run.run_id
    at.run()
    at.switch_page("views/circuits.py").run()
    no_errors(at)
    at.selectbox(key="circuits-grid-condition").set_value(
        "resid_pre; corrupted_into_clean").run()
    chart = next(c for c in charts(at) if c["layout"]["yaxis"]["title"]["text"]
                 == "position from the end")
    z = np.array(chart["data"][0]["z"], dtype=float)  # [position, layer]
    want = grid[(grid.metric == "score") & (grid.condition == "resid_pre; corrupted_into_clean")]
    want = want.pivot_table(index="query_pos", columns="layer", values="value").to_numpy()
    np.testing.assert_allclose(z, want, atol=1e-9)


def test_grid_layers_limit_the_grids(capsys, two_tasks, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *args(two_tasks[:1], runs, "--select", "top_k=3",
                                       "--spot-check", "0", "--grids", "mlp_out",
                                       "--grid-layers", "3,1", "--batch-size", "2"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert manifest["config_key"]["grid_layers"] == [1, 3]
    grid = pq.read_table(run.table_path("patching_grid")).to_pandas()
    assert set(grid.layer) == {1, 3}
