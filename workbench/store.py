"""Run directories: the manifest, atomic parquet writes, resumable batch parts.

Layout of ``runs/<run_id>/``::

    run.json                 manifest (model, prompt-set sha256, probe parameters, versions, timings,
                             status: running | complete | interrupted | failed)
    <table>.parquet          record tables (schema: workbench.records.RECORD_SCHEMA), once complete
    prompts.parquet          one row per prompt; tokens.parquet: one row per prompt token
    .parts/b00012/<table>.parquet
                             a finished batch's records while the run is in progress

Every file is written to a temporary name and renamed into place, and a batch's parts appear
together by renaming their folder, so a killed run never leaves a half-written table: rerunning with
``resume`` skips the batches whose folder exists and redoes the rest. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from workbench.errors import InputError, RunStateError
from workbench.manifest import check_run_id, json_text, read_manifest_file
from workbench.runlock import INTERRUPTED, RUNNING, RunLock, live_status, writer

MANIFEST = "run.json"
PARTS = ".parts"
META_TABLES = ("prompts", "tokens", "atlas")  # not record tables (atlas: one row per head)
ROW_GROUP_SIZE = 128 * 1024


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


# --- atomic file helpers -------------------------------------------------------------------------

def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as strict JSON (non-finite floats become ``null``), atomically."""
    atomic_write_bytes(path, json_text(obj).encode())


