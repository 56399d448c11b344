"""The resume contract of every command that writes a run (tiny-llama): a run killed (kill -9) or
stopped (SIGTERM) after its first finished phase, then rerun with ``--resume``, has tables equal
to an uninterrupted run's, and reuses the finished phases; SIGTERM marks it ``interrupted`` (exit
130, "rerun ... with --resume"); a plain rerun says to use ``--resume``.

Before: circuits, intervene and heads refused ``--resume``, SIGTERM marked their runs ``failed``
and after kill -9 a rerun said "already exists; use --overwrite" (all work lost).

The killed run is a real ``python -m workbench_cli`` process whose phases pause 60 s after each is
saved, so the signal always lands between phases; the resumed and the uninterrupted runs run in
this process.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import ROOT, write_jsonl
from tests.pruning_fixture import lm_prompt_file
from tests.test_robustness import env
from workbench.phases import Phases
from workbench.store import RunDir, list_runs
from workbench_cli.cli import main

PAUSED = """
import sys, time
from workbench import phases
save = phases.Phases.save
def paused(self, key, value):
    save(self, key, value)
    time.sleep(60)
phases.Phases.save = paused
from workbench_cli.cli import main
main(sys.argv[1:])
"""


def cli(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code
    return 0


def stop_after_first_phase(argv: list[str], runs: Path, how: int) -> subprocess.CompletedProcess:
    """Run ``argv`` in a process, send ``how`` once its first phase is saved, return it."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSED, *argv], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not list(runs.glob("*/.phases/*/value.json")):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(f"no phase was saved: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    proc.send_signal(how)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def tables(run: RunDir) -> dict[str, pd.DataFrame]:
    manifest = run.read_manifest()
    assert manifest["status"] == "complete"
    return {name: run.read_table(name).to_pandas() for name in manifest["tables"]}


def check_contract(argv: list[str], tmp_path: Path, how: int, monkeypatch, capsys, *,
                   reruns: bool = False) -> RunDir:
    """The contract for one command line (``argv`` without --runs-dir); ``reruns``: also a plain
    rerun (refused: use --resume) and a resume of the finished run (returned as it is), the
    same code for every command (:meth:`RunDir.create`), so one command checks them."""
    runs, clean = tmp_path / "runs", tmp_path / "clean"
    stopped = stop_after_first_phase([*argv, "--runs-dir", str(runs)], runs, how)
    [(run, manifest)] = list_runs(runs)
    assert manifest["status"] == "interrupted", (manifest, stopped.stderr[-2000:])
    if how == signal.SIGTERM:
        assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
        assert "--resume" in stopped.stderr.splitlines()[-1]
        assert json.loads(run.manifest_path.read_text())["status"] == "interrupted"
    if reruns:
        assert cli(*argv, "--runs-dir", str(runs)) == 2  # a plain rerun: use --resume
        assert "rerun with --resume" in capsys.readouterr().err
    reused: list[str] = []
    load = Phases.load
    monkeypatch.setattr(Phases, "load",
                        lambda self, key: reused.append(key) or load(self, key))
    assert cli(*argv, "--runs-dir", str(runs), "--resume") == 0, capsys.readouterr().err
    assert reused, "the resumed run computed every phase again"
    assert not (run.path / ".phases").exists()  # dropped once complete
    assert run.read_manifest()["resumed"] == 1
    monkeypatch.setattr(Phases, "load", load)
    assert cli(*argv, "--runs-dir", str(clean)) == 0
    resumed, uninterrupted = tables(run), tables(RunDir.open(clean / run.run_id))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        pd.testing.assert_frame_equal(resumed[name], uninterrupted[name], check_exact=True,
                                      obj=name)
    if reruns:
        capsys.readouterr()
        assert cli(*argv, "--runs-dir", str(runs), "--resume") == 0  # finished: as it is
        assert run.read_manifest()["resumed"] == 1
    return run


COMMON = ["--model", "tiny-llama", "--device", "cpu", "--no-progress", "--run-id", "r"]


def test_circuits_resume_after_kill_9(tmp_path, monkeypatch, capsys):
    task = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(4, seed=1))
    argv = ["circuits", *COMMON, "--task", str(task), "--method", "attribution,activation",
            "--n-random", "2", "--spot-check", "2", "--select", "top_k=3", "-b", "2"]
    check_contract(argv, tmp_path, signal.SIGKILL, monkeypatch, capsys)


def test_intervene_resume_after_sigterm(tmp_path, small_prompts, monkeypatch, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"op": "scale_head", "heads": ["1.0", "2.1"], "alpha": 0.5}]))
    argv = ["intervene", *COMMON, "--prompts", str(small_prompts), "--spec", str(spec),
            "--sweep", "alpha=0,2", "--probes", "attention_entropy", "-b", "1", "--generate",
            "2", "--n-generate", "1"]
    check_contract(argv, tmp_path, signal.SIGTERM, monkeypatch, capsys)


@pytest.mark.parametrize("command, extra, how", [
    ("prune", ["--seeds", "2", "--step", "0.5", "--ablation", "mean"], signal.SIGKILL),
    ("learn-gates", ["--lambda", "0.01,1", "--steps", "4"], signal.SIGTERM),
])
def test_heads_resume(tmp_path, monkeypatch, capsys, command, extra, how):
    prompts = lm_prompt_file(tmp_path / "p.jsonl")
    argv = ["heads", command, *COMMON, "--prompts", str(prompts), "-b", "2", *extra]
    run = check_contract(argv, tmp_path, how, monkeypatch, capsys)
    if command == "learn-gates":
        assert sorted(run.read_manifest()["specs"]) == ["0.01", "1.0"]
        assert all(Path(p).is_file() for p in run.read_manifest()["specs"].values())


def test_heads_importance_sigterm_is_interrupted(tmp_path, monkeypatch, capsys):
    prompts = lm_prompt_file(tmp_path / "p.jsonl")
    argv = ["heads", "importance", *COMMON, "--prompts", str(prompts), "-b", "2"]
    check_contract(argv, tmp_path, signal.SIGTERM, monkeypatch, capsys, reruns=True)


def test_a_changed_configuration_is_not_resumed(tmp_path, capsys):
    prompts = lm_prompt_file(tmp_path / "p.jsonl")
    argv = ["heads", "importance", *COMMON, "--prompts", str(prompts),
            "--runs-dir", str(tmp_path / "runs")]
    assert cli(*argv, "-b", "2") == 0
    assert cli(*argv, "-b", "3", "--resume") == 2
    assert "another configuration (batch_size differ)" in capsys.readouterr().err


def test_phase_values_round_trip_without_pickle(tmp_path):
    """What the phases hold comes back equal (types, dtypes, devices, NaN), and decoding builds
    only dataclasses of the workbench's packages."""
    import numpy as np
    import pyarrow as pa
    import torch

    from pruning.prune import Curve
    from workbench.store import RunDir

    run, _ = RunDir.create(tmp_path, "r", {"run_id": "r", "status": "running"}, resume=False,
                           overwrite=False, same_config=lambda s: None)
    value = {"curve": Curve("random-0", [0, 2], np.arange(6.0).reshape(2, 3)),
             (("t", 3), 15): [torch.arange(4, dtype=torch.bfloat16) / 3, (1, "a", None)],
             "table": pa.table({"x": [1.0, 2.0], "s": ["a", None]}), "nan": float("nan"),
             "scalar": np.float32(1.5), "objects": np.array([(0, 1), (2, 3)], dtype=object)}
    phases = Phases(run)
    phases.save("all", value)
    back = Phases(run).load("all")
    assert isinstance(back["curve"], Curve) and back["curve"].counts == [0, 2]
    assert np.array_equal(back["curve"].values, value["curve"].values)
    tensor, plain = back[(("t", 3), 15)]
    assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, value[(("t", 3), 15)][0])
    assert plain == (1, "a", None)
    assert back["table"].equals(value["table"]) and math.isnan(back["nan"])
    assert back["scalar"].dtype == np.float32 and back["scalar"] == 1.5
    assert back["objects"].shape == (2, 2) and back["objects"].tolist() == [[0, 1], [2, 3]]
    assert not list(run.path.rglob("*.pkl"))
    path = Phases(run).path("all") / "value.json"
    path.write_text(json.dumps({"__dataclass__": "subprocess:Popen", "fields": {}}))
    with pytest.raises(ValueError, match="outside the workbench's packages"):
        Phases(run).load("all")
    assert Phases(run).run("all", lambda: 7) == 7  # an unreadable phase is computed again
