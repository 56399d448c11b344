"""``workbench atlas``: profile every head of a model in one command; ``workbench atlas compare``.

The work is in the ``atlas`` package (imported inside the commands: the core never imports it at
module level).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from workbench_cli.commands.common import (BATCH_SIZE, DEVICE, DTYPE, MODEL, PREPEND_BOS, PROGRESS,
                                       RECHECK, STRICT_PARITY, TYPER, _load, err, list_option, out)
from workbench.errors import InputError

DATA = Path(__file__).resolve().parents[2] / "data"
app = typer.Typer(**TYPER, invoke_without_command=True,
                  help="Profile every head: the probe battery and circuit tasks in one atlas.")


def _thresholds(items: list[str]) -> dict[str, float]:
    """``["sink=0.5"]`` -> ``{"sink": 0.5}``.

    Raises:
        InputError: an item not of the form role=number, or a non-finite number.
    """
    import math

    found = {}
    for item in items:
        role, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep or not role.strip() or not math.isfinite(number):
            raise InputError(f"--threshold {item!r} is not of the form role=number "
                             "(e.g. sink=0.5)")
        found[role.strip()] = number
    return check_thresholds(found)


def check_thresholds(thresholds: object, where: str = "--threshold") -> dict[str, float]:
    """Role thresholds as the CLI and ``wb.atlas(thresholds=...)`` take them: known roles, finite
    numbers, and for a ``top_k`` role (the N best-ranked heads) a whole number of heads >= 1.

    Raises:
        InputError: another type, an unknown role, a value that is not finite, a top-k count
            that is not a positive whole number (``context=0.5`` used to label 0 heads "top 0.5").
    """
    import math
    import numbers

    from atlas.roles import ROLES
    from workbench.bounds import MAX_HEADS, echo, mapping

    out = {}
    for role, value in mapping(thresholds, "thresholds").items():
        if role not in ROLES:
            raise InputError(f"{where} for unknown role {echo(role)}; roles: {', '.join(ROLES)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) \
                or not math.isfinite(value):
            raise InputError(f"{where} {role}={echo(value)}: expected a finite number")
        if ROLES[role].rule == "top_k" and not (float(value).is_integer()
                                                and 1 <= value <= MAX_HEADS):
            raise InputError(f"{where} {role}={value:g}: the {role} role labels the top N heads;"
                             f" N must be a whole number from 1 to {MAX_HEADS}")
        out[role] = float(value)
    return out


@app.callback()
def atlas(
    ctx: typer.Context,
    model: str = MODEL,
    out_dir: Optional[Path] = typer.Option(
        None, "--out", metavar="PATH",
        help="Atlas folder (default: runs/atlas-<model>); its part runs go "
             "beside it as <name>-natural, -repeated, -context, -circuits."),
    thorough: bool = typer.Option(False, "--thorough", help="Also activation patching (one "
                                  "forward per head; minutes), which then decides the circuits."),
    natural: Path = typer.Option(DATA / "natural.jsonl", "--natural", metavar="PATH",
                                 help="Natural text for entropy, sinks, massive activations and "
                                 "position bias."),
    repeated: Path = typer.Option(DATA / "repeated_tokens.jsonl", "--repeated", metavar="PATH",
                                  help="Repeated random tokens for the head types."),
    context: Path = typer.Option(DATA / "counterfactual_context.jsonl", "--context", metavar="PATH",
                                 help="Prompts with a 'passage' segment for head divergence."),
    task: list[str] = list_option(["ioi", "induction"], "--task", "-t", metavar="TASK",
                                  help="Circuit tasks (shipped name or JSONL file)."),
    n_prompts: int = typer.Option(32, "--n-prompts", metavar="N",
                                  help="Prompts per circuit task."),
    circuit_select: str = typer.Option(
        "faithfulness=0.8", "--circuit-select", metavar="RULE",
        help="How each task's circuit is chosen: faithfulness=F (the smallest faithful prefix of "
             "the ranking, refined), top_k=N, top_percent=P or threshold=S."),
    circuit_size: Optional[int] = typer.Option(None, "--circuit-size", metavar="N",
                                               help="Top-k circuits of N heads instead."),
    circuit_max_size: Optional[int] = typer.Option(
        None, "--circuit-max-size", metavar="N", help="The largest circuit the faithfulness "
        "search considers (default: every head)."),
    held_out: Optional[int] = typer.Option(
        None, "--held-out", metavar="N", help="Check each circuit on the N prompts after the "
        "scored ones (default: --n-prompts of them, or what the file has left)."),
    skip: list[str] = list_option([], "--skip", metavar="PART",
                                  help="Parts not to run: natural, repeated, context, circuits, "
                                       "composition, causal."),
    causal_draws: int = typer.Option(20, "--causal-draws", metavar="N",
                                     help="Random head sets of the same layers per role in the "
                                          "causal part's control (1-1000)."),
    causal_prompts: int = typer.Option(12, "--causal-prompts", metavar="N",
                                       help="Prompts per behaviour in the causal part (2-512)."),
    causal_seed: int = typer.Option(0, "--causal-seed", metavar="N",
                                    help="Seed of the control draws."),
    threshold: list[str] = typer.Option([], "--threshold", metavar="ROLE=X",
                                        help="Override a role's threshold (see atlas.json for "
                                             "roles); repeat for several."),
    batch_size: Optional[int] = BATCH_SIZE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    prepend_bos: Optional[bool] = PREPEND_BOS,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted atlas (or "
                                "reuse a finished one)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the atlas and its part "
                                   "runs again."),
    figures: bool = typer.Option(True, "--figures/--no-figures",
                                 help="Export the atlas figure (needs Chromium)."),
    summary: bool = typer.Option(True, "--summary/--no-summary",
                                 help="Print the roles, top heads and findings (also "
                                 "`workbench runs show <atlas>`)."),
    strict_parity: bool = STRICT_PARITY,
    recheck: bool = RECHECK,
    progress: bool = PROGRESS,
) -> None:
    """Run the probe battery and circuit tasks on a model and say what every head does."""
    if ctx.invoked_subcommand is not None:
        return
    from atlas import AtlasOptions, build_atlas

    slug = model.rstrip("/").split("/")[-1]
    options = AtlasOptions(out=out_dir or Path("runs") / f"atlas-{slug}", natural=natural,
                           repeated=repeated, context=context, tasks=tuple(task),
                           n_prompts=n_prompts, thorough=thorough, circuit_size=circuit_size,
                           circuit_select=circuit_select, circuit_max_size=circuit_max_size,
                           held_out=held_out,
                           thresholds=_thresholds(threshold), skip=tuple(skip),
                           causal_draws=causal_draws, causal_prompts=causal_prompts,
                           causal_seed=causal_seed,
                           batch_size=batch_size, resume=resume, overwrite=overwrite,
                           progress=progress, command=sys.argv)
    from atlas.roles import ROLES
    from workbench_cli.commands.guard import check_run_target

    check_run_target(options.out.parent, options.out.name)
    stray = sorted(set(options.thresholds) - set(ROLES))
    if stray:
        raise InputError(f"--threshold for unknown role(s) {', '.join(stray)}; roles: "
                         f"{', '.join(ROLES)}")

    def on_part(part: str, i: int, n: int) -> None:
        err.print(f"[bold]atlas part {i}/{n}[/]: {part}")

    result = build_atlas(lambda: _load(model, strict_parity, device=device, dtype=dtype,
                                       prepend_bos=prepend_bos, recheck=recheck),
                         options, model_spec=model, on_part=on_part)
    if summary:
        print_atlas(result)
    if figures:
        _export_figure(result)
    out.print(f"[green]complete[/]: {escape(str(result.path))} (atlas.parquet: "
              f"{len(result.heads)} heads; part runs: "
              f"{', '.join(r['run_id'] for r in result.doc['runs'].values())})")


def print_atlas(result, top: int = 5) -> None:
    """The console summary (fits 80 columns): per role the labelled heads, their counts per layer
    band and the rule; the top heads of each role; then the findings."""
    from atlas.findings import BANDS, band_ranges, role_summary
    from atlas.roles import rule_text

    model = result.doc["model"]
    out.print(f"[bold]atlas of {escape(str(model['name']))}[/]: {model['n_layers']} layers x "
              f"{model['n_heads']} heads ({escape(str(result.path))})")
    rules = {r["name"]: r for r in result.doc["roles"]}
    summary = role_summary(result.heads, result.n_layers)
    table = Table("role", "heads", *[f"L{r}" for r in band_ranges(result.n_layers)], "rule",
                  box=None, pad_edge=False)
    for row in summary.itertuples():
        table.add_row(row.label, f"{row.heads} ({row.share:.0%})",
                      *[str(getattr(row, b)) for b in BANDS], rule_text(rules[row.role]))
    out.print(table)
    out.print(f"[bold]top {top} heads per role[/] (score)")
    for row in summary.itertuples():
        out.print(f"  {row.label}: {row.top}")
    out.print("[bold]findings[/]")
    for line in result.doc["findings"]:
        out.print(f"- {escape(line)}")


def _export_figure(result) -> None:
    from workbench.figures import BrowserNotFound, atlas_grid
    from workbench.figures.export import export_figures

    plots = [atlas_grid(result.heads, result.doc["roles"])]
    if (result.path / "composition.parquet").is_file():  # the head graph (composition part)
        import pandas as pd

        from workbench.figures.composition import composition_graph

        plots.append(composition_graph(pd.read_parquet(result.path / "composition.parquet"),
                                       n_heads=result.n_heads))
    try:
        index = export_figures(plots, result.path / "figures", width="double",
                               extra={"atlas": str(result.path)})
    except BrowserNotFound as e:
        err.print(f"note: atlas figure not exported: {escape(str(e))}")
        return
    for plot in plots:
        out.print(f"figure: {escape(str(index.parent / plot.name))}.pdf (.svg, .png, sidecars)")


@app.command("ablate")
def ablate_cmd(
    atlas_dir: Path = typer.Argument(..., metavar="ATLAS", help="An atlas folder."),
    heads: list[str] = list_option(..., "--heads", metavar="HEADS",
                                   help="Heads to ablate (layer.head, e.g. 18.6,17.4)."),
    test: str = typer.Option(..., "--test", metavar="ROLE",
                             help="The role whose behaviour tests the heads (e.g. induction)."),
    draws: int = typer.Option(20, "--draws", metavar="N",
                              help="Random head sets of the same layers (1-1000)."),
    n_prompts: int = typer.Option(12, "--n-prompts", metavar="N",
                                  help="Prompts of the behaviour (2-512)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the control draws."),
    batch_size: Optional[int] = BATCH_SIZE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    strict_parity: bool = STRICT_PARITY,
) -> None:
    """Ablate any head set on a role's behaviour against random heads of the same layers (the
    atlas's causal test; nothing is written)."""
    from atlas import open_atlas
    from atlas.causal_part import test_heads
    from atlas.evidence import causal_lines
    from workbench.heads import parse_heads

    result = open_atlas(atlas_dir)
    spec = result.doc.get("model_spec", result.doc["model"]["name"])
    entry = test_heads(lambda: _load(spec, strict_parity, device=device, dtype=dtype), result,
                       parse_heads(heads), test, draws=draws, prompts=n_prompts, seed=seed,
                       batch_size=batch_size)
    from atlas.roles import ROLES

    label = f"heads {', '.join(entry['heads'])} (on the {ROLES[test].label}s' test)"
    for line in causal_lines({"causal": {test: entry}}, {test: label}):
        out.print(escape(line))
    for head, value in entry.get("head_effects", {}).items():
        out.print(f"  {escape(head)} alone: {value:.4g} {entry['unit']}")


@app.command("compare")
def compare_cmd(first: Path = typer.Argument(..., metavar="FIRST", help="An atlas folder."),
                second: Path = typer.Argument(..., metavar="SECOND",
                                              help="Another atlas folder.")) -> None:
    """Two atlases side by side; heads aligned by relative depth when the models differ."""
    from atlas import compare, open_atlas

    a, b = open_atlas(first), open_atlas(second)
    frame, lines = compare(a, b)
    for line in lines:
        err.print(f"[yellow]{escape(line)}[/]")
    table = Table(*frame.columns)
    for row in frame.itertuples(index=False):
        table.add_row(*[f"{v:.2f}" if isinstance(v, float) else str(v) for v in row])
    out.print(f"A = {escape(str(first))} ({a.doc['model']['name']}), B = {escape(str(second))} "
              f"({b.doc['model']['name']})")
    out.print(table)
