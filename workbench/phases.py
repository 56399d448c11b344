"""Finished phases of a run, kept in its folder so ``--resume`` reuses them: the resume contract of
every command that writes a run (``workbench run`` resumes per batch through
:meth:`~workbench.store.RunDir.write_batch`; the others per phase through this module).

A phase is a named piece of work whose result is a value built from plain data: numbers,
strings, ``None``, lists, tuples, dicts, numpy arrays, torch tensors, Arrow tables and dataclasses
of those (a ``Discovery``, a ``Faithfulness``, a pruning ``Curve``, a batch's record tables).
:meth:`Phases.run` computes it once; its result is written atomically to
``<run>/.phases/<key>/`` (``value.json``: the structure; ``a<i>.npy``: arrays without pickle;
``t<i>.parquet``: tables) the moment the phase finishes. A resumed run (the caller opens it with
``RunDir.create(..., resume=True)`` after checking the stored configuration equals the new one:
the run id is a hash of it) reads the finished phases back instead of computing them, so after a
kill -9 or SIGTERM only the unfinished phase is redone, and the result equals an uninterrupted
run's. Decoding builds only dataclasses defined in this project's packages
(:data:`PACKAGES`); nothing is unpickled. The folder is dropped when the run completes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import math
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workbench.store import atomic_dir

PHASES = ".phases"
PACKAGES = ("workbench", "circuits", "pruning", "atlas", "probes", "sweeps")
T = TypeVar("T")


class _Encoder:
    def __init__(self, folder: Path):
        self.folder, self.n = folder, 0

    def _file(self, prefix: str, suffix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}{suffix}"

    def __call__(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int) and not isinstance(obj, bool):
            return obj
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"__float__": repr(obj)}
        if isinstance(obj, np.generic):
            name = self._file("a", ".npy")
            np.save(self.folder / name, np.asarray(obj), allow_pickle=False)
            return {"__scalar__": name}
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:
                return {"__objects__": [self(x) for x in obj.ravel(order="C")],
                        "shape": list(obj.shape)}
            name = self._file("a", ".npy")
            np.save(self.folder / name, obj, allow_pickle=False)
            return {"__array__": name}
        if isinstance(obj, pa.Table):
            name = self._file("t", ".parquet")
            pq.write_table(obj, self.folder / name)
            return {"__table__": name}
        if type(obj).__module__.startswith("torch") and type(obj).__name__ == "Tensor":
            import torch

            name = self._file("a", ".npy")
            np.save(self.folder / name, obj.detach().to("cpu", torch.float64
                                                         if obj.is_floating_point()
                                                         else obj.dtype).numpy(),
                    allow_pickle=False)
            return {"__tensor__": name, "dtype": str(obj.dtype).removeprefix("torch."),
                    "device": str(obj.device)}
        if isinstance(obj, tuple):
            return {"__tuple__": [self(x) for x in obj]}
        if isinstance(obj, list):
            return [self(x) for x in obj]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in obj):
                return {k: self(v) for k, v in obj.items()}
            return {"__items__": [[self(k), self(v)] for k, v in obj.items()]}
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            cls = type(obj)
            return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                    "fields": {f.name: self(getattr(obj, f.name))
                               for f in dataclasses.fields(obj)}}
        raise TypeError(f"a phase result cannot hold a {type(obj).__name__}")


def _dataclass(name: str) -> type:
    module, _, qualname = name.partition(":")
    if module.split(".")[0] not in PACKAGES:
        raise ValueError(f"phase file names {name!r}, outside the workbench's packages")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
        raise ValueError(f"phase file names {name!r}, which is not a dataclass")
    return obj


def _decode(obj: Any, folder: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(x, folder) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__scalar__" in obj:
        return np.load(folder / obj["__scalar__"], allow_pickle=False)[()]
    if "__array__" in obj:
        return np.load(folder / obj["__array__"], allow_pickle=False)
    if "__objects__" in obj:
        items = [_decode(x, folder) for x in obj["__objects__"]]
        out = np.empty(len(items), dtype=object)
        out[:] = items
        return out.reshape(obj["shape"])
    if "__table__" in obj:
        return pq.read_table(folder / obj["__table__"])
    if "__tensor__" in obj:
        import torch

        array = np.load(folder / obj["__tensor__"], allow_pickle=False)
        return torch.from_numpy(array).to(device=obj["device"],
                                          dtype=getattr(torch, obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(_decode(x, folder) for x in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, folder): _decode(v, folder) for k, v in obj["__items__"]}
    if "__dataclass__" in obj:
        cls = _dataclass(obj["__dataclass__"])
        values = {k: _decode(v, folder) for k, v in obj["fields"].items()}
        init = {f.name for f in dataclasses.fields(cls) if f.init}
        made = cls(**{k: v for k, v in values.items() if k in init})
        for k, v in values.items():
            if k not in init:
                object.__setattr__(made, k, v)
        return made
    return {k: _decode(v, folder) for k, v in obj.items()}


def _slug(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)[:80].lstrip(".")
    return f"{safe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


class Phases:
    """The finished phases of one run (``run``: its :class:`~workbench.store.RunDir`; ``None``:
    nothing is kept, every phase is computed)."""

    def __init__(self, run: Any | None):
        self.folder = None if run is None else Path(run.path) / PHASES
        self.reused: list[str] = []  # keys read back instead of computed

    def path(self, key: str) -> Path | None:
        return None if self.folder is None else self.folder / _slug(key)

    def done(self, key: str) -> bool:
        path = self.path(key)
        return path is not None and (path / "value.json").is_file()

    def load(self, key: str) -> Any:
        path = self.path(key)
        return _decode(json.loads((path / "value.json").read_text()), path)

    def save(self, key: str, value: Any) -> None:
        path = self.path(key)
        if path is None:
            return
        if path.exists():
            shutil.rmtree(path)
        with atomic_dir(path) as tmp:
            tree = _Encoder(tmp)(value)
            (tmp / "value.json").write_text(json.dumps(tree))

    def run(self, key: str, compute: Callable[[], T]) -> T:
        """The phase ``key``'s result: read back when a resumed run finished it, else computed
        and kept (an exception in ``compute`` keeps nothing)."""
        if self.done(key):
            try:
                value = self.load(key)
            except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError):
                value = None  # an unreadable phase is computed again
            else:
                self.reused.append(key)
                return value
        value = compute()
        self.save(key, value)
        return value

    @classmethod
    @contextlib.contextmanager
    def guarding(cls, run: Any, **changes: Any) -> Iterator["Phases"]:
        """The phases of ``run`` for the block that computes and writes it: an exception marks
        the run as :meth:`RunDir.stopped <workbench.store.RunDir.stopped>` does (Ctrl-C/SIGTERM
        ``interrupted``, resumable; else ``failed``; ``changes``, e.g. ``timings``, recorded
        too) and is re-raised; a block that completes drops the kept phases."""
        phases = cls(run)
        try:
            yield phases
        except BaseException as err:
            run.stopped(err, **changes)
            raise
        phases.drop()

    def drop(self) -> None:
        """Remove the kept phases (the run is complete: its tables hold the results)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
