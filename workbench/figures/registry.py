"""Which figures a run gets: a registry from table (probe) name to its standard figure set, the
headline figures of a probe's table, and a generic set drawn from the shape of any record table.

A table's figures, in order of precedence:

* a registered set (``probe_sets.py``, ``circuit_sets.py``) draws the metrics it ``covers``;
* a probe's ``headline`` metrics (``Probe.headline``, given by the command in
  ``FigureOptions.headline`` or stored in ``run.json``) get the figures their shape allows:
  a layer x head heatmap, the metric by depth with its spread across heads, and the histogram over
  heads; a layer-level metric its line by depth. A table with a headline draws nothing else
  unless ``FigureOptions.all_metrics``;
* every other metric (tables without a headline) gets the generic figures of its shape:

  * (layer, head) values -> a layer x head heatmap;
  * layer values -> metric by depth (mean and spread across heads and prompts);
  * layer and key_pos -> a position profile by depth;
  * query_pos and key_pos -> attention patterns over the tokens of the chosen prompts and heads
    (default heads: the top of the run's first per-head headline metric);
  * conditions ``name=number`` -> a dose-response curve.

A metric whose rows differ in ``segment`` or ``condition`` gets one figure per combination
(``FigureOptions.max_variants`` at most). A figure whose data are constant or degenerate
(``checks.degenerate``) is not drawn: it is listed in ``RunSource.skipped`` with the reason (the
command writes them to ``index.json``). To give a probe its own set, add to ``probe_sets.py``::

    @register_figure_set("my_probe", covers=("my_metric",))
    def my_probe_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
        df = source.records(table, "my_metric")
        return [head_heatmap(df, "my_metric", **source.labels(table, "my_metric"))]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import pandas as pd
import pyarrow.compute as pc

from workbench.figures.checks import degenerate
from workbench.figures.grid import attention_pattern, head_heatmap
from workbench.figures.lines import by_depth, distribution, dose_response, position_profile
from workbench.figures.plot import Plot, describe
from workbench.figures.shapes import parse_sweep, select
from workbench.heads import Head
from workbench.store import META_TABLES, RunDir

MAX_PATTERN_HEADS = 4
_READ_COLUMNS = ["metric", "layer", "head", "prompt_id", "query_pos", "key_pos", "segment",
                 "condition", "dim", "value"]


@dataclass(frozen=True)
class FigureOptions:
    """Choices the figure sets take from the command line.

    Attributes:
        prompts: prompt ids whose attention patterns are drawn (default: the first prompt).
        heads: heads whose attention patterns are drawn (default: the 4 heads the run's first
            per-head headline metric ranks top, else the first 4 with patterns).
        tables: only these tables (default: every record table of the run).
        max_variants: (segment, condition) combinations drawn per metric and figure kind.
        headline: table -> the probe's headline metrics (``Probe.headline``, first = default);
            tables not listed use ``headline`` from ``run.json``'s probe entries, if any.
        all_metrics: also draw the generic figures of the metrics outside a table's headline.
        profile: position-profile y scale: ``linear``, ``log`` or ``no-key0`` (key 0 left out).
    """

    prompts: tuple[str, ...] = ()
    heads: tuple[Head, ...] = ()
    tables: tuple[str, ...] = ()
    max_variants: int = 8
    headline: dict[str, tuple[str, ...]] = field(default_factory=dict)
    all_metrics: bool = False
    profile: str = "linear"


class RunSource:
    """One run's tables as the figure sets read them: per-metric reads with filter pushdown
    (cached), units and labels from ``run.json``, the model's grid size, the tokens."""

    def __init__(self, run: RunDir):
        self.run = run
        self.manifest = run.read_manifest()
        self.units: dict[str, str] = self.manifest.get("units", {})
        model = self.manifest.get("model", {})
        self.n_layers: int | None = model.get("n_layers")
        self.n_heads: int | None = model.get("n_heads")
        self.notes: list[str] = []
        self.skipped: list[dict] = []  # figures not drawn: name, kind, table, metric, reason
        self.records = lru_cache(maxsize=4)(self._records)

    def record_tables(self) -> list[str]:
        return [t for t in self.run.tables() if t not in META_TABLES]

    def metrics(self, table: str) -> list[str]:
        listed = self.manifest.get("tables", {}).get(table, {}).get("metrics")
        if listed:
            return list(listed)
        column = self.run.read_table(table, columns=["metric"])["metric"]
        return sorted(pc.unique(column).to_pylist())

    def _records(self, table: str, metric: str) -> pd.DataFrame:
        """Every record of ``metric`` in ``table`` (record columns minus run_id/probe)."""
        return self.run.read_table(table, columns=_READ_COLUMNS,
                                   filters=[("metric", "=", metric)]).to_pandas()

    def tokens(self) -> pd.DataFrame | None:
        if "tokens" not in self.run.tables():
            return None
        return self.run.read_table("tokens", columns=["prompt_id", "pos", "token"]).to_pandas()

    def labels(self, table: str, metric: str, label: str | None = None) -> dict:
        """Keyword arguments every figure function takes: label, unit, table."""
        return {"label": label or metric, "unit": self.units.get(metric), "table": table}

    def grid(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads}

    def note(self, text: str) -> None:
        self.notes.append(text)

    def skip(self, plot: Plot, reason: str) -> None:
        """Record that ``plot`` is not drawn, and why."""
        self.skipped.append({"name": plot.name, "kind": plot.kind,
                             "table": plot.params.get("table"),
                             "metric": plot.params.get("metric"),
                             "description": describe(plot), "reason": reason})

    def headline(self, table: str, options: "FigureOptions") -> tuple[str, ...]:
        """The headline metrics of ``table`` that the run has (see FigureOptions.headline)."""
        declared = options.headline.get(table)
        if declared is None:
            for probe in self.manifest.get("probes", []):
                if isinstance(probe, dict) and probe.get("name") == table:
                    declared = tuple(probe.get("headline") or ())
        have = set(self.metrics(table)) if declared else set()
        return tuple(m for m in declared or () if m in have)

    def ranked_heads(self, options: "FigureOptions") -> tuple[list[Head], str | None]:
        """Heads by the run's first per-head headline metric, highest mean first, and
        ``"table.metric"`` (``([], None)`` when no table has a per-head headline metric)."""
        for table in self.record_tables():
            for metric in self.headline(table, options)[:1]:
                df = self.records(table, metric)
                df = df[df["layer"].notna() & df["head"].notna()]
                if df.empty:
                    continue
                means = df.groupby(["layer", "head"])["value"].mean().sort_values(
                    ascending=False, kind="stable")
                return [(int(layer), int(head)) for layer, head in means.index], \
                    f"{table}.{metric}"
        return [], None


