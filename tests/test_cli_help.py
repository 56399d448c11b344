"""The CLI's conventions over every command of the typer app (help text, metavars, 80 columns, the
list convention, the batch-size rule, --version) and the `runs` listing and `runs show`."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer.main

from tests.test_run import cli
from workbench_cli.cli import app
from workbench_cli.commands import common
from workbench.records import conform, records
from workbench.store import atomic_write_json

def _commands(command, path: tuple[str, ...] = ("workbench",)):
    """(path, command) for the app and every command below it, depth first."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _commands(sub, (*path, name))


ROOT = typer.main.get_command(app)
COMMANDS = list(_commands(ROOT))
IDS = [" ".join(path[1:]) or "workbench" for path, _ in COMMANDS]


def _ctx(path, command) -> typer.Context:
    return typer.Context(command, info_name=path[-1], terminal_width=80, max_content_width=80)


def _is_option(param) -> bool:
    return param.param_type_name == "option"


def _long(param) -> str:
    return max(param.opts, key=len)


def _options(command):
    return [p for p in command.params if _is_option(p)]


def test_the_walk_reaches_every_command():
    names = {" ".join(path[1:]) for path, _ in COMMANDS}
    assert {"run", "circuits", "intervene", "graph", "runs show", "runs list", "atlas compare",
            "figures compose", "heads learn-gates", "sweep", "app"} <= names
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_option_has_help_and_a_word_for_a_metavar(path, command):
    ctx = _ctx(path, command)
    for param in [*command.params, command.get_help_option(ctx)]:
        if param is None:
            continue
        if _is_option(param):
            assert param.help and len(param.help) > 8, f"{param.opts} has no help text"
        names, _ = param.get_help_record(ctx)
        for bad in ("[", "list", "<", "bool"):
            assert bad not in names, f"{' '.join(path)} {names!r}: metavar shows {bad!r}"
        if _is_option(param) and param.is_flag:
            assert names.replace(" / ", "").replace(", ", "").replace("-", "").isalpha(), names
        elif _is_option(param):  # the value's word: PATH, N, MODEL ...
            assert re.fullmatch(r"[A-Z][A-Z0-9_.=]*", param.metavar or ""), (names, param.metavar)


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_help_fits_80_columns_and_cuts_nothing(path, command):
    text = command.get_help(_ctx(path, command))
    too_wide = [line for line in text.splitlines() if len(line) > 80]
    assert not too_wide, too_wide
    assert "…" not in text
    flat = " ".join(text.split())
    for name, sub in getattr(command, "commands", {}).items():  # whole first sentences
        assert " ".join(sub.get_short_help_str(limit=1_000).split()) in flat, name


def test_top_level_help_states_the_conventions():
    flat = " ".join(ROOT.get_help(_ctx(("workbench",), ROOT)).split())
    assert "--task ioi --task induction is --task ioi,induction" in flat
    assert "--batch-size defaults to a size chosen from free memory (8 on the CPU)" in flat


LIST_OPTIONS = [(path, command, p) for path, command in COMMANDS for p in _options(command)
                if p.multiple and "=" not in (p.metavar or "")]  # key=value: repeated only


def test_list_options_are_the_ones_expected():
    found = {f"{' '.join(path[1:])} {_long(p)}" for path, _, p in LIST_OPTIONS}
    assert {"run --prompts", "run --probes", "circuits --task", "circuits --method",
            "circuits --positions", "intervene --probes", "atlas --task", "atlas --skip",
            "figures --format", "figures --tables", "figures --prompt", "figures --heads",
            "heads learn-gates --lambda"} <= found
    for path, command, p in [(a, b, p) for a, b in COMMANDS for p in _options(b)]:
        if _long(p) in ("--probes", "--skip", "--format", "--tables", "--positions", "--task",
                        "--prompts", "--prompt", "--method", "--lambda"):
            assert p.multiple, f"{' '.join(path)} {_long(p)} is not repeatable"


@pytest.mark.parametrize(("path", "command", "param"), LIST_OPTIONS,
                         ids=[f"{' '.join(a[1:])} {_long(p)}" for a, _, p in LIST_OPTIONS])
def test_list_options_repeat_and_split_on_commas(path, command, param):
    """``--opt a,b --opt c`` == ``--opt a --opt b --opt c``, for every list option."""
    ctx = _ctx(path, command)
    given = ("0.5,0.25", "2") if param.name == "lambdas" else ("a,b", " c ")
    want = [0.5, 0.25, 2.0] if param.name == "lambdas" else ["a", "b", "c"]
    value, _ = param.handle_parse_result(ctx, {param.name: given}, [])
    assert [v if isinstance(v, float) else str(v) for v in value] == want
    assert common.LIST_NOTE in param.help


def test_a_task_list_parses_the_same_repeated_or_comma_separated():
    circuits = ROOT.commands["circuits"]
    repeated = circuits.make_context("circuits", ["--task", "ioi", "--task", "induction"])
    commas = circuits.make_context("circuits", ["--task", "ioi,induction"])
    assert repeated.params["task"] == commas.params["task"] == ["ioi", "induction"]


def test_one_batch_size_rule(tiny_llama):
    """Every --batch-size defaults to None (the automatic size) with the same help, and the
    automatic size is the one `workbench run` picks (8 on the CPU)."""
    from workbench.memory import plan_batch

    found = [(path, p) for path, command in COMMANDS for p in _options(command)
             if "--batch-size" in p.opts]
    assert len(found) >= 7  # run, circuits, intervene, atlas and the three heads commands
    for path, p in found:
        assert p.default is None and p.help == common.BATCH_SIZE.help, " ".join(path)
    assert common.auto_batch_size(None, tiny_llama, ["a short prompt", 12]) == 8
    assert common.auto_batch_size(3, tiny_llama, ["x"]) == 3
    assert plan_batch(tiny_llama, 13, eager=True, needs_logits=True).batch_size == 8


