""":class:`Results`: one run's records in memory, the object the Python API returns.

``Results[probe]`` is that table as a pandas DataFrame (record schema, :mod:`workbench.records`);
:meth:`Results.heads` is a (layer x head) table of a per-head summary metric, :meth:`Results.top`
the k highest heads, :meth:`Results.show` the app's and exporter's heatmap as a plotly figure.
This module imports no torch (a saved run opens without it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from workbench.errors import InputError


class Results:
    """A finished run: ``manifest`` (the ``run.json`` dict) and ``tables`` (name -> arrow table).

    Build one with :func:`workbench.run` (in memory) or :func:`workbench.open_run` (a run folder).
    """

    def __init__(self, manifest: dict, tables: dict[str, pa.Table], path: Path | None = None):
        self.manifest = manifest
        self.tables = dict(tables)
        self.path = path

    @classmethod
    def of(cls, run: Any) -> "Results":
        """The results of a finished :class:`~workbench.store.RunDir` or
        :class:`~workbench.inmemory.MemoryRun` (every table read into memory)."""
        return cls(run.read_manifest(), {n: run.read_table(n) for n in run.tables()}, run.path)

    @property
    def run_id(self) -> str:
        return self.manifest["run_id"]

    @property
    def probes(self) -> list[str]:
        """The record tables (probe or method names), in the order they were run."""
        named = [p["name"] for p in self.manifest.get("probes") or []]
        rest = sorted(set(self.tables) - set(named) - {"prompts", "tokens"})
        return [n for n in named if n in self.tables] + rest

    @property
    def units(self) -> dict[str, str]:
        """Metric -> unit, from the manifest."""
        return dict(self.manifest.get("units") or {})

    def __repr__(self) -> str:
        rows = {n: self.tables[n].num_rows for n in self.probes}
        return f"Results({self.run_id!r}, {rows})"

    def __getitem__(self, table: str) -> pd.DataFrame:
        """Table ``table`` (a probe's records, or ``prompts`` / ``tokens``) as a DataFrame.

        Raises:
            InputError: no such table (the message lists the run's tables).
        """
        return self.to_arrow(table).to_pandas()

    def to_arrow(self, table: str) -> pa.Table:
        """Table ``table`` as a pyarrow Table (the stored schema). Raises InputError if absent."""
        if table not in self.tables:
            raise InputError(f"run {self.run_id!r} has no table {table!r}; it has: "
                             f"{', '.join(sorted(self.tables))}")
        return self.tables[table]

    def to_polars(self, table: str) -> Any:
        """Table ``table`` as a polars DataFrame. Raises InputError if polars is not installed."""
        try:
            import polars
        except ImportError:
            raise InputError("to_polars needs polars (pip install polars); to_arrow() and "
                             "results[table] need nothing more") from None
        return polars.from_arrow(self.to_arrow(table))

    def _metric_rows(self, metric: str) -> pd.DataFrame:
        """The per-head summary rows of ``metric``: ``prompt_id`` null, ``layer`` and ``head`` set,
        over every record table that has that metric."""
        found = []
        for name in self.probes:
            t = self.tables[name]
            if metric in set(t.column("metric").unique().to_pylist()):
                df = t.filter(pa.compute.equal(t.column("metric"), metric)).to_pandas()
                found.append(df[df["prompt_id"].isna() & df["layer"].notna() & df["head"].notna()])
        if not found or all(f.empty for f in found):
            known = sorted({m for n in self.probes
                            for m in self.tables[n].column("metric").unique().to_pylist()})
            raise InputError(f"run {self.run_id!r} has no per-head summary of metric {metric!r}; "
                             f"its metrics: {', '.join(known)}")
        return pd.concat(found, ignore_index=True)

    def heads(self, metric: str, **where: Any) -> pd.DataFrame:
        """The (layer x head) table of a per-head summary ``metric`` (e.g. ``mean_sink_share_first``,
        ``mean_induction_mul``, ``mean_entropy_norm``): index ``layer``, columns ``head``, values in
        the metric's unit (``results.units[metric]``). ``where`` filters other record columns
        (``segment="passage"``, ``condition=...``); rows that still coincide are averaged.

        Raises:
            InputError: the run has no such per-head summary metric.
        """
        df = self._metric_rows(metric)
        for column, value in where.items():
            if column not in df.columns:
                raise InputError(f"heads(): {column!r} is not a record column")
            df = df[df[column] == value]
        table = df.pivot_table(index="layer", columns="head", values="value", aggfunc="mean")
        table.index, table.columns = table.index.astype(int), table.columns.astype(int)
        return table

    def top(self, metric: str, k: int = 5, **where: Any) -> pd.DataFrame:
        """The ``k`` heads with the highest ``metric`` (as in :meth:`heads`): columns ``layer``,
        ``head``, ``value``, highest first (ties: lower layer, then head, first).

        Raises:
            InputError: ``k`` below 1, or no such metric.
        """
        if k < 1:
            raise InputError(f"top(): k must be at least 1, got {k}")
        long = self.heads(metric, **where).stack().rename("value").reset_index()
        long = long.sort_values(["value", "layer", "head"], ascending=[False, True, True])
        return long.head(k).reset_index(drop=True)

    def show(self, metric: str, **where: Any) -> Any:
        """The layer x head heatmap of ``metric`` as a plotly figure (renders inline in a
        notebook): the app's and ``workbench figures``' own heatmap (:mod:`workbench.figures`).

        Raises:
            InputError: no such metric.
        """
        from workbench.figures.grid import head_heatmap

        rows = self._metric_rows(metric)
        model = self.manifest.get("model") or {}
        plot = head_heatmap(rows, metric, where=where or None, unit=self.units.get(metric),
                            n_layers=model.get("n_layers"), n_heads=model.get("n_heads"))
        return plot.figure()

    def save(self, runs_dir: Path | str) -> Path:
        """Write this run as the folder ``runs_dir/<run_id>`` (``run.json`` and one parquet per
        table, as the CLI writes them); :func:`workbench.open_run` reads it back.

        Raises:
            RunStateError: that folder exists.
        """
        from workbench.inmemory import MemoryRun

        run = MemoryRun(self.run_id, self.manifest)
        for name, table in self.tables.items():
            run.write_table(name, table)
        return run.save(runs_dir)


def open_run(path: Path | str) -> Results:
    """A run folder written by the CLI or :meth:`Results.save`, read into :class:`Results`.

    Raises:
        InputError: ``path`` is not a path. RunStateError: ``path`` is not a run folder (no valid
            ``run.json``), or a table of it cannot be read (truncated, empty, not parquet).
    """
    from workbench.errors import InputError
    from workbench.store import RunDir

    if not isinstance(path, (str, Path)):
        raise InputError(f"open_run({path!r}): expected a run folder's path")
    return Results.of(RunDir.open(Path(path)))