FigureBuilder = Callable[[RunSource, str, FigureOptions], list[Plot]]


@dataclass(frozen=True)
class FigureSet:
    """A table's standard figures: ``build`` draws the metrics in ``covers``; ``patterns`` says
    that the set includes attention patterns when the table stores them (drawn by the generic
    figures of the metrics with query_pos and key_pos; a note when there are none)."""

    build: FigureBuilder
    covers: tuple[str, ...] = ()
    patterns: bool = False


FIGURE_SETS: dict[str, FigureSet] = {}


def register_figure_set(table: str, *, covers: tuple[str, ...] = (), patterns: bool = False
                        ) -> Callable[[FigureBuilder], FigureBuilder]:
    """Register ``build`` as the figure set of ``table`` (one per table; see :class:`FigureSet`).

    Raises:
        ValueError: ``table`` already has a set.
    """
    def register(build: FigureBuilder) -> FigureBuilder:
        if table in FIGURE_SETS:
            raise ValueError(f"table {table!r} already has a figure set")
        FIGURE_SETS[table] = FigureSet(build=build, covers=tuple(covers), patterns=patterns)
        return build
    return register


@dataclass(frozen=True)
class MetricShape:
    """Which coordinates a metric's records carry, and the variants to draw separately."""

    layer: bool
    head: bool
    query: bool
    key: bool
    variants: tuple[dict, ...] = ()  # where-filters over segment / condition (sweeps excluded)
    sweeps: tuple[dict, ...] = ()  # where-filters over segment for the name=number conditions


def metric_shape(df: pd.DataFrame) -> MetricShape:
    """The shape of one metric's records (``df``: rows of that metric)."""
    conditions = df["condition"].dropna().unique()
    swept = [c for c in conditions if parse_sweep(c)]
    is_sweep = df["condition"].isin(swept)
    return MetricShape(**_coordinates(df),
                       variants=_variants(df[~is_sweep], ["segment", "condition"]),
                       sweeps=_variants(df[is_sweep], ["segment"]))


def _coordinates(df: pd.DataFrame) -> dict[str, bool]:
    return {"layer": bool(df["layer"].notna().any()), "head": bool(df["head"].notna().any()),
            "query": bool(df["query_pos"].notna().any()),
            "key": bool(df["key_pos"].notna().any())}


def _variants(df: pd.DataFrame, columns: list[str]) -> tuple[dict, ...]:
    if df.empty:
        return ()
    varying = [c for c in columns if df[c].notna().any()]
    if not varying:
        return ({},)
    combos = df[varying].drop_duplicates().astype(object)
    combos = combos.where(combos.notna(), None).sort_values(varying, na_position="first")
    return tuple({c: row[c] for c in varying} for _, row in combos.iterrows())