def test_batch_size_below_one_is_refused_in_one_line(capsys):
    code, _, err = cli(capsys, "circuits", "--task", "ioi", "--batch-size", "0")
    assert code == 2 and len(err.splitlines()) == 1
    assert "'--batch-size' / '-b': must be at least 1 (got '0')" in err


def test_version(capsys):
    from workbench import __version__

    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"workbench {__version__}"


LONG_IDS = ["smollm2-135m-natural-3f2a1b9c", "smollm2-135m-counterfactual_context-77aa01ff",
            "atlas-smollm2-135m-circuits"]


def _fake_run(runs, run_id, created, table=None):
    (runs / run_id).mkdir(parents=True)
    tables = {}
    if table is not None:
        pq.write_table(table, runs / run_id / "attention_sink.parquet")
        tables["attention_sink"] = {"rows": table.num_rows,
                                    "metrics": sorted(set(table["metric"].to_pylist()))}
    atomic_write_json(runs / run_id / "run.json", {
        "run_id": run_id, "status": "complete", "created": created, "finished": created,
        "model": {"name": "HuggingFaceTB/SmolLM2-135M", "n_layers": 30, "n_heads": 9},
        "prompts": {"name": "counterfactual_context"}, "units": {"segment_mass": "fraction"},
        "probes": [{"name": "attention_sink"}, {"name": "attention_entropy"},
                   {"name": "head_types"}], "tables": tables})


@pytest.fixture
def narrow(monkeypatch):
    monkeypatch.setattr(common.out, "width", 80)


def test_runs_list_shows_whole_run_ids_at_80_columns(capsys, tmp_path, narrow):
    for i, run_id in enumerate(LONG_IDS):
        _fake_run(tmp_path, run_id, f"2026-11-30T23:0{i}:05.123456+00:00")
    for argv in (["runs", "--runs-dir", str(tmp_path)],
                 ["runs", "list", "--runs-dir", str(tmp_path)]):
        code, out, err = cli(capsys, *argv)
        assert code == 0, err
        assert max(map(len, out.splitlines())) <= 80, out
        lines = out.splitlines()
        assert lines[0].split() == ["run", "id", "status", "records"]
        assert [line.split()[:3] for line in lines[1:4]] == [
            [LONG_IDS[2], "complete", "0"], [LONG_IDS[1], "complete", "0"],
            [LONG_IDS[0], "complete", "0"]]  # newest first, ids whole
        assert "model, prompts, probes, created left out at 80 columns" in " ".join(out.split())


def test_runs_list_keeps_columns_while_they_fit(capsys, tmp_path, narrow, monkeypatch):
    _fake_run(tmp_path, "smollm2-135m-natural-3f2a1b9c", "2026-11-30T23:00:05+00:00")
    code, out, _ = cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert code == 0 and max(map(len, out.splitlines())) <= 80, out
    assert out.splitlines()[0].split() == ["run", "id", "status", "records", "created"]
    assert out.splitlines()[1].split() == ["smollm2-135m-natural-3f2a1b9c", "complete", "0",
                                           "2026-11-30", "23:00"]
    assert "(model, prompts, probes left out at 80 columns" in out
    monkeypatch.setattr(common.out, "width", 160)
    code, out, _ = cli(capsys, "runs", "--runs-dir", str(tmp_path))
    assert out.splitlines()[0].split() == ["run", "id", "status", "model", "prompts", "probes",
                                           "records", "created"]
    assert "left out" not in out and max(map(len, out.splitlines())) <= 160


def test_runs_show_dedups_heads_names_the_key_and_takes_top(capsys, tmp_path, narrow):
    """Per-segment values of one head are listed once per segment, with the segment named."""
    values = [0.9, 0.1, 0.5, 0.5, 0.0, 0.0, 0.2, 0.2]  # (head 0 a, b), (1 a, b) ...
    seg = records("segment_mass", values, layer=18, head=[8, 8, 3, 3, 5, 5, 1, 1],
                  segment=["a", "b"] * 4)
    total = records("sink_score", [0.0, 0.0, 0.0, 0.7, 0.7], layer=18, head=[8, 8, 8, 2, 2])
    table = conform(pa.concat_tables([seg, total]), run_id=LONG_IDS[1], probe="attention_sink")
    _fake_run(tmp_path, LONG_IDS[1], "2026-11-30T23:00:00", table)
    code, out, err = cli(capsys, "runs", "show", LONG_IDS[1], "--runs-dir", str(tmp_path),
                         "--top", "2")
    assert code == 0, err
    flat = " ".join(out.split())
    assert ("segment_mass: highest L18H8 (segment=a)=0.900, L18H3 (segment=a)=0.500; lowest "
            "L18H5 (segment=b)=0.000, L18H5 (segment=a)=0.000") in flat
    assert "sink_score: highest L18H2=0.700, L18H8=0.000; lowest L18H8=0.000, L18H2=0.700" in flat
    assert "L18H8=0.000, L18H8=0.000" not in flat
    code, out, _ = cli(capsys, "runs", "--runs-dir", str(tmp_path), "show", LONG_IDS[1])
    assert code == 0  # the default: 3 per side
    assert ("L18H8 (segment=a)=0.900, L18H3 (segment=a)=0.500, L18H3 (segment=b)=0.500;"
            in " ".join(out.split()))


def test_the_option_column_stays_narrow():
    """Every option's name-and-metavar column fits beside its help at 80 columns."""
    longest = max(len(p.get_help_record(_ctx(path, c))[0]) for path, c in COMMANDS
                  for p in _options(c) if not p.secondary_opts)
    assert longest <= 30, longest
