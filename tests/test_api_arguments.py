"""The Python API checks its arguments with the CLI's rules and raises ``InputError`` with one
sentence, before a model loads (the model argument is a spec that would fail to load, so a check
that came too late would fail these tests with another error).

Before: ``probes="attention_entropy"`` was split into characters ("unknown probe(s) 'a', 't'
..."), as were ``params=``, ``methods=``, ``skip=`` and ``wb.circuits(m, "x.jsonl")``;
``wb.run(m, "some text")`` said "prompt file 'some text' does not exist"; ``None``, floats and
ints gave raw ``TypeError`` / ``AttributeError``; ``wb.atlas(figures=False)`` was a TypeError;
role thresholds through the API accepted ``-inf`` (every head a sink) and ``context=0.5``.
"""

from __future__ import annotations

import math

import pytest

import workbench as wb
from tests.conftest import write_jsonl
from workbench.errors import InputError

NO_MODEL = "no-such-model-for-this-test"


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Hello there, attention",
                                               "answer": " Mary", "distractor": " John"}])


@pytest.fixture(autouse=True)
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad argument")

    monkeypatch.setattr("workbench.models.load_model", refuse)
    monkeypatch.setattr("workbench.models.as_loaded", refuse)


def test_a_probe_name_is_one_probe_not_its_characters(prompts):
    """One name is taken as one probe: it reaches the model (refused here), not 'a', 't' ..."""
    with pytest.raises(AssertionError, match="model was loaded"):
        wb.run(NO_MODEL, prompts, probes="attention_entropy")


@pytest.mark.parametrize("kwargs, message", [
    ({"probes": None}, "probes=None"),
    ({"probes": 5}, "probes=5"),
    ({"probes": [3]}, "neither a probe name nor a probe"),
    ({"params": "attention_entropy.segment=x"}, "params="),
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": 2.5}, "batch_size=2.5"),
    ({"batch_size": 2**64}, "batch_size="),
    ({"batch_size": "8"}, "batch_size='8'"),
    ({"resume": "yes"}, "resume="),
    ({"run_id": 5}, "run_id=5"),
    ({"runs_dir": 5}, "runs_dir=5"),
])
def test_run_arguments(prompts, kwargs, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("+", r"\+")):
        wb.run(NO_MODEL, prompts, **kwargs)


def test_a_text_is_not_a_file_name():
    with pytest.raises(InputError, match="no such file.*for one text: \\[text\\]"):
        wb.run(NO_MODEL, "some text")
    with pytest.raises(InputError, match="got a int"):
        wb.prompts(5)


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": "attribution,bogus"}, "bogus"),
    ({"methods": 5}, "methods=5"),  # None: the level's default
    ({"n_random": 2**64}, "n_random="),
    ({"n_random": None}, "n_random="),
    ({"n_prompts": 0}, "n_prompts=0"),
    ({"mean_prompts": 0}, "mean_prompts=0"),
    ({"heads_per_forward": 0}, "heads_per_forward=0"),
    ({"spot_check": 2**64}, "spot_check="),
    ({"n_boot": 2**40}, "n_boot="),
    ({"batch_size": float("nan")}, "batch_size=nan"),
    ({"select": 5}, "select=5"),  # None: the level's default
    ({"level": "graph"}, "level='graph'"),
    ({"resume": True, "overwrite": True}, "contradict"),
])
def test_circuits_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        wb.circuits(NO_MODEL, "ioi", **kwargs)


def test_a_task_name_is_one_task(tmp_path):
    with pytest.raises(InputError, match="x.jsonl"):  # the whole name, not 'x', '.', 'j' ...
        wb.circuits(NO_MODEL, str(tmp_path / "x.jsonl"))
    with pytest.raises(InputError, match="tasks=5"):
        wb.circuits(NO_MODEL, 5)


@pytest.mark.parametrize("kwargs, message", [
    ({"generate": 2**64}, "generate="),
    ({"threshold": math.inf}, "threshold=inf"),
    ({"threshold": 0}, "threshold=0"),
    ({"probes": "attention_entropy,bogus"}, "bogus"),
    ({"params": ["x"]}, "params="),
    ({"sweep": 5}, "sweep=5"),
])
def test_intervene_arguments(prompts, kwargs, message):
    spec = [{"op": "scale_head", "heads": ["0.0"], "alpha": 0.5}]
    with pytest.raises(InputError, match=message):
        wb.intervene(NO_MODEL, prompts, spec, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"figure": False}, "unknown option.*figure"),
    ({"figures": "no"}, "figures="),
    ({"skip": 5}, "skip=5"),
    ({"n_prompts": -1}, "n_prompts=-1"),
    ({"circuit_size": 2**64}, "circuit_size="),
    ({"thresholds": {"sink": -math.inf}}, "sink=-inf"),
    ({"thresholds": {"context": 0.5}}, "whole number"),
    ({"thresholds": {"context": -3}}, "whole number"),
    ({"thresholds": {"nope": 1}}, "unknown role"),
    ({"thresholds": "sink=0.5"}, "thresholds="),
])
def test_atlas_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        wb.atlas(NO_MODEL, out=tmp_path / "atlas", **kwargs)


def test_atlas_takes_the_cli_flags(tmp_path, monkeypatch):
    """figures= and summary= are the CLI's --figures/--summary, not a TypeError."""
    import atlas

    monkeypatch.setattr(atlas, "build_atlas", lambda *a, **k: (_ for _ in ()).throw(
        InputError("reached build_atlas")))
    with pytest.raises(InputError, match="reached build_atlas"):
        wb.atlas(NO_MODEL, out=tmp_path / "atlas", figures=False, summary=False,
                 skip="context", tasks="ioi")


def test_cli_top_k_thresholds_are_whole_numbers(capsys):
    from workbench_cli.cli import main

    for value in ("0.5", "-1", "0"):
        with pytest.raises(SystemExit) as exit_:
            main(["atlas", "--model", NO_MODEL, "--threshold", f"context={value}"])
        assert exit_.value.code == 2
        assert "whole number" in capsys.readouterr().err


def test_open_run_of_a_non_path():
    with pytest.raises(InputError, match="open_run"):
        wb.open_run(5)
