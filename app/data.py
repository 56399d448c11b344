"""Reading run directories for the app: paths confined to the runs folder, parquet read with column
and row-filter pushdown, results cached by path + mtime. Imports no torch.

Every file the app opens goes through :class:`RunsRoot`: run ids and table names must be plain
names, and the resolved path (symlinks followed, ``..`` collapsed) must lie inside the runs folder
the app was started with; anything else raises :class:`OutsideRunsFolder`. Reads are keyed by a
:class:`TableRef` (path, mtime, size), so a rewritten table is read again: arrow tables are cached
with ``st.cache_resource`` (immutable, shared without copying), small derived frames with
``st.cache_data``. String columns are read dictionary-encoded (a million prompt ids decode slowly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import streamlit as st

from workbench.errors import InputError, RunStateError
from workbench.figures.shapes import parse_sweep
from workbench.manifest import read_manifest_file
from workbench.runlock import RUNNING, live_status
from workbench.store import MANIFEST, META_TABLES, parquet_rows, read_parquet

RUNS_ENV = "WORKBENCH_RUNS_DIR"
STRINGS = ("metric", "prompt_id", "segment", "condition")
COORDINATES = ("layer", "head", "prompt_id", "query_pos", "key_pos", "segment", "condition", "dim")
READ_COLUMNS = ("metric", *COORDINATES, "value")
Where = tuple[tuple[str, Any], ...]  # hashable equality filters; None matches null


class OutsideRunsFolder(InputError):
    """A path that is not a plain name or resolves outside the runs folder (``..``, a symlink)."""


class TableRef(NamedTuple):
    """A table file and its version (cache key): a rewrite changes ``mtime_ns`` or ``size``."""

    path: str
    mtime_ns: int
    size: int


@dataclass(frozen=True)
class RunEntry:
    """A folder of the runs folder: its manifest, or why it cannot be opened."""

    run_id: str
    manifest: dict | None
    problem: str | None = None


@dataclass(frozen=True)
class MetricInfo:
    """What one metric's records carry: row count, coordinates present, segment/condition
    variants (``where`` dicts; sweeps ``name=number`` separately)."""

    n_rows: int
    coords: frozenset[str]
    variants: tuple[dict, ...] = ()
    sweeps: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TableInfo:
    """A record table: rows and metrics (``problem`` when it is not a record table)."""

    n_rows: int
    metrics: dict[str, MetricInfo] = field(default_factory=dict)
    problem: str | None = None


def check_name(name: str, what: str) -> str:
    """``name`` if it is a plain folder or file name (no separator, not hidden, not ``..``).

    Raises:
        OutsideRunsFolder: anything else.
    """
    if (not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".")
            or any(c in name for c in ("/", "\\", "\x00"))):
        raise OutsideRunsFolder(f"{what} {name!r} is not a plain name inside the runs folder")
    return name


class RunsRoot:
    """The runs folder the app was given; every path is checked to stay inside it."""

    def __init__(self, root: str | Path):
        self.given = Path(root)
        self.root = Path(os.path.realpath(self.given))

    def exists(self) -> bool:
        return self.root.is_dir()

    def inside(self, path: Path, what: str) -> Path:
        """``path`` resolved, if it lies inside the runs folder.

        Raises:
            OutsideRunsFolder: it resolves outside (through ``..`` or a symlink).
        """
        resolved = Path(os.path.realpath(path))
        if resolved != self.root and self.root not in resolved.parents:
            raise OutsideRunsFolder(f"{what} resolves to {resolved}, outside the runs folder "
                                    f"{self.root}; refused")
        return resolved

    def run_dir(self, run_id: str) -> Path:
        """The folder of run ``run_id``. Raises OutsideRunsFolder, RunStateError (no run)."""
        path = self.inside(self.root / check_name(run_id, "run id"), f"run {run_id!r}")
        if not (path / MANIFEST).is_file():
            raise RunStateError(f"there is no run {run_id!r} in {self.root}")
        return path

    def file(self, run_id: str, name: str) -> Path:
        """A file of a run (``run.json``, ``<table>.parquet``), checked like the run folder."""
        folder = self.run_dir(run_id)
        return self.inside(folder / check_name(name, "file name"), f"{run_id}/{name}")

    def table(self, run_id: str, table: str) -> TableRef:
        """The current version of ``<table>.parquet`` of a run.

        Raises:
            OutsideRunsFolder, RunStateError: no such table.
        """
        path = self.file(run_id, f"{check_name(table, 'table')}.parquet")
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise RunStateError(f"run {run_id!r} has no table {table!r}") from None
        return TableRef(str(path), stat.st_mtime_ns, stat.st_size)

    def tables(self, run_id: str) -> list[str]:
        """Names of the run's parquet tables that resolve inside the runs folder, sorted."""
        refused = self.refused_tables(run_id)
        return [p.stem for p in sorted(self.run_dir(run_id).glob("*.parquet"))
                if p.stem not in refused]

    def refused_tables(self, run_id: str) -> dict[str, str]:
        """``{table: reason}`` for the run's parquet files that resolve outside the runs folder
        (a symlink out of it): listed as refused, never read."""
        out = {}
        for path in sorted(self.run_dir(run_id).glob("*.parquet")):
            try:
                self.inside(path, f"table {path.stem!r} of run {run_id!r}")
            except OutsideRunsFolder as err:
                out[path.stem] = str(err)
        return out

    def record_tables(self, run_id: str) -> list[str]:
        return [t for t in self.tables(run_id) if t not in META_TABLES]

    def runs(self) -> list[RunEntry]:
        """Every folder of the runs folder with a manifest, newest first; folders that cannot
        be opened (outside the runs folder, unreadable manifest) with the reason."""
        if not self.exists():
            return []
        stamps = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or not (child / MANIFEST).exists():
                continue
            manifest = child / MANIFEST
            try:
                stat = self.inside(manifest, f"run {child.name!r}").stat()
                stamps.append((child.name, str(manifest), stat.st_mtime_ns, None))
            except OutsideRunsFolder as err:
                stamps.append((child.name, "", 0, str(err)))
        return [_live(self.root / e.run_id, e) for e in _manifests(tuple(stamps))]

    def manifest(self, run_id: str) -> dict:
        for entry in self.runs():
            if entry.run_id == run_id and entry.manifest is not None:
                return entry.manifest
        self.run_dir(run_id)  # raises the precise error
        raise RunStateError(f"run {run_id!r}: its {MANIFEST} cannot be read")


