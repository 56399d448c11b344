"""``workbench runs``, ``runs list`` and ``runs show RUN_ID``: the runs of a folder (one row each,
run ids never cut) and one run's manifest summary with its extreme heads per metric."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from workbench_cli.commands import atlas as atlas_commands
from workbench_cli.commands.common import RUNS_DIR, TYPER, at_least_one, err, out

runs_app = typer.Typer(**TYPER, help="List and show runs.", invoke_without_command=True)
RUNS_DIR_AFTER = typer.Option(None, "--runs-dir", metavar="PATH",
                              help="Folder holding run directories (also accepted before the "
                                   "subcommand).  [default: runs]")


@runs_app.callback()
def runs_main(ctx: typer.Context, runs_dir: Path = RUNS_DIR) -> None:
    """List runs (with no subcommand)."""
    ctx.obj = runs_dir
    if ctx.invoked_subcommand is None:
        _list_runs(runs_dir)


def _short_time(stamp: object) -> str:
    """``2026-11-30T23:01:02.5+00:00`` -> ``2026-11-30 23:01`` (anything else as given)."""
    text = str(stamp or "")
    return text[:16].replace("T", " ") if len(text) >= 16 and text[10:11] == "T" else text


COLUMNS = ("run id", "status", "model", "prompts", "probes", "records", "created")
OPTIONAL = ("prompts", "model", "probes", "created")  # left out in this order when too narrow
NO_WRAP = ("run id", "status", "records", "created")


def _row(run, m: dict) -> dict[str, str]:
    tables = (m.get("tables") or {}).values()
    return {"run id": run.run_id, "status": str(m.get("status", "?")),
            "model": str((m.get("model") or {}).get("name", "?")),
            "prompts": str((m.get("prompts") or {}).get("name", "?")),
            "probes": ", ".join(str(p.get("name")) for p in m.get("probes") or []),
            "records": f"{sum(t.get('rows', 0) for t in tables):,}",
            "created": _short_time(m.get("created"))}


def runs_columns(rows: list[dict[str, str]], width: int) -> list[str]:
    """The columns of the runs table that fit ``width``: run ids, status, records and times are
    never cut, the other columns wrap at spaces, and :data:`OPTIONAL` columns are left out while
    the longest words of the columns kept (plus two spaces between columns) would not fit."""
    def least(name: str) -> int:
        if name in NO_WRAP:
            return max(len(name), *(len(r[name]) for r in rows))
        return max(len(name), *(max(map(len, r[name].split()), default=0) for r in rows))

    kept = list(COLUMNS)
    for name in OPTIONAL:
        if sum(map(least, kept)) + 2 * (len(kept) - 1) <= width:
            break
        kept.remove(name)
    return kept


def _list_runs(runs_dir: Path) -> None:
    """The runs table, newest first (an unreadable run is listed and its error printed)."""
    from workbench.errors import InputError
    from workbench.store import list_runs

    if runs_dir.exists() and not runs_dir.is_dir():
        raise InputError(f"--runs-dir {runs_dir}: not a folder; give the folder holding runs")
    found = list_runs(runs_dir)
    if not found:
        out.print(f"no runs under {runs_dir}")
        return
    rows = [_row(run, m) for run, m in found]
    kept = runs_columns(rows, out.width)
    table = Table(box=None, pad_edge=False)
    for name in kept:
        table.add_column(name, no_wrap=name in NO_WRAP, overflow="fold",
                         justify="right" if name == "records" else "left")
    for row, (run, m) in zip(rows, found):  # list_runs: validated manifests or "unreadable"
        table.add_row(*[escape(row[name]) for name in kept])
        if m.get("status") in ("unreadable", "corrupted"):
            err.print(f"[yellow]{m['status']}[/]: {escape(run.run_id)}: "
                      f"{escape(str(m.get('error')))}", soft_wrap=True)
    out.print(table, soft_wrap=False)
    if len(kept) < len(COLUMNS):
        left_out = ", ".join(c for c in COLUMNS if c not in kept)
        out.print(f"({left_out} left out at {out.width} columns; `workbench runs show RUN_ID` "
                  "has them)", highlight=False, soft_wrap=False)


@runs_app.command("list")
def runs_list(ctx: typer.Context, runs_dir: Optional[Path] = RUNS_DIR_AFTER) -> None:
    """List runs, newest first."""
    _list_runs(runs_dir or ctx.obj)


@runs_app.command("show")
def runs_show(ctx: typer.Context,
              run_id: str = typer.Argument(..., metavar="RUN_ID", help="Run id or folder."),
              runs_dir: Optional[Path] = RUNS_DIR_AFTER,
              top: Optional[int] = typer.Option(None, "--top", metavar="N", callback=at_least_one,
                                                help="Heads listed per metric (highest and "
                                                     "lowest; default: 3, an atlas 5)."),
              as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")
              ) -> None:
    """Show a run's manifest summary and its headline numbers."""
    from workbench.summary import describe_run

    from workbench.manifest import check_run_id

    path = Path(run_id)
    if "/" not in run_id and run_id not in (".", ".."):  # a run id: a bounded plain name
        check_run_id(run_id, "RUN_ID")
    if not (path / "run.json").exists():
        path = Path(runs_dir or ctx.obj) / run_id
    from workbench.store import RunDir

    run = RunDir.open(path)
    if as_json:
        out.print_json(json.dumps(run.read_manifest(), default=str))
        return
    if run.read_manifest().get("kind") == "atlas":
        from atlas import open_atlas

        atlas_commands.print_atlas(open_atlas(run.path), **({"top": top} if top else {}))
        return
    describe_run(run, out, **({"top": top} if top else {}))
