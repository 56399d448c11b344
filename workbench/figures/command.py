"""What ``workbench figures`` does before it writes anything: check every option, find the browser,
and shape every figure of the run (so bad input fails before the first file is written)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workbench.errors import InputError
from workbench.figures.export import FORMATS, find_browser
from workbench.figures.lines import PROFILE_SCALES
from workbench.figures.plot import Plot
from workbench.figures.registry import FigureOptions, RunSource, run_figures
from workbench.figures.style import WIDTHS_IN
from workbench.heads import format_head, parse_heads
from workbench.inputs import check_output_dir
from workbench.store import RunDir


@dataclass(frozen=True)
class FigureJob:
    """What to write: the shaped figures and the checked options."""

    plots: list[Plot]
    out_dir: Path
    formats: tuple[str, ...]
    extra: dict  # run provenance for the sidecars
    notes: list[str]  # for the user (e.g. no attention patterns to draw)
    skipped: list[dict]  # figures not drawn (degenerate data), with the reason


def plan_figures(run_path: Path, out_dir: Path | None, formats: str | list[str], width: str,
                 dpi: int, tables: str | list[str] = "", prompts: list[str] | None = None,
                 heads: str | list[str] = "", *,
                 headline: dict[str, tuple[str, ...]] | None = None, all_metrics: bool = False,
                 profile: str = "linear") -> FigureJob:
    """Validate the command's options and shape the run's figures (``headline``: table -> the
    probe's headline metrics; see :class:`FigureOptions`).

    Raises:
        InputError: an unknown format, width, table, prompt id, head or profile scale, or a bad
            dpi.
        RunStateError: ``run_path`` is not a run directory. BrowserNotFound: no Chromium.
    """
    formats, tables, heads = (v if isinstance(v, str) else ",".join(v)  # the CLI gives lists
                              for v in (formats, tables, heads))
    fmt = tuple(dict.fromkeys(f.strip() for f in formats.split(",") if f.strip()))
    bad = [f for f in fmt if f not in FORMATS]
    if not fmt or bad:
        raise InputError(f"--format {formats!r}: expected a comma-separated subset of "
                         f"{', '.join(FORMATS)}")
    if width not in WIDTHS_IN:
        raise InputError(f"--width {width!r}: expected one of {', '.join(WIDTHS_IN)}")
    if not 10 <= dpi <= 2400:
        raise InputError(f"--dpi {dpi}: expected 10 to 2400")
    if profile not in PROFILE_SCALES:
        raise InputError(f"--profile {profile!r}: expected one of {', '.join(PROFILE_SCALES)}")
    run = RunDir.open(run_path)
    check_output_dir(out_dir or run.path / "figures", "--out")  # before any figure is drawn
    source = RunSource(run)
    options = FigureOptions(prompts=tuple(prompts or ()), heads=tuple(parse_heads(heads)),
                            tables=_check_tables(source, tables), headline=dict(headline or {}),
                            all_metrics=all_metrics, profile=profile)
    _check_patterns(source, options)
    find_browser()
    if source.manifest.get("kind") == "atlas":  # the atlas figure (its part runs have the rest)
        from workbench.figures.atlas import atlas_plot

        plots = [atlas_plot(run.path)]
    else:
        plots = run_figures(source, options)
    m = source.manifest
    extra = {"run": {"run_id": run.run_id, "model": m.get("model", {}).get("name"),
                     "prompts_sha256": m.get("prompts", {}).get("sha256"),
                     "git_commit": m.get("git", {}).get("commit")}}
    return FigureJob(plots, Path(out_dir) if out_dir else run.path / "figures", fmt, extra,
                     source.notes, source.skipped)


def _check_tables(source: RunSource, tables: str) -> tuple[str, ...]:
    have = source.record_tables()
    chosen = tuple(t.strip() for t in tables.split(",") if t.strip())
    missing = [t for t in chosen if t not in have]
    if missing:
        raise InputError(f"--tables: run {source.run.run_id!r} has no table(s) {missing}; it has "
                         f"{', '.join(have) or 'none'}")
    return chosen


def _check_patterns(source: RunSource, options: FigureOptions) -> None:
    tokens = source.tokens()
    known = set(tokens["prompt_id"].unique()) if tokens is not None else set()
    unknown = [p for p in options.prompts if p not in known]
    if unknown:
        raise InputError(f"--prompt: run {source.run.run_id!r} has no prompt(s) {unknown}")
    for layer, head in options.heads:
        if (source.n_layers and layer >= source.n_layers) or (source.n_heads and
                                                              head >= source.n_heads):
            raise InputError(f"--heads: head {format_head((layer, head))} is outside the model's "
                             f"{source.n_layers} layers x {source.n_heads} heads")
