"""The bounds of every numeric option (``workbench.bounds``), as a class: every integer or real
option of every command (found by click introspection, so options added later are covered) has
an entry, and nan / inf / 0 / -1 / 2**64 get exit 2 and one line at parse time, before a model
loads. Each case runs the CLI in this process (``workbench_cli.cli.main``), so the whole class costs
about a second.

Before the registry: ``circuits --n-random 2**64`` hung, ``heads prune --tolerance nan`` reported
"100% removable", ``heads learn-gates --lr inf`` wrote infinite gates, ``--heads-per-forward 0``
and ``--mean-prompts 0`` were accepted, ``sweep --gpus-per-worker -1`` was ignored.
"""

from __future__ import annotations

import inspect
import re
import typing
from pathlib import Path

import pytest
import typer

from tests.conftest import ROOT
from workbench.bounds import BOUNDS, Bound, check, echo
from workbench.errors import InputError
from workbench_cli.cli import app, main
from workbench_cli.commands.bounds import bounded

BAD = ("nan", "inf", "-inf", "0", "-1", str(2**64), "1e400", "0.5")
NUMERIC_METAVARS = {"N", "X", "K"}


def commands():
    """``(path, click command)`` of every command and group of the CLI."""
    def walk(cmd, path):
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}".strip())
    yield from walk(typer.main.get_command(app), "")


def _numeric(command, param) -> bool:
    if getattr(param, "metavar", None) in NUMERIC_METAVARS:
        return True
    callback = getattr(command, "callback", None)
    if callback is None or not getattr(param, "name", None):
        return False
    hints = typing.get_type_hints(inspect.unwrap(callback))
    hint = hints.get(param.name)
    args = set(typing.get_args(hint)) - {type(None)}
    return hint in (int, float) or bool(args) and args <= {int, float}


def numeric_options():
    for path, command in commands():
        for param in command.params:
            if getattr(param, "opts", None) and param.opts[0].startswith("-") \
                    and _numeric(command, param):
                yield path, command, param


def test_every_numeric_option_has_a_bound():
    options = list(numeric_options())
    assert len(options) >= 30  # the walk found the commands (a walk that finds none passes)
    missing = [f"{path} {param.opts[0]}" for path, _, param in options if bounded(param) is None]
    assert not missing, f"numeric options without an entry in workbench.bounds.BOUNDS: {missing}"


def test_every_count_has_an_upper_bound():
    assert all(b.high is not None for b in BOUNDS.values() if b.kind is int)
    assert all(b.low is not None and b.high is not None for b in BOUNDS.values())


def _expected(bound: Bound, text: str) -> bool:
    """Whether ``bound`` accepts the command-line ``text`` (as click would convert it)."""
    try:
        value = int(text) if bound.kind is int else float(text)
    except ValueError:
        return False
    try:
        bound.check(value, "x")
    except InputError:
        return False
    return True


CASES = [(path, param.opts[0], text) for path, _, param in numeric_options() for text in BAD
         if bounded(param) is None or not _expected(bounded(param), text)]


@pytest.mark.parametrize("path, option, text", CASES,
                         ids=[f"{p}{o}={t}" for p, o, t in CASES])
def test_bad_numbers_stop_at_parse_time(path, option, text, capsys, monkeypatch):
    def no_model(*args, **kwargs):  # pragma: no cover - reached only on a regression
        raise AssertionError("a model was loaded for a bad option value")

    monkeypatch.setattr("workbench.models.load_model", no_model)
    with pytest.raises(SystemExit) as exit_:
        main([*path.split(), f"{option}={text}"])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exit_.value.code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    assert option in lines[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1, 2**64, 0.5, "3", True])
def test_the_api_uses_the_same_bounds(value):
    with pytest.raises(InputError, match="n_random="):
        check("circuits", n_random=value)
    assert check("circuits", n_random=7, n_prompts=None) == {"n_random": 7, "n_prompts": None}


def test_error_lines_echo_bounded_input():
    assert len(echo("x" * 1_000_000)) < 120
    with pytest.raises(InputError) as err:
        BOUNDS["--top"].check(10**1000, "--top")
    assert len(str(err.value)) < 200


def test_the_docs_list_every_bound():
    """docs/getting-started.md has the table: each entry with its range, as the registry says."""
    text = Path(ROOT, "docs", "getting-started.md").read_text()
    for key, bound in BOUNDS.items():
        command, _, option = key.rpartition(" ")
        row = re.search(rf"^\| `{re.escape(key)}` \| (.+?) \|", text, re.M)
        assert row, f"docs/getting-started.md has no row for {key}"
        assert bound.describe() in row.group(1), (key, row.group(1))
