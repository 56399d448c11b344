"""Reading and writing ``run.json`` safely, and checking where runs may go.

* :func:`read_manifest_file` opens only a regular file (a named pipe called ``run.json`` would
  block a reader forever) of bounded size, parses it and validates the fields other code relies on
  (:class:`Manifest`, pydantic); anything else is a :class:`~workbench.errors.RunStateError` that
  names the file and the field, so callers show that run as unreadable and go on.
* :func:`json_text` writes strict JSON: NaN and infinities become ``null`` (``json.dumps`` would
  write the bare tokens ``NaN``/``Infinity``, which no JSON parser accepts).
* :func:`check_runs_dir` and :func:`check_run_id` reject a ``--runs-dir`` or ``--run-id`` that
  cannot hold a run, before a model is loaded or anything is written.

This module imports no torch.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import InputError, RunStateError

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_RUN_ID = 200  # characters; the temporary names add ~20 to it, a file name holds 255 bytes


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class TableEntry(_Open):
    """``tables.<name>`` of a manifest: the rows and metrics of one finished table."""

    rows: int = Field(default=0, ge=0)
    metrics: list[str] = Field(default_factory=list)


class ModelEntry(_Open):
    """``model`` of a manifest (loading details; only the name is relied on)."""

    name: str | None = None


class ProbeEntry(_Open):
    """One entry of ``probes``: a probe (or sweep job table) with its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Manifest(_Open):
    """The fields of ``run.json`` the CLI, the summary and the app read. Other fields are free
    (each kind of run adds its own); these must have the right type when present."""

    run_id: str | None = None
    kind: str | None = None
    status: str
    created: str | None = None
    finished: str | None = None
    model: ModelEntry | None = None
    prompts: dict[str, Any] | None = None
    probes: list[ProbeEntry] = Field(default_factory=list)
    units: dict[str, str] = Field(default_factory=dict)
    tables: dict[str, TableEntry] = Field(default_factory=dict)
    timings: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(x) for x in first["loc"]) or "(top level)"
    return f"field {where!r}: {first['msg']}"


def validate_manifest(obj: Any, where: str) -> dict:
    """``obj`` (parsed ``run.json``) if it has the shape of a workbench manifest.

    Raises:
        RunStateError: not a JSON object, or a field of the wrong type (named).
    """
    if not isinstance(obj, dict):
        raise RunStateError(f"{where} is not a workbench manifest: expected a JSON object, got "
                            f"{type(obj).__name__}")
    try:
        Manifest.model_validate(obj)
    except ValidationError as err:
        raise RunStateError(f"{where} is not a workbench manifest: {_describe(err)}") from None
    return obj


def read_manifest_file(path: Path) -> dict:
    """Read and validate a ``run.json``.

    Raises:
        FileNotFoundError: there is none.
        RunStateError: it is not a regular file (a folder, a named pipe, a device), too large,
            not UTF-8 JSON, or not a valid manifest.
    """
    path = Path(path)
    info = os.stat(path)  # FileNotFoundError passes through
    if not stat.S_ISREG(info.st_mode):
        raise RunStateError(f"{path} is not a regular file; a run's manifest is a JSON file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise RunStateError(f"{path} is {info.st_size:,} bytes, more than a manifest can be "
                            f"({MAX_MANIFEST_BYTES:,})")
    try:  # O_NONBLOCK: the file may have been swapped for a pipe since the stat
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise RunStateError(f"{path} is not a regular file")
            data = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise RunStateError(f"{path} cannot be read ({err.strerror})") from None
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as err:
        raise RunStateError(f"{path} is not valid JSON: {err}") from None
    return validate_manifest(obj, str(path))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON (``allow_nan=False`` after :func:`finite`); other objects via ``str``."""
    return json.dumps(finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n"


def check_run_id(run_id: str | None, option: str = "--run-id") -> None:
    """Raise :class:`InputError` unless ``run_id`` (when given) is a plain folder name of at
    most :data:`MAX_RUN_ID` characters."""
    if run_id is None:
        return
    if (not run_id or "/" in run_id or "\\" in run_id or "\x00" in run_id
            or run_id.startswith(".") or run_id != run_id.strip()):
        raise InputError(f"{option} {run_id!r} is not a plain folder name (no '/', no leading "
                         "'.' or spaces); choose a name like my-run-1")
    if len(run_id) > MAX_RUN_ID or len(run_id.encode()) > MAX_RUN_ID:
        raise InputError(f"{option} is {len(run_id)} characters long; at most {MAX_RUN_ID} "
                         "fit in a folder name (with its temporary files)")


def check_runs_dir(runs_dir: Path, option: str = "--runs-dir") -> None:
    """Raise :class:`InputError` unless ``runs_dir`` is (or can be made) a writable folder outside
    the system trees /proc, /sys and /dev (:func:`workbench.inputs.check_output_dir`, the one
    check of every output folder)."""
    from workbench.inputs import check_output_dir

    check_output_dir(runs_dir, option)
