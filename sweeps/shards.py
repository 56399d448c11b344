"""Shards and the worker that runs them.

A :class:`Shard` is (model, prompt set, chunk): the prompts ``ids`` of one chunk and the folder of
the (model, prompt set) run it belongs to. :class:`ShardWorker` holds one loaded model at a time
(shards are handed out grouped by model, so a worker loads each model once), runs every job on the
chunk and writes the chunk's tables as ONE batch part of that run
(:meth:`workbench.store.RunDir.write_batch`, index = chunk), so a shard's output appears whole or
not at all. The same class runs in-process (local engine) and as a Ray actor (one per worker).
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sweeps.jobs import Job, conform_tables
from sweeps.spec import ModelEntry
from workbench.prompts import load_prompt_set
from workbench.records import PROMPTS_SCHEMA, TOKENS_SCHEMA
from workbench.store import RunDir


@dataclass(frozen=True)
class Shard:
    """One unit of work. ``index`` is the shard's number in the sweep, ``chunk`` its number (and
    batch-part index) within its run."""

    index: int
    run_path: str
    model: ModelEntry
    prompt_files: tuple[str, ...]
    chunk: int
    ids: tuple[str, ...]
    jobs: tuple[Job, ...]

    @property
    def name(self) -> str:
        return f"{Path(self.run_path).name}/c{self.chunk:05d}"


@dataclass
class ShardResult:
    """What a shard did: ``status`` ``done`` or ``failed`` (with ``error`` and ``traceback``)."""

    index: int
    status: str
    rows: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""
    error: str | None = None
    traceback: str | None = None
    model_info: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class ShardWorker:
    """Runs shards; keeps the last model and, per prompt set, each job's prepared state."""

    def __init__(self):
        self.entry: ModelEntry | None = None
        self.model = None
        self.prepared: dict[tuple, Any] = {}

    def _load(self, entry: ModelEntry) -> float:
        if entry == self.entry:
            return 0.0
        from workbench.models import load_model

        self.entry, self.model, self.prepared = None, None, {}  # free the previous model first
        t0 = time.perf_counter()
        self.model = load_model(entry.spec, **entry.load_options())
        self.entry = entry
        return time.perf_counter() - t0

    def _prepare(self, shard: Shard, j: int, job: Job) -> Any:
        key = (shard.prompt_files, j)  # a worker serves one sweep: job j is the same job
        if key not in self.prepared:
            self.prepared[key] = job.prepare(self.model, load_prompt_set(list(shard.prompt_files)))
        return self.prepared[key]

    def run(self, shard: Shard) -> ShardResult:
        """Run ``shard`` and write its part; never raises (a failure comes back in the result)."""
        worker = f"{socket.gethostname()}:{os.getpid()}"
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        try:
            timings["load_s"] = round(self._load(shard.model), 3)
            tables = {}
            t1 = time.perf_counter()
            for j, job in enumerate(shard.jobs):
                tables.update(job.run(self._prepare(shard, j, job), self.model, list(shard.ids)))
            timings["compute_s"] = round(time.perf_counter() - t1, 3)
            run = RunDir(Path(shard.run_path))
            tables = conform_tables(tables, run.run_id)
            tables.update(self._meta_tables(shard))
            t2 = time.perf_counter()
            run.write_batch(shard.chunk, tables)
            timings["write_s"] = round(time.perf_counter() - t2, 3)
        except Exception as err:  # noqa: BLE001 - reported per shard; the sweep goes on
            timings["total_s"] = round(time.perf_counter() - t0, 3)
            return ShardResult(shard.index, "failed", timings=timings, worker=worker,
                               error=f"{type(err).__name__}: {err}",
                               traceback=traceback.format_exc(limit=8))
        timings["total_s"] = round(time.perf_counter() - t0, 3)
        return ShardResult(shard.index, "done", {n: t.num_rows for n, t in tables.items()},
                           timings, worker, model_info=self.model.info.to_dict())

    def _meta_tables(self, shard: Shard) -> dict:
        """The chunk's rows of ``prompts`` and ``tokens`` (as ``workbench run`` writes them)."""
        import pyarrow as pa

        from workbench.prompts import PromptSet
        from workbench.tokens import prompt_rows, token_rows, tokenize_prompt_set

        prompt_set = load_prompt_set(list(shard.prompt_files))
        by_id = prompt_set.by_id()
        chunk = PromptSet(tuple(by_id[i] for i in shard.ids), prompt_set.files)
        info = self.model.info
        tokenized = tokenize_prompt_set(chunk, self.model.tokenizer, prepend_bos=info.prepend_bos,
                                        n_ctx=info.n_ctx, model_name=info.name,
                                        images=self.model.images)
        return {"prompts": pa.table(prompt_rows(tokenized), schema=PROMPTS_SCHEMA),
                "tokens": pa.table(token_rows(tokenized, self.model.tokenizer),
                                   schema=TOKENS_SCHEMA)}
