"""A multi-panel paper figure from chosen figures of any runs: ``workbench figures compose SPEC``.

The spec (YAML, checked with pydantic; unknown keys are errors)::

    out: paper/figure2.pdf          # default: the spec's path with .pdf
    width: double                   # the page: single (3.5 in) or double (7.16 in) column
    columns: 2                      # panels per row
    png_dpi: 300                    # also write a PNG preview at this dpi (0: none)
    panels:
      - run: runs/natural           # a run directory ...
        figure: attention_sink.heatmap.sink_head_rate   # ... and a figure name (index.json)
      - sidecar: runs/circ/figures/faithfulness.json    # or any figure's JSON sidecar
        span: 2                     # columns this panel takes (default 1)

Every panel is drawn exactly as its own figure would be (at single-column width, or double when
its cell is a full double column), rendered to SVG and placed on one page scaled to its cell,
keeping its aspect ratio; each gets a bold letter a, b, c ... at its top left. The page is one
plotly figure exported like any other, so the PDF is vector (cells, text and lines; fonts
embedded).
"""

from __future__ import annotations

import base64
import string
from pathlib import Path
from typing import Literal

import plotly.graph_objects as go
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workbench.errors import InputError
from workbench.figures.export import export_session, render
from workbench.figures.plot import Plot, load_plot
from workbench.figures.style import FONT_FAMILY, INK, pt, width_px
from workbench.store import atomic_write_bytes

LETTER_PT = 10
LETTER_PX = 16  # strip above each panel for its letter
GAP_PX = 10  # between panels


class Panel(BaseModel):
    """One panel: a figure of a run (``run`` + ``figure``) or a figure's JSON sidecar."""

    model_config = ConfigDict(extra="forbid")
    run: Path | None = None
    """Run directory whose figure set holds ``figure``."""
    figure: str | None = None
    """Figure name as in the run's ``index.json`` (``attention_sink.heatmap.sink_head_rate``)."""
    sidecar: Path | None = None
    """A figure's ``<name>.json`` sidecar (any figure, e.g. one made by another command)."""
    span: int = Field(1, ge=1, le=4)
    """Columns this panel takes."""

    @model_validator(mode="after")
    def _one_source(self) -> "Panel":
        if (self.sidecar is None) == (self.run is None or self.figure is None):
            raise ValueError("give either run + figure, or sidecar")
        return self


class ComposeSpec(BaseModel):
    """A composed figure: the page width, the grid and the panels in reading order."""

    model_config = ConfigDict(extra="forbid")
    out: Path | None = None
    """Output PDF (default: the spec's path with ``.pdf``)."""
    width: Literal["single", "double"] = "double"
    """Page width: a single (3.5 in) or double (7.16 in) column."""
    columns: int = Field(2, ge=1, le=4)
    """Panels per row."""
    png_dpi: int = Field(300, ge=0, le=1200)
    """Resolution of the PNG preview written next to the PDF (0: none)."""
    panels: list[Panel] = Field(min_length=1, max_length=26)
    """The panels, lettered a, b, c ... in this order."""


def load_spec(path: Path) -> ComposeSpec:
    """Read and check a compose spec; relative paths in it are relative to the spec's folder.

    Raises:
        InputError: the file is missing, not YAML, or not a valid spec (one line naming the
            field and the problem).
    """
    from workbench.inputs import expect, parse_document, read_text

    path = Path(path)
    raw = parse_document(read_text(path, "compose spec"), path, "compose spec", fmt="yaml")
    if raw is not None:
        expect(raw, dict, path, "compose spec", "a mapping with out, width, columns, panels")
    try:
        spec = ComposeSpec.model_validate(raw if raw is not None else {})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "spec"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise InputError(f"{path}: {loc}: {first['msg']}{more}") from None
    base = path.parent
    for panel in spec.panels:
        for attr in ("run", "sidecar"):
            value = getattr(panel, attr)
            if value is not None and not value.is_absolute():
                setattr(panel, attr, base / value)
    if spec.out is not None and not spec.out.is_absolute():
        spec.out = base / spec.out
    for i, panel in enumerate(spec.panels):
        if panel.span > spec.columns:
            raise InputError(f"{path}: panels.{i}.span: {panel.span} is more than columns "
                             f"({spec.columns})")
    return spec


