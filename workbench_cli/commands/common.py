"""What every command shares: the consoles, the help style, the common options, the list-option
convention, the batch-size rule, loading a model with its parity report. Command groups live in
modules of this package and register on the main app in :mod:`workbench_cli.cli`; they import the layers
above the core (``probes``, ``circuits``, ``atlas`` ...) only inside their command bodies.

Conventions (checked over every command by ``tests/test_cli_help.py``):

- help is click's plain layout (``TYPER``: no rich type column), which wraps at the terminal width
  instead of truncating; every option has help text and a word for a metavar (``PATH``, ``N``,
  ``MODEL`` ...), flags have none;
- an option taking several values is repeatable and also splits on commas
  (``--task ioi --task induction`` == ``--task ioi,induction``): :func:`list_option`;
  ``key=value`` options (``--param``, ``--threshold``) are repeated only (a value may hold commas);
- ``--batch-size`` defaults to the rule of ``workbench run``: chosen from free memory, 8 on the
  CPU (:func:`auto_batch_size`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperGroup

from workbench.errors import WorkbenchError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

class FullHelpGroup(TyperGroup):
    """A command group whose command list shows each command's first sentence whole (wrapped),
    where click cuts it to the width left and ends it with '...'; its commands' arguments show
    their metavar alone (``RUN_ID``, not ``RUN_ID <str>``)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from workbench_cli.commands.bounds import install

        install(self, self.name or "")  # numeric options: workbench.bounds, checked while parsing
        for name, command in self.commands.items():
            install(command, f"{self.name or ''} {name}")
            for param in command.params:
                if isinstance(param, TyperArgument) and param.metavar:
                    param.display_type_rich = lambda ctx: None  # typer has no switch for this

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, cmd.get_short_help_str(limit=1_000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Every typer app of the CLI: plain click help (wraps at the terminal width, no <type> column).
TYPER = {"add_completion": False, "rich_markup_mode": None, "cls": FullHelpGroup}
LIST_NOTE = "Repeat or comma-separate."


def split_list(values: Any) -> list[str]:
    """``["ioi,induction", " path "]`` -> ``["ioi", "induction", "path"]``; a string is split the
    same way; empty items are dropped."""
    items = [values] if isinstance(values, (str, Path)) else list(values or ())
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _as_paths(values: Any) -> list[Path]:
    return [Path(v) for v in split_list(values)]


def _as_floats(values: Any) -> list[float]:
    found = []
    for item in split_list(values):
        try:
            found.append(float(item))
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not a number") from None
    return found


def list_option(default: Any, *names: str, help: str, metavar: str, kind: type = str) -> Any:
    """A repeatable option that also splits on commas (the CLI's one list convention); the
    command receives a list of ``kind`` (``str``, ``Path`` or ``float``)."""
    convert = {str: split_list, Path: _as_paths, float: _as_floats}[kind]
    return typer.Option(default, *names, help=f"{help} {LIST_NOTE}", metavar=metavar,
                        callback=lambda value: convert(value))


def at_least_one(value: int | None) -> int | None:
    """Option callback: ``None`` (the default) or an integer of at least 1."""
    if value is not None and value < 1:
        raise typer.BadParameter("must be at least 1")
    return value


RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", metavar="PATH",
                        help="Folder holding run directories.")
MODEL = typer.Option("smollm2-135m", "--model", "-m", metavar="MODEL",
                     help="Registry name, local folder or Hugging Face id.")
DEVICE = typer.Option(None, "--device", metavar="DEVICE",
                      help="cpu, cuda, cuda:1 ... (default: auto).")
DTYPE = typer.Option(None, "--dtype", metavar="DTYPE",
                     help="float32, bfloat16, float16 (default: auto).")
PREPEND_BOS = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                           help="Put BOS before every prompt (default: what the tokenizer does).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run.")
STRICT_PARITY = typer.Option(False, "--strict-parity/--no-strict-parity",
                             help="Stop if bridge and HF logits disagree.")
