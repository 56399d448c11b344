"""Running the typer app so that every failure is one line and an exit code, never a traceback.

Exit codes: 0 done; 2 bad input (a usage error, an unknown option or command, a bad value, an
:class:`~workbench.errors.InputError`); 1 any other failure (an ``OSError`` of the environment, a
full disk or a vanished folder, is one line naming the file); 130 interrupted (Ctrl-C or SIGTERM,
which is turned into the same ``KeyboardInterrupt`` so a run marks itself ``interrupted``; the
line says "rerun with --resume" only for commands that have it). Every error line is one line of
bounded length (a megabyte of input is cut in the middle).

Typer ships its own copies of click's exception classes (``typer._click.exceptions``) next to
click's; both families are handled.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.markup import escape

from workbench_cli.commands.common import err
from workbench.errors import WorkbenchError
from workbench.manifest import check_run_id, check_runs_dir

INTERRUPTED = 130


def _click_families() -> list:
    """``(ClickException, UsageError, Exit, Abort)`` of click and of typer's bundled copy."""
    families = []
    with contextlib.suppress(ImportError):
        import click

        families.append((click.ClickException, click.UsageError, click.exceptions.Exit,
                         click.exceptions.Abort))
    with contextlib.suppress(ImportError):
        import typer
        from typer._click import exceptions as tc  # typer >= 0.20 bundles click

        families.append((tc.ClickException, tc.UsageError, typer.Exit, typer.Abort))
    return families


MAX_LINE = 1000  # characters of an error line; a word longer than MAX_WORD is cut in the middle
MAX_WORD = 120


def _cut(word: str, limit: int) -> str:
    if len(word) <= limit:
        return word
    return f"{word[:limit * 2 // 3]}...{word[-(limit // 3 - 3):]} ({len(word):,} characters)"


def _one_line(text: str) -> str:
    """``text`` on one line, with runs of whitespace as one space, every word of more than
    :data:`MAX_WORD` characters cut in the middle and the whole at most :data:`MAX_LINE`
    characters (an error never echoes a megabyte of input)."""
    line = " ".join(_cut(word, MAX_WORD) for word in str(text).split())
    return _cut(line, MAX_LINE) if len(line) > MAX_LINE else line


def _resumable(app: Callable, argv: list[str] | None) -> bool:
    """Whether the command that ``argv`` invokes takes ``--resume`` (so the interrupted line may
    say "rerun with --resume")."""
    try:
        import typer

        command = typer.main.get_command(app)
        for word in list(sys.argv[1:] if argv is None else argv):
            sub = getattr(command, "commands", {}).get(word)
            if sub is not None:
                command = sub
        return any("--resume" in getattr(p, "opts", ()) for p in command.params)
    except Exception:  # noqa: BLE001 - only the wording of a message depends on it
        return False


def _interrupted(app: Callable, argv: list[str] | None) -> None:
    hint = ("rerun the same command with --resume to continue" if _resumable(app, argv)
            else "nothing was kept; rerun the same command")
    err.print(f"[yellow]interrupted[/]: {hint}", soft_wrap=True)
    sys.exit(INTERRUPTED)


def _print_error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(_one_line(message))}", highlight=False, soft_wrap=True)


def _given(argv: list[str] | None, param) -> str | None:
    """The value given on the command line for option ``param`` (``--opt v`` or ``--opt=v``)."""
    opts = set(getattr(param, "opts", ()) or ()) | set(getattr(param, "secondary_opts", ()) or ())
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if eq and name in opts:
            return value
        if arg in opts and i + 1 < len(args):
            return args[i + 1]
    return None


def usage_message(exc: Exception, argv: list[str] | None = None) -> str:
    """A click usage error as one line: the command it concerns, what was wrong and, for a bad
    option value, the value given."""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None and getattr(ctx, "command_path", "") else ""
    value = _given(argv, getattr(exc, "param", None))
    got = f" (got {value!r})" if value is not None and repr(value) not in message else ""
    return f"{where}{message}{got} (see --help)"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning as one line on standard error (``warning: ...``), not the
    ``file:line: UserWarning`` + source-line pair Python prints by default."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    err.print(f"[yellow]warning{escape(kind)}:[/] {escape(str(message))}", soft_wrap=True)


def run_guarded(app: Callable, argv: list[str] | None) -> None:
    """Run ``app(args=argv, standalone_mode=False)``; exit with the right code and one line
    (warnings too: :func:`_warning_line`)."""
    families = _click_families()
    try:
        with sigterm_as_interrupt(), warnings.catch_warnings():
            warnings.showwarning = _warning_line
            code = app(args=argv, prog_name="workbench", standalone_mode=False)
        if code == INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130) and returns it
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
    except WorkbenchError as e:
        _print_error(str(e))
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        _interrupted(app, argv)
    except OSError as e:  # the environment: a full disk, a read-only or vanished folder ...
        _print_error(os_error(e))
        sys.exit(1)
    except Exception as e:  # click / typer usage errors; anything else is a bug: re-raise
        for click_exc, usage, exit_, abort in families:
            if isinstance(e, exit_):
                sys.exit(e.exit_code)
            if isinstance(e, abort):
                if isinstance(e.__cause__, KeyboardInterrupt):
                    _interrupted(app, argv)
                err.print("[yellow]aborted[/]", soft_wrap=True)
                sys.exit(1)
            if isinstance(e, usage):
                if type(e).__name__ == "NoArgsIsHelpError":  # bare command: show its help
                    e.show()
                    sys.exit(2)
                _print_error(usage_message(e, argv))
                sys.exit(2)
            if isinstance(e, click_exc):
                _print_error(e.format_message())
                sys.exit(e.exit_code or 1)
        raise


def os_error(e: OSError) -> str:
    """An operating-system error as one sentence: what failed, on which file (``No space left
    on device: runs/x/a.parquet``)."""
    what = e.strerror or type(e).__name__
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    return f"{what}: {where}" if where else f"{what} ({e})"


def check_run_target(runs_dir: Path, run_id: str | None = None) -> None:
    """Reject a ``--runs-dir`` that cannot hold runs or a ``--run-id`` that is not a plain
    folder name, before a model is loaded or anything is written.

    Raises:
        InputError: see :func:`workbench.manifest.check_runs_dir` and ``check_run_id``.
    """
    check_runs_dir(runs_dir)
    check_run_id(run_id)