def generic_figures(source: RunSource, table: str, metric: str, options: FigureOptions
                    ) -> list[Plot]:
    """The figures ``metric``'s shape allows (see the module docstring)."""
    df = source.records(table, metric)
    shape = metric_shape(df)
    common = source.labels(table, metric)
    plots = []
    for where in shape.variants[:options.max_variants]:
        has = _coordinates(select(df, metric, where))
        if has["head"]:
            plots.append(head_heatmap(df, metric, where=where, **source.grid(), **common))
        if has["layer"]:
            plots.append(by_depth(df, metric, where=where, **common))
        if has["layer"] and has["key"]:
            plots.append(position_profile(df, metric, where=where, n_layers=source.n_layers,
                                          scale=options.profile, **common))
        if has["query"] and has["key"]:
            plots.extend(pattern_figures(source, table, metric, options, where))
    if len(shape.variants) > options.max_variants:
        source.note(f"{table}.{metric}: {len(shape.variants)} segment/condition variants, drew "
                    f"the first {options.max_variants}")
    for where in shape.sweeps[:options.max_variants]:
        plots.append(dose_response(df, metric, where=where, **common))
    return plots


def pattern_figures(source: RunSource, table: str, metric: str, options: FigureOptions,
                    where: dict | None = None) -> list[Plot]:
    """Attention patterns of ``metric`` (rows matching ``where``) for the chosen prompts and heads
    (see FigureOptions); none when the run has no tokens table or the metric no such rows."""
    df = source.records(table, metric)
    tokens = source.tokens()
    try:
        rows = select(df, metric, where, need=("query_pos", "key_pos", "layer", "head"))
    except ValueError:
        return []
    if tokens is None:
        return []
    prompts = list(options.prompts) or sorted(rows["prompt_id"].dropna().unique())[:1]
    ranked, ranked_by = ([], None) if options.heads else source.ranked_heads(options)
    plots = []
    for prompt_id in prompts:
        present = rows[rows["prompt_id"] == prompt_id][["layer", "head"]].drop_duplicates()
        have = sorted((int(r.layer), int(r.head)) for r in present.itertuples())
        if options.heads:
            heads, chosen = [h for h in options.heads if h in have], "--heads"
        elif ranked and set(ranked) & set(have):
            heads = [h for h in ranked if h in set(have)][:MAX_PATTERN_HEADS]
            chosen = f"top {len(heads)} by {ranked_by}"
        else:
            heads, chosen = have[:MAX_PATTERN_HEADS], "first heads stored (no headline ranking)"
        for layer, head in heads:
            plot = attention_pattern(df, tokens, metric, prompt_id, layer, head, where=where,
                                     **source.labels(table, metric))
            plot.params["heads_chosen_by"] = chosen
            plots.append(plot)
    return plots


def headline_figures(source: RunSource, table: str, metrics: tuple[str, ...],
                     options: FigureOptions) -> list[Plot]:
    """The figures of a probe's headline ``metrics`` (see the module docstring)."""
    plots = []
    for metric in metrics:
        df = source.records(table, metric)
        common = source.labels(table, metric)
        shape = metric_shape(df)
        for where in shape.variants[:options.max_variants]:
            has = _coordinates(select(df, metric, where))
            if has["head"]:
                plots += [head_heatmap(df, metric, where=where, **source.grid(), **common),
                          by_depth(df, metric, where=where, **common),
                          distribution(df, metric, where=where, over="heads", **common)]
            elif has["layer"]:
                plots.append(by_depth(df, metric, where=where, **common))
    return plots


def table_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """A table's registered figure set, its headline figures and (tables without a headline, or
    with ``options.all_metrics``) the generic figures of every other metric, minus the
    degenerate ones (recorded in ``source.skipped``); a note when no pattern could be drawn
    although the set includes patterns or the options ask for some."""
    figure_set = FIGURE_SETS.get(table)
    plots = figure_set.build(source, table, options) if figure_set else []
    covered = set(figure_set.covers if figure_set else ())
    headline = tuple(m for m in source.headline(table, options) if m not in covered)
    plots += headline_figures(source, table, headline, options)
    covered |= set(headline)
    if not source.headline(table, options) or options.all_metrics:
        for metric in source.metrics(table):
            if metric not in covered:
                plots.extend(generic_figures(source, table, metric, options))
    for plot in plots:
        plot.params.setdefault("table", table)
    kept = []
    for plot in plots:
        reason = degenerate(plot)
        if reason:
            source.skip(plot, reason)
        else:
            kept.append(plot)
    plots = kept
    wanted = (figure_set and figure_set.patterns) or options.prompts or options.heads
    if wanted and not any(p.kind == "pattern" for p in plots):
        source.note(f"{table}: no attention-pattern records (no metric has query_pos and key_pos "
                    "for a head), so no pattern figures")
    return plots


def run_figures(source: RunSource, options: FigureOptions = FigureOptions()) -> list[Plot]:
    """Every figure of a run, table by table (names are unique).

    Raises:
        ValueError: two figures would share a file name.
    """
    tables = list(options.tables) or source.record_tables()
    plots = []
    for table in tables:
        plots.extend(table_figures(source, table, options))
        source.records.cache_clear()
    seen: dict[str, str] = {}
    for plot in plots:
        if plot.name in seen:
            raise ValueError(f"two figures are both named {plot.name!r} ({seen[plot.name]} and "
                             f"{plot.kind}); give one a name=")
        seen[plot.name] = plot.kind
    return plots