RECHECK = typer.Option(False, "--recheck",
                       help="Run the load-time checks (logit parity with Hugging Face, causality) "
                            "again instead of reading their kept outcome for this model, dtype, "
                            "device and library versions.")
PROGRESS = typer.Option(True, "--progress/--no-progress",
                        help="Show progress bars on stderr.")
DEVICE_MAP = typer.Option(
    None, "--device-map", metavar="MAP", help="Hugging Face device map for a model larger than one "
    "GPU: auto, balanced, sequential (accelerate places the layers; not with --device).")
BATCH_SIZE = typer.Option(None, "--batch-size", "-b", metavar="N", callback=at_least_one,
                          help="Prompts per forward pass (default: chosen from free memory, 8 on "
                               "the CPU).")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted run: its finished parts "
                      "are reused, the result equals an uninterrupted run's (a finished run is "
                      "returned as it is).")
RUN_ID = typer.Option(None, "--run-id", metavar="NAME",
                      help="Run folder name (default: derived from the configuration, so reruns "
                           "find it).")


def check_resume(runs_dir: Path, run_id: str | None, resume: bool, overwrite: bool) -> None:
    """The checks every command that writes a run makes first: ``--resume`` with
    ``--overwrite``, a ``--runs-dir`` that cannot hold runs, a bad ``--run-id``, a named run that
    exists without ``--resume`` or ``--overwrite``.

    Raises:
        InputError, RunStateError: one of those (before the model loads).
    """
    from workbench.errors import InputError
    from workbench_cli.commands.guard import check_run_target

    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    check_run_target(runs_dir, run_id)
    if run_id is not None and not (resume or overwrite) and (Path(runs_dir) / run_id).exists():
        from workbench.errors import RunStateError

        raise RunStateError(f"run {run_id!r} already exists in {runs_dir}; rerun with --resume "
                            "to continue it or --overwrite to start again")


def auto_batch_size(batch_size: int | None, loaded, prompts: Iterable[str | int]) -> int:
    """``batch_size`` when given, else the rule of ``workbench run`` for ``prompts`` (texts, or
    token counts): :func:`workbench.memory.plan_batch` for the longest one with eager attention
    and logits, i.e. chosen from free memory, 8 on the CPU unless that does not fit."""
    if batch_size is not None:
        return batch_size
    from workbench.memory import plan_batch

    lengths = [p if isinstance(p, int) else len(loaded.tokenizer(p)["input_ids"]) for p in prompts]
    seq_len = max(lengths, default=1) + 1  # room for a BOS token
    return plan_batch(loaded, seq_len, eager=True, needs_logits=True).batch_size


def _load(spec: str, strict_parity: bool, **options):
    """Load a model (:func:`workbench.models.load_model` with ``options``), then report its
    parity check (a failed check stops the command with ``strict_parity``)."""
    from workbench.models import load_model
    from workbench.settings import resolve_device

    if options.get("device") not in (None, "", "auto"):
        resolve_device(options["device"])  # a bad --device: one line, before "loading model"
    err.print(f"loading model [bold]{spec}[/] ...")
    loaded = load_model(spec, **options)
    _report_parity(loaded, strict_parity)
    return loaded


def _report_parity(loaded, strict: bool) -> None:
    p = loaded.info.parity
    line = (f"model {loaded.info.name}: {loaded.info.n_layers} layers x {loaded.info.n_heads} heads,"
            f" {loaded.info.dtype} on {loaded.info.device}, loaded in {loaded.info.load_seconds} s;"
            f" parity vs Hugging Face: max |diff| {p.max_abs_diff:.2e} logits "
            f"({p.rel_diff:.1e} of the logit std, tolerance {p.tolerance:.0e})")
    if p.cached:
        line += f"; checked {p.checked}, kept in the check cache (--recheck reruns it)"
    if p.ok:
        err.print(line + " [green]ok[/]")
    elif strict:
        raise WorkbenchError(line + " - parity check FAILED (--strict-parity)")
    else:
        err.print(line + " [bold red]PARITY CHECK FAILED[/]: bridge and HF logits disagree")