def write_parquet(path: Path, table: pa.Table) -> None:
    """Write ``table`` to ``path`` atomically (zstd, 128k-row groups for filter pushdown)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_SIZE)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_parquet(path: Path, **options: Any) -> pa.Table:
    """``pyarrow.parquet.read_table(path, **options)``: the one reader of run tables (the CLI,
    ``wb.open_run``, the figures and the app all read through it).

    Raises:
        RunStateError: the file is missing, truncated, empty, not parquet, a symlink loop, or
            lacks the columns asked for (one line naming the file).
    """
    try:
        return pq.read_table(path, **options)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise RunStateError(f"{path} cannot be read as a table ({_reason(err)})") from None


def parquet_rows(path: Path) -> int:
    """The rows of a parquet file from its footer (no data read).

    Raises:
        RunStateError: as :func:`read_parquet`.
    """
    try:
        with pq.ParquetFile(path) as parquet:
            return parquet.metadata.num_rows
    except (OSError, pa.ArrowException, ValueError) as err:
        raise RunStateError(f"{path} cannot be read as a table ({_reason(err)})") from None


def parquet_columns(path: Path) -> list[str]:
    """The column names of a parquet file, from its footer.

    Raises:
        RunStateError: as :func:`read_parquet`.
    """
    try:
        return list(pq.read_schema(path).names)
    except (OSError, pa.ArrowException, ValueError) as err:
        raise RunStateError(f"{path} cannot be read as a table ({_reason(err)})") from None


def _reason(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(text.split())[:200]


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success rename it to ``final``.

    If ``final`` appeared meanwhile (another process won the race) the temporary folder is dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- run directories -----------------------------------------------------------------------------

class RunDir:
    """One run's folder. Create with :meth:`create`, open an existing one with :meth:`open`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state: str | None = None  # set by create(): "new", "resumed" or "complete"
        self.lock: RunLock | None = None  # held by the writer from create() to the final status

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    # manifest ---------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        """The validated manifest (:func:`workbench.manifest.read_manifest_file`).

        Raises:
            RunStateError: no manifest, or one that is not a regular file, not JSON or not a
                workbench manifest.
        """
        try:
            return read_manifest_file(self.manifest_path)
        except (FileNotFoundError, NotADirectoryError):
            raise RunStateError(f"{self.path} is not a run directory (no {MANIFEST})") from None
        except OSError as err:  # a name too long, a symlink loop, no permission
            raise RunStateError(f"{self.manifest_path} cannot be read ({err.strerror})") from None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def update_manifest(self, **changes: Any) -> dict:
        """Merge ``changes`` into the manifest; a final ``status`` (anything but ``running``)
        also releases this writer's lock."""
        manifest = self.read_manifest()
        manifest.update(changes)
        self.write_manifest(manifest)
        if changes.get("status", "running") != "running":
            self.release()
        return manifest

    def stopped(self, err: BaseException, **changes: Any) -> None:
        """Record why the writer stopped: ``interrupted`` for Ctrl-C or SIGTERM (a
        ``KeyboardInterrupt``; the run continues with ``--resume``), else ``failed`` with the
        error; ``changes`` (e.g. ``timings``) go into the manifest too. A new run stopped by bad
        input (an :class:`InputError` found after the folder was made) before anything but its
        manifest was written is removed: bad input writes nothing. Releases the lock, also
        when the manifest cannot be written (a full disk): the caller re-raises ``err``."""
        try:
            if isinstance(err, InputError) and self.state == "new" and self._holds_nothing():
                shutil.rmtree(self.path, ignore_errors=True)  # bad input found late: no run
            elif isinstance(err, KeyboardInterrupt):
                self.update_manifest(status=INTERRUPTED, finished=None, **changes)
            else:
                self.update_manifest(status="failed", error=f"{type(err).__name__}: {err}",
                                     **changes)
        except (OSError, RunStateError):
            pass
        finally:
            self.release()

    def _holds_nothing(self) -> bool:
        """Whether the folder holds only its manifest (and empty or temporary folders)."""
        try:
            for child in self.path.iterdir():
                if child.name == MANIFEST or child.name.endswith(".tmp"):
                    continue
                if child.is_dir() and not child.is_symlink() and not any(child.rglob("*.*")):
                    continue
                return False
        except OSError:
            return False
        return True

    def release(self) -> None:
        """Release the writer's lock (if this object holds it)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def live_status(self, manifest: dict | None = None) -> str:
        """The status to show: ``running`` only while its writer still holds the lock."""
        return live_status(self.path, self.read_manifest() if manifest is None else manifest)

    @classmethod
    def open(cls, path: Path) -> "RunDir":
        run = cls(path)
        run.read_manifest()
        return run

    @classmethod
    def create(cls, runs_dir: Path, run_id: str, manifest: dict, *, resume: bool,
               overwrite: bool, same_config: Callable[[dict], str | None]) -> tuple["RunDir", str]:
        """Create ``runs_dir/run_id`` or reopen it for resuming.

        Args:
            same_config: given the stored manifest, returns ``None`` when the stored run was made
                with the same configuration, else a sentence saying what differs.

        Returns:
            the run directory and its state: ``"new"``, ``"resumed"`` (an unfinished run to
            continue) or ``"complete"`` (resume asked for a finished run: nothing to do; its
            manifest is left untouched).

        The caller holds the run's lock (:class:`workbench.runlock.RunLock`, recorded as
        ``writer`` in the manifest) from here until it writes a final status
        (:meth:`update_manifest`) or calls :meth:`release`.

        Raises:
            InputError: ``run_id`` is not a plain folder name of at most 200 characters.
            RunStateError: another process is writing the run; the folder exists and neither
                ``resume`` nor ``overwrite`` was asked for; ``resume`` was asked for but the
                stored configuration differs; ``overwrite`` was asked for but the folder is not
                a workbench run (no valid ``run.json``) or is a symbolic link.
        """
        check_run_id(run_id, "run id")
        path = Path(runs_dir) / run_id
        run = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        run.lock = RunLock(path).acquire()
        try:
            state = run._open_or_make(manifest, resume=resume, overwrite=overwrite,
                                      same_config=same_config)
        except BaseException:
            run.release()
            raise
        if state == "complete":
            run.release()
        run.state = state
        return run, state

    def _open_or_make(self, manifest: dict, *, resume: bool, overwrite: bool,
                      same_config: Callable[[dict], str | None]) -> str:
        path, run_id = self.path, self.run_id
        manifest = {**manifest, "writer": writer()}
        if overwrite and (path.exists() or path.is_symlink()):
            self._check_deletable()
            shutil.rmtree(path)
        if path.exists():
            if not path.is_dir() or not self.manifest_path.exists():
                raise RunStateError(f"{path} exists but is not a run directory; choose another "
                                    "--run-id or remove it")
            stored = self.read_manifest()
            status = stored.get("status")  # we hold the lock: a "running" writer is gone
            status = INTERRUPTED if status == RUNNING else status
            if not resume:
                raise RunStateError(
                    f"run {run_id!r} already exists (status: {status}); rerun with "
                    "--resume to continue it or --overwrite to start again")
            why = same_config(stored)
            if why:
                raise RunStateError(f"cannot resume run {run_id!r}: {why}; use --overwrite or "
                                    "another --run-id")
            if stored.get("status") == "complete":
                return "complete"
            manifest = {**manifest, "created": stored.get("created", manifest.get("created")),
                        "resumed": _count(stored.get("resumed")) + 1}
            self.write_manifest(manifest)
            self._drop_temporaries()
            return "resumed"
        with atomic_dir(path) as tmp:
            atomic_write_json(tmp / MANIFEST, manifest)
        return "new"

    def _check_deletable(self) -> None:
        """Raise :class:`RunStateError` unless ``--overwrite`` may delete this folder: a real
        folder (not a symlink) holding a valid workbench manifest."""
        path = self.path
        if path.is_symlink():
            raise RunStateError(f"{path} is a symbolic link; --overwrite deletes only run folders "
                                "(remove the link yourself or choose another --run-id)")
        if not path.is_dir():
            raise RunStateError(f"{path} is not a folder; --overwrite deletes only run folders "
                                "(choose another --run-id)")
        try:
            stored = read_manifest_file(self.manifest_path)
        except (FileNotFoundError, NotADirectoryError):
            raise RunStateError(f"{path} is not a workbench run (no {MANIFEST}); --overwrite "
                                "deletes only run folders: choose another --run-id or "
                                "--runs-dir") from None
        except RunStateError as err:
            raise RunStateError(f"{path} is not a workbench run ({err}); --overwrite deletes "
                                "only run folders") from None
        if not any(stored.get(k) for k in ("run_id", "config_key", "writer")):
            raise RunStateError(f"{path}/{MANIFEST} was not written by the workbench (no run_id);"
                                " --overwrite deletes only run folders")

    # batch parts ------------------------------------------------------------------------------
    def _parts(self) -> Path:
        return self.path / PARTS

    def _drop_temporaries(self) -> None:
        """Remove what a killed writer left: temporary files (``.<name>.<random>.tmp``, e.g. a
        table being renamed into place during finalize) and unfinished batch folders."""
        for child in self.path.glob(".*.tmp"):
            if child.is_symlink() or child.is_file():
                child.unlink(missing_ok=True)
            elif child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
        parts = self._parts()
        if parts.exists():
            for child in parts.iterdir():
                if child.name.startswith("."):
                    shutil.rmtree(child, ignore_errors=True)

    def batch_done(self, index: int) -> bool:
        return (self._parts() / f"b{index:05d}").is_dir()

    def done_batches(self) -> list[int]:
        parts = self._parts()
        if not parts.exists():
            return []
        return sorted(int(p.name[1:]) for p in parts.iterdir() if p.is_dir() and p.name[0] == "b")

    def write_batch(self, index: int, tables: dict[str, pa.Table]) -> None:
        """Write one batch's tables so that they all appear at once (folder rename)."""
        final = self._parts() / f"b{index:05d}"
        if final.exists():
            shutil.rmtree(final)
        with atomic_dir(final) as tmp:
            for name, table in tables.items():
                pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")

    def read_parts(self, name: str) -> list[pa.Table]:
        """The finished batches' parts of table ``name``, in batch order."""
        out = []
        for index in self.done_batches():
            path = self._parts() / f"b{index:05d}" / f"{name}.parquet"
            if path.exists():
                out.append(read_parquet(path))
        return out

    def part_table_names(self) -> list[str]:
        names: set[str] = set()
        for index in self.done_batches():
            names.update(p.stem for p in (self._parts() / f"b{index:05d}").glob("*.parquet"))
        return sorted(names)

    def drop_parts(self) -> None:
        shutil.rmtree(self._parts(), ignore_errors=True)

    # tables -----------------------------------------------------------------------------------
    def table_path(self, name: str) -> Path:
        return self.path / f"{name}.parquet"

    def write_table(self, name: str, table: pa.Table) -> None:
        write_parquet(self.table_path(name), table)

    def tables(self) -> list[str]:
        """Names of the finished tables (records and metadata) in this run."""
        return sorted(p.stem for p in self.path.glob("*.parquet"))

    def read_table(self, name: str, columns: list[str] | None = None,
                   filters: Any = None) -> pa.Table:
        """Read a finished table with column and row-filter pushdown.

        Raises:
            RunStateError: the run has no table of that name.
        """
        path = self.table_path(name)
        if not path.exists() and not path.is_symlink():
            raise RunStateError(f"run {self.run_id!r} has no table {name!r} "
                                f"(it has: {', '.join(self.tables()) or 'none'})")
        return read_parquet(path, columns=columns, filters=filters)

    def check_tables(self, manifest: dict | None = None) -> str | None:
        """None when every table the manifest lists is there with the rows it says (read from
        the parquet footers: no data read), else a sentence naming the first that is not
        (missing, truncated, not parquet, another row count)."""
        manifest = self.read_manifest() if manifest is None else manifest
        for name, entry in (manifest.get("tables") or {}).items():
            path = self.table_path(name)
            try:
                rows = parquet_rows(path)
            except RunStateError as err:
                return f"table {name!r} is unreadable: {err}"
            expected = entry.get("rows") if isinstance(entry, dict) else None
            if isinstance(expected, int) and rows != expected:
                return f"table {name!r} has {rows:,} rows, its manifest says {expected:,}"
        return None