@st.cache_data(max_entries=256, show_spinner=False)
def _manifests(stamps: tuple) -> list[RunEntry]:
    out = []
    for run_id, path, _, problem in stamps:
        if problem:
            out.append(RunEntry(run_id, None, problem))
            continue
        try:  # a regular file only (a named pipe would block), validated
            out.append(RunEntry(run_id, read_manifest_file(Path(path))))
        except (OSError, ValueError, RunStateError) as err:
            out.append(RunEntry(run_id, None, f"{MANIFEST} is not readable: {err}"))
    out.sort(key=lambda e: str((e.manifest or {}).get("created") or ""), reverse=True)
    return out


def _live(path: Path, entry: RunEntry) -> RunEntry:
    """``entry`` with a ``running`` status turned ``interrupted`` when its writer is gone
    (checked on every call: the lock changes without the manifest changing)."""
    m = entry.manifest
    if m is None or m.get("status") != RUNNING:
        return entry
    status = live_status(path, m)
    return entry if status == RUNNING else RunEntry(entry.run_id, {**m, "status": status})


def _filter(where: Where) -> Any:
    expr = None
    for column, value in where:
        term = pc.field(column).is_null() if value is None else pc.field(column) == value
        expr = term if expr is None else expr & term
    return expr


def scan(ref: TableRef, columns: tuple[str, ...], where: Where = ()) -> pa.Table:
    """Rows of a table matching ``where`` (pushed down to the parquet reader: row groups whose
    statistics exclude the filter are skipped), only ``columns``; string columns dictionary-
    encoded with one dictionary per column. Not cached (see :func:`read`).

    Raises:
        RunStateError: the file is not a readable parquet table with these columns.
    """
    table = read_parquet(Path(ref.path), columns=list(columns), filters=_filter(where),
                         read_dictionary=[c for c in columns if c in STRINGS])
    return table.unify_dictionaries()


@st.cache_resource(max_entries=16, ttl=900, show_spinner=False)
def read(ref: TableRef, columns: tuple[str, ...], where: Where = ()) -> pa.Table:
    """:func:`scan`, cached (16 reads for 15 minutes); the table is shared: never modify it."""
    return scan(ref, columns, where)


