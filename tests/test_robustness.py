"""Robustness of the CLI as a tester drives it: bad inputs, a second writer, SIGTERM, kills.

Bad inputs run through ONE subprocess: a small driver that calls ``workbench_cli.cli.main`` for each
case with its own stdout/stderr buffers and reports exit code, output and any escaped exception as
JSON. Each ``python -m workbench_cli`` costs ~6 s of imports on this machine, so 26 separate
processes would cost minutes; the driver pays the imports once and still exercises the real entry
point outside pytest (no capsys, no pytest exception handling). Exit codes, stderr and "no
traceback" are judged from what the driver saw; a couple of true ``python -m workbench_cli``
processes cover process-level behaviour (a usage error, SIGTERM, two concurrent writers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, write_jsonl
from workbench.store import RunDir, list_runs

DRIVER = r"""
import contextlib, io, json, sys, traceback
from workbench_cli.cli import main

results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    code, escaped = None, None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code
        except BaseException:
            escaped = traceback.format_exc()
    results.append({"code": code, "out": out.getvalue(), "err": err.getvalue(),
                    "escaped": escaped})
print(json.dumps(results))
"""
LOADING = ("loading model", "model ")  # progress lines of commands that load a model first


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}


def workbench(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "workbench_cli", *argv], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def cli(*argv: str) -> int:
    """``workbench_cli.cli.main`` in this process; its exit code."""
    from workbench_cli.cli import main

    try:
        main(list(argv))
    except SystemExit as exc:
        return exc.code
    return 0


def run_args(prompts: Path, runs: Path, *extra: str) -> list[str]:
    return ["run", "-m", "tiny-llama", "-p", str(prompts), "--runs-dir", str(runs), "--device",
            "cpu", "--no-progress", *extra]


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """Prompt, spec and sweep files the bad-input table uses."""
    good = write_jsonl(tmp_path / "good.jsonl", [
        {"id": "a", "text": "Then, Mary and John went to the store.", "answer": " Mary",
         "distractor": " John", "segments": {"names": [6, 19]}},
        {"id": "b", "text": "The quick brown fox jumps over the lazy dog.", "answer": " fox",
         "distractor": " dog", "segments": {"names": [4, 9]}}])
    huge = tmp_path / "huge.jsonl"
    huge.write_text(json.dumps({"id": "huge", "text": "word " * 2_000_000}) + "\n")  # 10 MB
    specs = {}
    for name, op in (("seed", {"op": "value_noise", "heads": ["0.0"], "sigma": 1, "seed": 2**70}),
                     ("alpha", {"op": "scale_head", "heads": ["0.0"], "alpha": float("nan")}),
                     ("temperature", {"op": "attention_temperature", "heads": ["0.0"],
                                      "temperature": 1e-300}),
                     ("scale", {"op": "scale_head", "heads": ["0.0"], "alpha": 1.0})):
        specs[name] = tmp_path / f"{name}.json"
        specs[name].write_text(json.dumps([op]))  # alpha: a bare NaN, as json.dumps writes it
    long = write_jsonl(tmp_path / "long.jsonl", [{"id": "ok", "text": "fine"},
                                                 {"id": "long", "text": "attention " * 400}])
    sweeps = {}
    for name, prompts in (("sweep", good), ("badsweep", long)):
        sweeps[name] = tmp_path / f"{name}.yaml"
        sweeps[name].write_text(json.dumps({
            "name": name, "models": [{"spec": "tiny-llama", "device": "cpu"}],
            "prompt_sets": [str(prompts)],
            "jobs": [{"kind": "probes", "probes": ["attention_entropy"]}]}))
    (tmp_path / "a_file").write_text("not a folder")
    return {"good": good, "huge": huge, "sweep": sweeps["sweep"],
            "badsweep": sweeps["badsweep"], **{f"spec_{k}": v for k, v in specs.items()}}


def bad_cases(files: dict[str, Path], base: Path) -> list[tuple[list[str], str, Path]]:
    """(argv, text the error line must contain, the runs folder that must stay without runs)."""
    good = files["good"]
    cases = []

    def run(*extra, runs=None, expect):
        runs = runs or base / f"runs{len(cases)}"
        cases.append((run_args(good, runs, *extra), expect, runs))

    def intervene(spec, *extra, expect):
        runs = base / f"runs{len(cases)}"
        cases.append((["intervene", "-m", "tiny-llama", "-p", str(good), "--spec", str(spec),
                       "--runs-dir", str(runs), "--device", "cpu", "--no-progress", *extra],
                      expect, runs))

    cases.append((["run", "--bogus"], "--bogus", base / "none"))
    cases.append((["run", "-m", "tiny-llama"], "--prompts", base / "none"))
    cases.append((["nosuchcmd"], "nosuchcmd", base / "none"))
    run("--batch-size", "abc", expect="'abc'")
    run("--batch-size", "0", expect="--batch-size")
    cases.append((["run", "--prompts", "a", "b"], "(b)", base / "none"))
    cases.append((["sweep", str(files["sweep"]), "--resume"], "--resume", base / "none"))
    run(runs=base / "a_file", expect="a_file")
    run(runs=Path("/proc/workbench-runs"), expect="/proc")
    run(runs=Path("/dev/null"), expect="/dev/null")
    run("--run-id", "x" * 300, expect="--run-id")
    run("--device", "mps", expect="'mps'")
    run("--resume", "--overwrite", expect="--resume and --overwrite")
    run("--probes", "attention_sink", "--param", "attention_sink.eps=NaN", expect="eps='NaN'")
    run("--probes", "attention_sink", "--param", "attention_sink.eps=-1", expect="eps='-1'")
    run("--probes", "attention_sink", "--param", "attention_sink.tau=Infinity",
        expect="tau='Infinity'")
    intervene(files["spec_seed"], expect="seed")
    intervene(files["spec_alpha"], expect="alpha")
    intervene(files["spec_temperature"], expect="temperature")
    intervene(files["spec_scale"], "--sweep", "alpha=0,nan,inf", expect="alpha=0,nan,inf")
    intervene(files["spec_scale"], "--threshold", "nan", expect="--threshold")
    run("--attention-mask", "decay:nan", expect="decay")
    cases.append((["circuits", "-m", "tiny-llama", "-t", "ioi", "--select", "threshold=nan",
                   "--runs-dir", str(base / "runs_circuits")], "threshold=nan",
                  base / "runs_circuits"))
    runs = base / "runs_huge"
    cases.append((run_args(files["huge"], runs), "prompt 'huge' has 10,000,000 characters", runs))
    cases.append((["sweep", str(files["badsweep"]), "--runs-dir", str(base / "runs_sweep")],
                  "prompt 'long'", base / "runs_sweep"))
    # --overwrite never deletes what is not a run (checked again in the test below)
    notes = base / "runs_notes"
    (notes / "notes").mkdir(parents=True)
    (notes / "notes" / "a.txt").write_text("x")
    run("--run-id", "notes", "--overwrite", runs=notes, expect="not a workbench run")
    (base / "runs_link").mkdir()
    (base / "runs_link" / "link").symlink_to(notes / "notes", target_is_directory=True)
    run("--run-id", "link", "--overwrite", runs=base / "runs_link", expect="symbolic link")
    return cases


def test_bad_inputs_give_one_line_exit_2_and_no_run(files, tmp_path):
    cases = bad_cases(files, tmp_path)
    proc = subprocess.run([sys.executable, "-c", DRIVER, json.dumps([c[0] for c in cases])],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    problems = []
    for (argv, expect, runs), got in zip(cases, results):
        lines = [line for line in got["err"].splitlines() if line.strip()]
        errors = [line for line in lines if not line.startswith(LOADING)]
        ok = (got["code"] == 2 and got["escaped"] is None and "Traceback" not in got["err"]
              and len(errors) == 1 and errors[0].startswith("error: ") and expect in errors[0])
        left = [p.name for p in runs.iterdir() if not p.name.startswith(".")] \
            if runs.is_dir() else []
        if runs.name in ("runs_notes", "runs_link"):  # the folder of notes, untouched
            left = [] if (tmp_path / "runs_notes" / "notes" / "a.txt").exists() \
                else ["a.txt deleted"]
        if not ok or left:
            problems.append(f"{argv[:1] + argv[-3:]}: code {got['code']}, stderr {lines}, "
                            f"escaped {got['escaped']}, left {left}")
    assert not problems, "\n".join(problems)


def test_overwrite_deletes_only_runs(tmp_path, capsys):
    """`--runs-dir R --run-id runs --overwrite` used to delete every run in R/runs: refused now;
    overwriting a real run still works."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Hello there, attention"}])
    runs = tmp_path / "R" / "runs"
    assert cli(*run_args(prompts, runs, "--run-id", "r1")) == 0
    assert cli(*run_args(prompts, tmp_path / "R", "--run-id", "runs", "--overwrite")) == 2
    assert "--overwrite deletes only run folders" in capsys.readouterr().err
    assert (runs / "r1" / "attention_entropy.parquet").exists()  # the runs survived
    assert cli(*run_args(prompts, runs, "--run-id", "r1", "--overwrite")) == 0


