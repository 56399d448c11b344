"""A run kept in memory: the same interface as :class:`workbench.store.RunDir` (manifest, batch
parts, finished tables) with nothing written to disk. ``workbench.run.execute_run`` uses it when
``RunOptions.runs_dir`` is None (the Python API's default); the tables and the manifest are the
ones a run folder would hold, so :meth:`save` writes exactly what the CLI writes."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow as pa

from workbench.errors import RunStateError
from workbench.manifest import check_run_id


class MemoryRun:
    """One run's manifest and tables in memory. ``path`` is None; ``state`` is ``"new"``."""

    path = None

    def __init__(self, run_id: str, manifest: dict):
        check_run_id(run_id, "run id")
        self._run_id = run_id
        self.state = "new"
        self._manifest = copy.deepcopy(manifest)
        self._parts: dict[int, dict[str, pa.Table]] = {}
        self._tables: dict[str, pa.Table] = {}

    @property
    def run_id(self) -> str:
        return self._run_id

    # manifest
    def read_manifest(self) -> dict:
        return copy.deepcopy(self._manifest)

    def update_manifest(self, **changes: Any) -> dict:
        self._manifest.update(changes)
        return self.read_manifest()

    def release(self) -> None:
        """Nothing to release (no lock: no other process can see this run)."""

    # batch parts
    def batch_done(self, index: int) -> bool:
        return index in self._parts

    def write_batch(self, index: int, tables: dict[str, pa.Table]) -> None:
        self._parts[index] = dict(tables)

    def read_parts(self, name: str) -> list[pa.Table]:
        return [self._parts[i][name] for i in sorted(self._parts) if name in self._parts[i]]

    def part_table_names(self) -> list[str]:
        return sorted({n for tables in self._parts.values() for n in tables})

    def drop_parts(self) -> None:
        self._parts.clear()

    # tables
    def write_table(self, name: str, table: pa.Table) -> None:
        self._tables[name] = table

    def tables(self) -> list[str]:
        return sorted(self._tables)

    def read_table(self, name: str, columns: list[str] | None = None, filters: Any = None
                   ) -> pa.Table:
        """A finished table (``filters`` is not supported in memory: filter the result).

        Raises:
            RunStateError: the run has no table of that name.
        """
        if name not in self._tables:
            raise RunStateError(f"run {self._run_id!r} has no table {name!r} "
                                f"(it has: {', '.join(self.tables()) or 'none'})")
        if filters is not None:
            raise RunStateError("row filters need a run on disk; filter the returned table")
        table = self._tables[name]
        return table.select(columns) if columns else table

    def save(self, runs_dir: Path | str) -> Path:
        """Write the run folder ``runs_dir/<run_id>`` (manifest and parquet tables) as the CLI
        would, atomically; returns its path.

        Raises:
            RunStateError: the folder exists.
        """
        from workbench.store import MANIFEST, atomic_dir, atomic_write_json, write_parquet

        final = Path(runs_dir) / self._run_id
        if final.exists():
            raise RunStateError(f"{final} already exists; choose another folder or run id")
        with atomic_dir(final) as tmp:
            for name, table in self._tables.items():
                write_parquet(tmp / f"{name}.parquet", table)
            atomic_write_json(tmp / MANIFEST, self._manifest)
        return final