def frame(table: pa.Table) -> pd.DataFrame:
    """A pandas copy with dictionary columns decoded to plain strings."""
    arrays = [pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c
              for c in table.columns]
    return pa.table(arrays, names=table.column_names).to_pandas()


def records(ref: TableRef, metric: str, where: Where = ()) -> pd.DataFrame:
    """Every record of ``metric`` matching ``where`` with the columns the figure functions use."""
    return frame(read(ref, READ_COLUMNS, (("metric", metric), *where)))


Summary = dict[str, tuple[int, set, set]]  # metric -> (rows, coordinates, (segment, condition))


@st.cache_data(max_entries=64, show_spinner=False)
def table_info(ref: TableRef) -> TableInfo:
    """Per metric: rows, coordinates present and segment/condition variants, cached until the
    file changes. Row groups that hold one metric with constant (or null) segment and condition
    are summarised from their statistics alone (the store writes tables sorted by metric); only
    the others are read, and only their coordinate columns."""
    try:
        missing = [c for c in READ_COLUMNS if c not in pq.read_schema(ref.path).names]
        if missing:
            return TableInfo(0, problem=f"not a record table (no column(s) "
                                        f"{', '.join(missing)})")
        with pq.ParquetFile(ref.path, read_dictionary=list(STRINGS)) as parquet:
            summary, rest = _from_statistics(parquet)
            _add_rows(summary, parquet.read_row_groups(rest, columns=["metric", *COORDINATES]))
            n_rows = parquet.metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        return TableInfo(0, problem=f"not a readable parquet file: {err}")
    metrics = {}
    for name, (n, coords, combos) in sorted(summary.items()):
        frame_ = pd.DataFrame(sorted(combos, key=str), columns=["segment", "condition"])
        metrics[name] = MetricInfo(n, frozenset(coords), *_variants(frame_))
    return TableInfo(n_rows, metrics)


def _from_statistics(parquet: pq.ParquetFile) -> tuple[Summary, list[int]]:
    """The summary of the row groups whose statistics tell everything, and the other groups."""
    names = parquet.schema_arrow.names
    summary: Summary = {}
    rest = []
    for g in range(parquet.metadata.num_row_groups):
        group = parquet.metadata.row_group(g)
        stats = {c: group.column(names.index(c)).statistics for c in ("metric", *COORDINATES)}
        n = group.num_rows
        if not all(v is not None and v.has_null_count for v in stats.values()):
            rest.append(g)
            continue
        metric, segment, condition = (_constant(stats[c], n)
                                      for c in ("metric", "segment", "condition"))
        if not isinstance(metric, str) or segment is False or condition is False:
            rest.append(g)
            continue
        rows, coords, combos = summary.setdefault(metric, (0, set(), set()))
        coords |= {c for c in COORDINATES if stats[c].null_count < n}
        combos.add((segment, condition))
        summary[metric] = (rows + n, coords, combos)
    return summary, rest


def _constant(stats: Any, n: int) -> Any:
    """The one value of a string column in a row group: None when all null, False if unknown."""
    if stats.null_count == n:
        return None
    if stats.null_count == 0 and stats.has_min_max and stats.min == stats.max:
        return stats.min
    return False


def _add_rows(summary: Summary, table: pa.Table) -> None:
    """Add rows read from the row groups the statistics could not summarise."""
    if table.num_rows == 0:
        return
    table = table.unify_dictionaries()
    counts = table.group_by("metric").aggregate([(c, "count") for c in COORDINATES]
                                                + [("metric", "count")])
    combos = table.group_by(["metric", "segment", "condition"]).aggregate([])
    for row in counts.to_pylist():
        rows, coords, seen = summary.setdefault(row["metric"], (0, set(), set()))
        coords |= {c for c in COORDINATES if row[f"{c}_count"]}
        summary[row["metric"]] = (rows + row["metric_count"], coords, seen)
    for row in combos.to_pylist():
        summary[row["metric"]][2].add((row["segment"], row["condition"]))