UNREADABLE = "unreadable"
CORRUPTED = "corrupted"  # complete, but a table is missing, unreadable or of another length


def same_config_key(key: dict) -> Callable[[dict], str | None]:
    """A ``same_config`` for :meth:`RunDir.create`: None when the stored manifest's
    ``config_key`` equals ``key`` (compared as the JSON the manifest holds), else a sentence
    naming the fields that differ."""
    import json

    from workbench.manifest import json_text

    wanted = json.loads(json_text(key))

    def differs(stored: dict) -> str | None:
        old = stored.get("config_key")
        if old == wanted:
            return None
        if not isinstance(old, dict):
            return "its manifest has no configuration to compare"
        fields = sorted(k for k in set(old) | set(wanted) if old.get(k) != wanted.get(k))
        return f"it was made with another configuration ({', '.join(fields)} differ)"

    return differs


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def list_runs(runs_dir: Path, *, check: bool = True) -> list[tuple[RunDir, dict]]:
    """Every run under ``runs_dir`` with its manifest, newest first.

    ``status`` is the live one (a ``running`` run whose writer is gone reads ``interrupted``); a
    folder whose ``run.json`` cannot be read or validated is listed with status ``unreadable``,
    and a complete run whose tables do not match its manifest (missing, truncated, not parquet,
    another row count: :meth:`RunDir.check_tables`) with status ``corrupted``, the reason in
    ``error``. ``check=False`` skips that table check (it opens every table of every complete
    run): the caller checks the runs it picks.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    out = []
    for child in runs_dir.iterdir():
        if child.is_dir() and not child.name.startswith(".") and (child / MANIFEST).exists():
            run = RunDir(child)
            try:
                manifest = run.read_manifest()
            except RunStateError as err:
                manifest = {"run_id": child.name, "status": UNREADABLE, "error": str(err)}
            else:
                status = run.live_status(manifest)
                problem = run.check_tables(manifest) if check and status == "complete" else None
                manifest = {**manifest, "status": CORRUPTED if problem else status,
                            **({"error": problem} if problem else {})}
            out.append((run, manifest))
    out.sort(key=lambda item: str(item[1].get("created") or ""), reverse=True)
    return out