def slow_run(prompts: Path, runs: Path, *extra: str, delay: float = 0.5) -> subprocess.Popen:
    """A real ``workbench run`` whose batches take ``delay`` s more each (so it can be caught)."""
    code = ("import time, sys; from workbench import store; orig = store.RunDir.write_batch\n"
            f"def slow(self, i, t):\n    orig(self, i, t); time.sleep({delay})\n"
            "store.RunDir.write_batch = slow\nfrom workbench_cli.cli import main\nmain(sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, *run_args(prompts, runs, *extra)],
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def many(tmp_path: Path, n: int = 12) -> Path:
    return write_jsonl(tmp_path / "many.jsonl", [
        {"id": f"p{i:02d}",
         "text": f"Prompt number {i} talks about " + "attention heads " * (i % 5)}
        for i in range(n)])


def wait_for_batches(proc: subprocess.Popen, runs: Path, n: int) -> RunDir:
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list_runs(runs)
        if found and len(found[0][0].done_batches()) >= n:
            return found[0][0]
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.05)
    raise AssertionError("the run did not start")


def test_second_writer_is_refused_and_first_run_is_complete(tmp_path, capsys):
    prompts, runs = many(tmp_path), tmp_path / "runs"
    first = slow_run(prompts, runs, "-b", "2", "--run-id", "r")
    run = wait_for_batches(first, runs, 1)
    assert list_runs(runs)[0][1]["status"] == "running"  # its writer holds the lock
    for extra in (["--resume"], ["--overwrite"]):
        code = cli(*run_args(prompts, runs, "-b", "2", "--run-id", "r", *extra))
        lines = [line for line in capsys.readouterr().err.splitlines()
                 if line.strip() and not line.startswith(LOADING)]
        assert code == 2 and len(lines) == 1, lines
        assert "being written by another process (pid" in lines[0]
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    manifest = run.read_manifest()
    assert manifest["status"] == "complete" and manifest["writer"]["pid"] == first.pid
    assert manifest["batches"] == {"total": 6, "run_now": 6, "skipped_as_done": 0}
    table = pq.read_table(run.table_path("attention_entropy"))
    assert sorted(set(table["prompt_id"].drop_null().to_pylist())) == \
        [f"p{i:02d}" for i in range(12)]
    assert table.num_rows == manifest["tables"]["attention_entropy"]["rows"]