def _variants(combos: pd.DataFrame) -> tuple[tuple[dict, ...], tuple[dict, ...]]:
    """(segment, condition) variants, and the segments of sweep conditions (``alpha=2``)."""
    combos = combos.astype(object).where(combos.notna(), None)
    swept = combos["condition"].map(lambda c: parse_sweep(c) is not None).astype(bool)
    plain = combos[~swept]
    varying = [c for c in ("segment", "condition") if plain[c].notna().any()]
    keys = {tuple((c, row[c]) for c in varying) for row in plain.to_dict("records")}
    order = lambda key: tuple((v is not None, str(v)) for _, v in key)  # noqa: E731
    sweeps = {(("segment", s),) if s is not None else () for s in combos.loc[swept, "segment"]}
    return (tuple(dict(k) for k in sorted(keys, key=order)),
            tuple(dict(k) for k in sorted(sweeps, key=order)))


@st.cache_data(max_entries=128, show_spinner=False)
def head_means(ref: TableRef, metric: str, where: Where = ()) -> pd.DataFrame:
    """Per (layer, head): mean ``value`` over every matching row, ``n_rows`` and ``n_prompts``
    (distinct non-null prompt ids), aggregated in pyarrow. Empty when no row has a head."""
    table = scan(ref, ("layer", "head", "prompt_id", "value"), (("metric", metric), *where))
    table = table.filter(pc.and_(pc.is_valid(table["layer"]), pc.is_valid(table["head"])))
    agg = table.group_by(["layer", "head"]).aggregate(
        [("value", "mean"), ("value", "count"), ("prompt_id", "count_distinct")])
    out = frame(agg).rename(columns={"value_mean": "value", "value_count": "n_rows",
                                     "prompt_id_count_distinct": "n_prompts"})
    return out.sort_values(["layer", "head"], ignore_index=True)


@st.cache_data(max_entries=64, show_spinner=False)
def unit_means(ref: TableRef, metric: str, where: Where = ()) -> pd.DataFrame:
    """Per (layer, head, prompt): the mean over the other coordinates (positions), with the
    ``metric`` and ``where`` columns, so that ``by_depth`` gives the same figure as on the raw
    records while pandas sees thousands of rows instead of a million."""
    table = scan(ref, ("layer", "head", "prompt_id", "value"), (("metric", metric), *where))
    table = table.filter(pc.is_valid(table["layer"]))
    agg = table.group_by(["layer", "head", "prompt_id"]).aggregate([("value", "mean")])
    out = frame(agg).rename(columns={"value_mean": "value"}).assign(metric=metric)
    for column, value in where:
        out[column] = value
    return out


def prompts(root: RunsRoot, run_id: str) -> pd.DataFrame | None:
    """The run's prompts table (``None`` when it has none)."""
    return _meta(root, run_id, "prompts")


def tokens(root: RunsRoot, run_id: str) -> pd.DataFrame | None:
    """The run's tokens table: prompt_id, pos, token (``None`` when it has none)."""
    return _meta(root, run_id, "tokens")


def _meta(root: RunsRoot, run_id: str, name: str) -> pd.DataFrame | None:
    if name not in root.tables(run_id):
        return None
    return _read_meta(root.table(run_id, name))


@st.cache_data(max_entries=32, show_spinner=False)
def _read_meta(ref: TableRef) -> pd.DataFrame:
    return read_parquet(Path(ref.path)).to_pandas()


def table_rows(ref: TableRef) -> int:
    """Rows of a parquet table from its footer (no data read)."""
    return parquet_rows(Path(ref.path))


def with_heads(ref: TableRef, metric: str, variants: tuple[dict, ...]) -> list[dict]:
    """The ``variants`` of ``metric`` that have at least one row with a layer and a head (a DLA
    table's ``condition = attn_bias`` rows have neither and cannot fill a head grid)."""
    out = []
    for variant in variants or ({},):
        rows = read(ref, ("layer", "head"), (("metric", metric), *where_of(variant)))
        valid = pc.and_(pc.is_valid(rows["layer"]), pc.is_valid(rows["head"]))
        if rows.num_rows and pc.any(valid).as_py():
            out.append(variant)
    return out


def where_of(variant: dict) -> Where:
    """A variant dict (``{"segment": "IO"}``) as a hashable filter."""
    return tuple(sorted(variant.items()))


__all__ = ["COORDINATES", "MetricInfo", "OutsideRunsFolder", "RunEntry", "RunsRoot", "TableInfo",
           "TableRef", "check_name", "frame", "head_means", "prompts", "read", "records", "scan",
           "table_info", "table_rows", "tokens", "unit_means", "where_of", "with_heads"]
