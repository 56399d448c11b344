"""Which ``workbench circuits`` option applies at which level (one table, circuits/levels.py): every
option of the command and of ``wb.circuits`` is classified, and each option of one level is
refused at the other in one line before the model loads (CLI and API); the edge level's counts
are bounded before the model loads."""

from __future__ import annotations

import inspect

import pytest
import typer

from circuits.levels import BOTH_LEVELS, LEVEL_ONLY, check_level_options
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import write_jsonl
from tests.test_run import cli
from workbench.errors import InputError
from workbench_cli.cli import app

# a value other than the default, per option (CLI arguments; Python value for wb.circuits)
EXAMPLES = {
    "direction": (["--direction", "clean_into_corrupted"], "clean_into_corrupted"),
    "positions": (["--positions", "last"], "last"),
    "heads_per_forward": (["--heads-per-forward", "2"], 2),
    "stages": (["--stages", "3"], 3),
    "receiver_input": (["--receiver-input", "q"], "q"),
    "mean_prompts": (["--mean-prompts", "4"], 4),
    "heads": (["--heads", "1.0"], "1.0"),
    "spot_check": (["--spot-check", "0"], 0),
    "both_directions": (["--both-directions"], True),
    "grids": (["--grids", "all"], "all"),
    "grid_layers": (["--grid-layers", "0"], "0"),
    "dla": (["--dla"], True),
    "ioi_classes": (["--ioi-classes"], True),
    "nodes": (["--nodes", "heads,mlps"], "heads,mlps"),
    "max_size": (["--max-size", "10"], 10),
    "held_out": (["--held-out", "4"], 4),
    "refine_tolerance": (["--refine-tolerance", "0.05"], 0.05),
    "refine_candidates": (["--refine-candidates", "4"], 4),
    "refine_rounds": (["--refine-rounds", "2"], 2),
    "refine_budget": (["--refine-budget", "50"], 50.0),
    "metric": (["--metric", "prob"], "prob"),
    "ablation": (["--ablation", "mean"], "mean"),
    "ig_steps": (["--ig-steps", "3"], 3),
    "ig_rule": (["--ig-rule", "left"], "left"),
    "n_boot": (["--n-boot", "50"], 50),
}


def circuits_params() -> set[str]:
    command = typer.main.get_command(app).commands["circuits"]
    return {p.name for p in command.params}


def test_every_circuits_option_is_classified_once():
    names = circuits_params()
    assert names <= set(LEVEL_ONLY) | BOTH_LEVELS, names - set(LEVEL_ONLY) - BOTH_LEVELS
    assert set(LEVEL_ONLY) <= names
    assert not set(LEVEL_ONLY) & BOTH_LEVELS
    assert set(EXAMPLES) == set(LEVEL_ONLY)
    from workbench_cli.jobs import circuits as job
    api = set(inspect.signature(job).parameters) - {"model", "tasks", "methods"}
    assert api <= set(LEVEL_ONLY) | BOTH_LEVELS, api - set(LEVEL_ONLY) - BOTH_LEVELS
    assert set(LEVEL_ONLY) <= api  # wb.circuits takes every option of both levels


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr("workbench.models.load_model", refuse)


@pytest.mark.parametrize("name", sorted(LEVEL_ONLY))
def test_an_option_of_the_other_level_is_refused_in_one_line(name, capsys, tmp_path, no_model):
    where, _, flag = LEVEL_ONLY[name]
    other = "node" if where == "edge" else "edge"
    task = write_jsonl(tmp_path / "t.jsonl", tiny_ioi_rows(2, seed=1))
    code, out, err = cli(capsys, "circuits", "--model", "tiny-llama", "--device", "cpu",
                         "--runs-dir", str(tmp_path / "runs"), "--task", str(task),
                         "--level", other, *EXAMPLES[name][0])
    text = (out + err).strip()
    assert code == 2, text
    assert flag in text and f"--level {where} only" in text
    assert len(text.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    with pytest.raises(InputError, match=f"{flag} applies at --level {where} only"):
        from workbench_cli.jobs import circuits as job
        job("tiny-llama", [str(task)], level=other, runs_dir=tmp_path / "api",
            **{name: EXAMPLES[name][1]})
    assert not (tmp_path / "api").exists()


def test_defaults_of_the_other_level_are_accepted():
    check_level_options("edge", {name: default for name, (_, default, _) in LEVEL_ONLY.items()})
    check_level_options("node", {"positions": ["all"], "grids": [], **{
        name: default for name, (where, default, _) in LEVEL_ONLY.items() if where == "edge"}})
    with pytest.raises(InputError, match="--level 'graph'"):
        check_level_options("graph", {})


@pytest.mark.parametrize("args, message", [
    (["--ig-steps", str(2 ** 31)], "--ig-steps 2147483648: expected an integer in [1, 64]"),
    (["--ig-steps", "0"], "--ig-steps"),
    (["--n-boot", str(2 ** 40)], "expected an integer in [1, 10000]"),
    (["--n-random", str(2 ** 40)], "expected an integer in [0, 100]"),
    (["--ig-rule", "middle"], "--ig-rule"),
    (["--select", "top_n=0"], "out of range"),
    (["--select", "top_percent=0"], "out of range"),
    (["--select", "faithfulness=1.5"], "out of range"),
    (["--select", "faithfulness=nan"], "out of range"),
])
def test_edge_counts_are_bounded_before_the_model_loads(args, message, capsys, tmp_path,
                                                         no_model):
    task = write_jsonl(tmp_path / "t.jsonl", tiny_ioi_rows(2, seed=1))
    code, out, err = cli(capsys, "circuits", "--model", "tiny-llama", "--device", "cpu",
                         "--runs-dir", str(tmp_path / "runs"), "--task", str(task),
                         "--level", "edge", *args)
    text = (out + err).strip()
    assert code == 2 and message in text and len(text.splitlines()) == 1, text
    assert not (tmp_path / "runs").exists()


def test_wb_circuits_runs_the_edge_level(tmp_path):
    """wb.circuits(level="edge") gives the CLI's edge tables (it had no edge level)."""
    import workbench as wb

    task = write_jsonl(tmp_path / "t.jsonl", tiny_ioi_rows(3, seed=2))
    res = wb.circuits("tiny-llama", [str(task)], level="edge", methods=["eap"],
                      select="top_n=30", n_random=1, n_boot=20)
    assert {"edge_scores", "circuits", "faithfulness", "edge_faithfulness_curve"} <= \
        set(res.tables)
    members = res["circuits"]
    assert (members.metric == "edge_member").sum() == \
        int(members.loc[members.metric == "n_edges", "value"].iloc[0])