def test_sigterm_is_an_interrupt_and_resume_cleans_temporaries(tmp_path, capsys):
    prompts, runs = many(tmp_path), tmp_path / "runs"
    proc = slow_run(prompts, runs, "-b", "2", "--run-id", "r")
    run = wait_for_batches(proc, runs, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert run.read_manifest()["status"] == "interrupted"
    leftover = run.path / ".attention_entropy.parquet.x1y2z3.tmp"  # a kill during finalize
    leftover.write_bytes(b"half a table")
    assert cli(*run_args(prompts, runs, "-b", "2", "--run-id", "r", "--resume")) == 0
    assert not leftover.exists()
    assert not list(run.path.glob(".*.tmp"))


def test_killed_run_is_listed_interrupted(tmp_path, capsys):
    prompts, runs = many(tmp_path, 6), tmp_path / "runs"
    proc = slow_run(prompts, runs, "-b", "2", "--run-id", "r")
    run = wait_for_batches(proc, runs, 1)
    proc.kill()
    proc.communicate()
    assert json.loads(run.manifest_path.read_text())["status"] == "running"
    capsys.readouterr()
    assert list_runs(runs)[0][1]["status"] == "interrupted"
    assert cli("runs", "--runs-dir", str(runs)) == 0
    assert "interrupt" in capsys.readouterr().out  # the column may be cut to "interrupte…"
    assert cli("runs", "--runs-dir", str(runs), "show", "r") == 0
    assert "status: interrupted" in capsys.readouterr().out


def test_malformed_manifests_are_unreadable_not_crashes(tmp_path, capsys):
    """`workbench runs` lists malformed run.json files as unreadable and keeps the rest; `runs
    show` and `run --resume` on one give one line and exit 2."""
    from workbench.store import atomic_write_json

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Hello there, attention"}])
    runs = tmp_path / "runs"
    assert cli(*run_args(prompts, runs, "--run-id", "good")) == 0
    good = json.loads((runs / "good" / "run.json").read_text())
    for name, change in (("created5", {"created": 5}), ("model", {"model": "x"}),
                         ("tables", {"tables": None})):
        atomic_write_json(runs / name / "run.json", {**good, "run_id": name, **change})
    (runs / "notjson").mkdir()
    (runs / "notjson" / "run.json").write_text("{")
    capsys.readouterr()
    assert cli("runs", "--runs-dir", str(runs)) == 0
    out, err = capsys.readouterr()
    assert "good" in out and "Traceback" not in out + err
    assert sum("unreadable" in line for line in err.splitlines()) == 4
    for name in ("created5", "model", "tables", "notjson"):
        assert cli("runs", "--runs-dir", str(runs), "show", name) == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0]
    assert cli(*run_args(prompts, runs, "--run-id", "notjson", "--resume")) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
