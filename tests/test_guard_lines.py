"""Failures of the environment as one line: a browser that dies at start (``figures`` waited
forever: kaleido's browser thread failed and its error never reached the caller), a full disk or
vanished folder (``OSError``), a megabyte of input echoed in an error, the interrupted hint of a
command without ``--resume``."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.figure_fixture import make_run
from workbench_cli.cli import main

FIGURES = "from workbench_cli.cli import main; import sys; main(sys.argv[1:])"


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def test_a_browser_that_dies_at_start_is_one_line_not_a_hang(tmp_path):
    run = make_run(tmp_path / "runs")
    proc = subprocess.run([sys.executable, "-c", FIGURES, "figures", "--run", str(run.path),
                           "--no-progress", "--format", "svg"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "WORKBENCH_BROWSER": "/bin/false"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "did not start (Chromium at /bin/false" in lines[0], lines


def test_os_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """A full disk while a run writes: one line naming the file, exit 1, the run failed."""
    from tests.conftest import write_jsonl
    from workbench import store

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Hello there"}])

    def full(self, index, tables):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / "b.parquet"))

    monkeypatch.setattr(store.RunDir, "write_batch", full)
    code, lines = run_cli(capsys, "run", "-m", "tiny-llama", "--device", "cpu", "-p",
                          str(prompts), "--runs-dir", str(tmp_path / "runs"), "--no-progress",
                          "--run-id", "r")
    errors = [line for line in lines if line.startswith("error")]
    assert code == 1 and errors == [f"error: No space left on device: "
                                    f"{tmp_path / 'runs' / 'r' / 'b.parquet'}"]
    assert store.RunDir.open(tmp_path / "runs" / "r").read_manifest()["status"] == "failed"


def test_error_lines_are_bounded(tmp_path, capsys):
    code, lines = run_cli(capsys, "run", "-p", str(tmp_path / "p.jsonl"), "--run-id",
                          "x" * 1_000_000)
    assert code == 2 and len(lines) == 1 and len(lines[0]) < 1_100
    assert "1,000,000 characters" in lines[0] or "characters long" in lines[0]
    code, lines = run_cli(capsys, "runs", "show", "y" * 1_000_000)
    assert code == 2 and len(lines) == 1 and len(lines[0]) < 1_100, lines[0][:300]


@pytest.mark.parametrize("argv, resumable", [(["heads", "prune"], True), (["run"], True),
                                             (["figures"], False), (["graph"], False)])
def test_the_interrupted_hint_names_resume_only_where_it_exists(argv, resumable):
    from workbench_cli.cli import app
    from workbench_cli.commands.guard import _resumable

    assert _resumable(app, argv) is resumable


def test_the_app_refuses_system_folders_and_bad_hosts(tmp_path, capsys):
    """`app --runs-dir /proc` was served; `runs --runs-dir <file>` said "no runs", exit 0."""
    from workbench.errors import InputError
    from workbench_cli.cli import app_command

    with pytest.raises(InputError, match="inside /proc"):
        app_command(Path("/proc"), "127.0.0.1", 8501)
    with pytest.raises(InputError, match="--host"):
        app_command(tmp_path, "a host", 8501)
    (tmp_path / "a_file").write_text("x")
    code, lines = run_cli(capsys, "runs", "--runs-dir", str(tmp_path / "a_file"))
    assert code == 2 and "not a folder" in lines[0]


def test_a_warning_is_one_line(capsys):
    """The demo printed ``/work/main/atlas/role_tests.py:158: UserWarning: ...`` and then the
    source line; a command's warnings are one ``warning:`` line each."""
    import warnings

    import typer

    from workbench_cli.commands.guard import run_guarded

    app = typer.Typer()

    @app.command()
    def noisy() -> None:
        warnings.warn("ablation means: template 5 has 2 corrupted prompts")
        warnings.warn("old option", DeprecationWarning)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        run_guarded(app, [])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["warning: ablation means: template 5 has 2 corrupted prompts",
                   "warning (DeprecationWarning): old option"]
    assert warnings.showwarning is not run_guarded.__globals__["_warning_line"]  # restored