def panel_plots(spec: ComposeSpec, headline: dict | None = None) -> list[Plot]:
    """The plot of every panel (each run's figure set is shaped once).

    Raises:
        InputError: a run without the named figure (the message lists what it has), or a bad
            sidecar. RunStateError: ``run`` is not a run directory.
    """
    from workbench.figures.registry import FigureOptions, RunSource, run_figures
    from workbench.store import RunDir

    shaped: dict[Path, dict[str, Plot]] = {}
    plots = []
    for i, panel in enumerate(spec.panels):
        if panel.sidecar is not None:
            try:
                plots.append(load_plot(panel.sidecar))
            except (OSError, ValueError, KeyError) as e:
                raise InputError(f"panels.{i}.sidecar {panel.sidecar}: {e}") from None
            continue
        if panel.run not in shaped:
            source = RunSource(RunDir.open(panel.run))
            shaped[panel.run] = {p.name: p for p in run_figures(
                source, FigureOptions(headline=dict(headline or {})))}
        figures = shaped[panel.run]
        if panel.figure not in figures:
            raise InputError(f"panels.{i}.figure: run {panel.run} has no figure "
                             f"{panel.figure!r}; it has {', '.join(sorted(figures)) or 'none'}")
        plots.append(figures[panel.figure])
    return plots


def _layout(spec: ComposeSpec, figures: list[go.Figure]) -> tuple[list[tuple], int]:
    """(x, y, width, height) in page pixels for each panel, and the page height."""
    page = width_px(spec.width)
    cell = (page - GAP_PX * (spec.columns - 1)) / spec.columns
    boxes, col, y, row_h = [], 0, 0.0, 0.0
    for fig, panel in zip(figures, spec.panels):
        if col + panel.span > spec.columns:
            col, y, row_h = 0, y + row_h + GAP_PX, 0.0
        w = cell * panel.span + GAP_PX * (panel.span - 1)
        scale = min(1.0, w / fig.layout.width)
        h = fig.layout.height * scale
        boxes.append((col * (cell + GAP_PX), y + LETTER_PX, fig.layout.width * scale, h))
        row_h = max(row_h, h + LETTER_PX)
        col += panel.span
    return boxes, round(y + row_h)


def compose_figure(spec: ComposeSpec, plots: list[Plot]) -> go.Figure:
    """The page: every panel's SVG placed in its cell with its letter (inside a browser session,
    which :func:`compose` opens)."""
    figures = []
    cell = (width_px(spec.width) - GAP_PX * (spec.columns - 1)) / spec.columns
    for plot, panel in zip(plots, spec.panels):
        room = cell * panel.span + GAP_PX * (panel.span - 1)
        figures.append(plot.figure("double" if room >= width_px("double") - 1 else "single"))
    boxes, height = _layout(spec, figures)
    page = width_px(spec.width)
    fig = go.Figure(layout={
        "width": page, "height": height, "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
        "paper_bgcolor": "white", "plot_bgcolor": "white", "showlegend": False,
        "font": {"family": FONT_FAMILY, "color": INK},
        "xaxis": {"visible": False, "range": [0, page], "fixedrange": True},
        "yaxis": {"visible": False, "range": [height, 0], "fixedrange": True}})
    for i, (panel_fig, (x, y, w, h)) in enumerate(zip(figures, boxes)):
        svg = render(panel_fig, "svg")
        fig.add_layout_image(source="data:image/svg+xml;base64," + base64.b64encode(svg).decode(),
                             xref="x", yref="y", x=x, y=y, sizex=w, sizey=h, xanchor="left",
                             yanchor="top", sizing="stretch", layer="below")
        fig.add_annotation(text=f"<b>{string.ascii_lowercase[i]}</b>", xref="x", yref="y",
                           x=x, y=y - LETTER_PX, xanchor="left", yanchor="top",
                           showarrow=False, font={"size": pt(LETTER_PT)})
    return fig


def compose(spec: ComposeSpec, out: Path | None = None, *, spec_path: Path | None = None,
            headline: dict | None = None) -> list[Path]:
    """Write the composed PDF (and the PNG preview); returns the paths written.

    Raises:
        InputError: see :func:`panel_plots`. BrowserNotFound: no Chromium.
    """
    from workbench.inputs import check_output_file

    target = Path(out or spec.out or (spec_path or Path("figure.yaml")).with_suffix(".pdf"))
    check_output_file(target, "--out")  # before the panels are drawn
    plots = panel_plots(spec, headline)
    written = []
    with export_session():
        page = compose_figure(spec, plots)
        atomic_write_bytes(target, render(page, "pdf"))
        written.append(target)
        if spec.png_dpi:
            png = target.with_suffix(".png")
            atomic_write_bytes(png, render(page, "png", dpi=spec.png_dpi))
            written.append(png)
    return written


__all__ = ["ComposeSpec", "Panel", "compose", "compose_figure", "load_spec", "panel_plots"]
