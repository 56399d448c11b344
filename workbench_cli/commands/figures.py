"""``workbench figures``: a run's figure set (``--run``), and ``workbench figures compose SPEC``:
one multi-panel PDF from chosen figures of any runs (panel letters a, b, c ...).

The probes' headline metrics come from their classes (``Probe.headline``): this module is part of
the composition root, so it may import ``probes`` (inside the command bodies).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from workbench_cli.commands.common import PROGRESS, TYPER, err, list_option, out
from workbench.errors import InputError

figures_app = typer.Typer(
    **TYPER, invoke_without_command=True, no_args_is_help=False,
    help="Paper figures of a run (--run) or a composed multi-panel figure (compose SPEC).")

PROFILE_HELP = ("Position profiles: linear, log (log y axis) or no-key0 (key position 0 left out; "
                "the first token otherwise swamps the rest).")


def probe_headlines() -> dict[str, tuple[str, ...]]:
    """Table name -> headline metrics, from the probe classes (imports torch: about 4 s)."""
    from probes import PROBES

    return {name: tuple(cls.headline) for name, cls in PROBES.items()}


@figures_app.callback()
def figures_cmd(
    ctx: typer.Context,
    run: Optional[Path] = typer.Option(None, "--run", metavar="PATH",
                                       help="Run directory, e.g. runs/<run_id>."),
    out_dir: Optional[Path] = typer.Option(None, "--out", metavar="PATH",
                                           help="Output folder (default: <run>/figures)."),
    formats: list[str] = list_option(["pdf", "svg", "png"], "--format", metavar="FORMAT",
                                     help="pdf, svg, png."),
    width: str = typer.Option("single", "--width", metavar="WIDTH",
                              help="single (3.5 in) or double (7.16 in) column."),
    dpi: int = typer.Option(300, "--dpi", metavar="N", help="PNG resolution at print size."),
    tables: list[str] = list_option([], "--tables", metavar="TABLE",
                                    help="Only these tables (default: all)."),
    prompt: list[str] = list_option([], "--prompt", metavar="ID",
                                    help="Prompt id for attention patterns (default: the "
                                         "first)."),
    heads: list[str] = list_option([], "--heads", metavar="L.H",
                                   help="Heads for attention patterns, e.g. 9.6,3.1 (default: "
                                        "the top 4 of the run's first headline metric)."),
    all_metrics: bool = typer.Option(False, "--all-metrics", help="Also draw every metric outside "
                                     "the probes' headline metrics."),
    profile: str = typer.Option("linear", "--profile", metavar="SCALE", help=PROFILE_HELP),
    progress: bool = PROGRESS,
) -> None:
    """Write a run's figure set (PDF/SVG/PNG) with CSV + JSON sidecars and index.json; figures
    whose data are constant or degenerate are listed there with the reason instead."""
    if ctx.invoked_subcommand is not None:
        return
    if run is None:
        raise InputError("figures: give --run RUN_DIR (a run's figure set) or `compose SPEC.yaml`")
    from rich.progress import Progress

    from workbench.figures.command import plan_figures
    from workbench.figures.export import export_figures

    start = time.perf_counter()
    job = plan_figures(run, out_dir, formats, width, dpi, tables, prompt, heads,
                       headline=probe_headlines(), all_metrics=all_metrics, profile=profile)
    with Progress(console=err, transient=True, disable=not progress) as bar:
        task = bar.add_task("figures", total=len(job.plots))
        index = export_figures(job.plots, job.out_dir, formats=job.formats, width=width, dpi=dpi,
                               extra=job.extra, skipped=job.skipped,
                               on_written=lambda *_: bar.advance(task))
    for note in job.notes:
        err.print(f"note: {escape(note)}")
    skipped = f"; {len(job.skipped)} not drawn (degenerate data, see index.json)" \
        if job.skipped else ""
    out.print(f"[green]wrote[/] {len(job.plots)} figures ({len(job.plots) * (len(job.formats) + 2)}"
              f" files) to {escape(str(job.out_dir))} in {time.perf_counter() - start:.1f} s"
              f"{skipped}; list: {escape(str(index))}")


@figures_app.command("compose")
def compose_cmd(
    spec: Path = typer.Argument(..., metavar="SPEC",
                                help="YAML spec: out, width, columns, panels (run + figure "
                                     "name, or sidecar)."),
    out_path: Optional[Path] = typer.Option(None, "--out", metavar="PATH",
                                            help="Output PDF (default: the spec's "
                                                 "`out`, else SPEC with .pdf)."),
) -> None:
    """Compose one PDF (and a PNG preview) from chosen figures, lettered a, b, c ..."""
    from workbench.figures.compose import compose, load_spec

    from workbench.inputs import check_output_file

    start = time.perf_counter()
    if out_path is not None:
        check_output_file(out_path, "--out")  # before the spec's panels are read and drawn
    parsed = load_spec(spec)
    written = compose(parsed, out_path, spec_path=spec, headline=probe_headlines())
    out.print(f"[green]wrote[/] {len(parsed.panels)} panels to "
              f"{', '.join(escape(str(p)) for p in written)} in "
              f"{time.perf_counter() - start:.1f} s")
