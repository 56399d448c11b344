"""``workbench sweep``: plan the shards, skip the finished ones, run the rest on an engine, record
every shard in ``sweep.json`` and join each run's parts into its tables.

Layout of ``<runs_dir>/<name>/``::

    sweep.json                      every shard: run, chunk, prompt ids, status (done | failed |
                                    pending), error, timings, rows, worker; the sweep's status
    <model>--<prompt set>/          one ordinary run folder per (model, prompt set): run.json,
                                    <table>.parquet, prompts.parquet, tokens.parquet once all of
                                    its shards are done (``workbench app --runs-dir runs/<name>``)
    <model>--<prompt set>/.parts/b<chunk>/
                                    a finished shard's tables, until its run is complete

A rerun with the same sweep file skips every shard whose part exists (and every complete run);
the part of a failed shard is never written, so only failed and unfinished shards run again.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from sweeps.checks import check_inputs
from sweeps.engines import ENGINES, run_local, run_ray
from sweeps.jobs import Job
from sweeps.shards import Shard, ShardResult
from sweeps.spec import SweepSpec
from workbench.errors import InputError
from workbench.prompts import load_prompt_set
from workbench.records import SCHEMA_VERSION
from workbench.run import finalize_tables, git_state, library_versions
from workbench.store import RunDir, atomic_write_json

SWEEP_MANIFEST = "sweep.json"


@dataclass
class SweepOptions:
    runs_dir: Path = Path("runs")  # used when the sweep file names none
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None
    overwrite: bool = False
    command: list[str] = field(default_factory=list)


@dataclass
class _Summary:
    """Adapts a job's ``summarize(name, table)`` to the probe interface of ``finalize_tables``."""

    name: str
    job: Job

    def summarize(self, table):
        return self.job.summarize(self.name, table)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _run_manifest(run_id: str, entry, prompt_set, spec: SweepSpec) -> dict:
    key = {"model": entry.model_dump(), "prompts_sha256": prompt_set.sha256,
           "jobs": [job.model_dump(mode="json") for job in spec.jobs],
           "chunk_size": spec.chunk_size}
    units = {k: v for job in spec.jobs for k, v in job.units().items()}
    return {"run_id": run_id, "kind": "sweep", "sweep": spec.name, "status": "running",
            "created": _now(), "finished": None, "config_key": key, "model": {"name": entry.spec},
            "prompts": {"name": prompt_set.name, "files": [vars(f) for f in prompt_set.files],
                        "sha256": prompt_set.sha256, "n_prompts": len(prompt_set)},
            "probes": [entry for job in spec.jobs for entry in job.describe()],
            "units": units, "record_schema_version": SCHEMA_VERSION,
            "versions": library_versions(), "git": git_state(), "timings": {}, "tables": {}}


def _same_config(key: dict):
    def check(stored: dict) -> str | None:
        return None if stored.get("config_key") == key else (
            "the sweep file changed for this run (model, prompts, jobs or chunk_size)")
    return check


def plan_shards(spec: SweepSpec, root: Path, overwrite: bool = False,
                warnings: dict[str, list[str]] | None = None
                ) -> tuple[list[RunDir], list[Shard]]:
    """Create (or reopen) every (model, prompt set) run under ``root`` and list all shards;
    ``warnings[run_id]`` goes into that run's manifest.

    Raises:
        InputError: a bad prompt file (before any model is loaded or file written), or two
            (model, prompt set) entries with the same run folder name.
        RunStateError: a run exists with another configuration (use ``--overwrite``).
    """
    sets = [load_prompt_set(files) for files in spec.prompt_sets]
    plan = [(entry, files, prompt_set, f"{entry.slug}--{prompt_set.name}")
            for entry in spec.models for files, prompt_set in zip(spec.prompt_sets, sets)]
    ids = [run_id for *_, run_id in plan]
    twice = sorted({r for r in ids if ids.count(r) > 1})
    if twice:
        raise InputError(f"sweep {spec.name!r}: two entries make the run(s) {', '.join(twice)} "
                         "(the same model and prompt set names); list each once")
    runs, shards = [], []
    for entry, files, prompt_set, run_id in plan:
        manifest = {**_run_manifest(run_id, entry, prompt_set, spec),
                    "warnings": (warnings or {}).get(run_id, [])}
        run, _ = RunDir.create(root, run_id, manifest, resume=True, overwrite=overwrite,
                               same_config=_same_config(manifest["config_key"]))
        runs.append(run)
        prompt_ids = [p.id for p in prompt_set.prompts]
        for chunk, start in enumerate(range(0, len(prompt_ids), spec.chunk_size)):
            shards.append(Shard(len(shards), str(run.path), entry, tuple(str(f) for f in files),
                                chunk, tuple(prompt_ids[start:start + spec.chunk_size]),
                                tuple(spec.jobs)))
    return runs, shards


def _shard_row(shard: Shard, status: str) -> dict[str, Any]:
    return {"index": shard.index, "run": Path(shard.run_path).name, "chunk": shard.chunk,
            "model": shard.model.spec, "prompts": list(shard.prompt_files),
            "n_prompts": len(shard.ids), "first_id": shard.ids[0], "last_id": shard.ids[-1],
            "status": status, "error": None, "rows": {}, "timings": {}, "worker": None}


class _Ledger:
    """``sweep.json``: rewritten atomically (by the driver only) after every shard."""

    def __init__(self, path: Path, manifest: dict):
        self.path, self.manifest = path, manifest
        self.model_info: dict[str, dict] = {}
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.manifest)

    def record(self, result: ShardResult) -> None:
        row = self.manifest["shards"][result.index]
        row.update(status=result.status, error=result.error, traceback=result.traceback,
                   rows=result.rows, timings=result.timings, worker=result.worker,
                   finished=_now())
        if result.model_info:
            self.model_info[row["run"]] = result.model_info
        self.save()


def _previous_rows(path: Path) -> dict[tuple[str, int], dict]:
    import json

    try:
        shards = json.loads(path.read_text()).get("shards", [])
    except (FileNotFoundError, ValueError):
        return {}
    return {(row["run"], row["chunk"]): row for row in shards if row.get("status") == "done"}


def _initial_rows(runs: list[RunDir], shards: list[Shard], previous: dict
                  ) -> tuple[list[dict], list[Shard]]:
    """A ledger row per shard (a finished shard keeps its earlier row, marked ``skipped``) and
    the shards still to run."""
    complete = {r.run_id for r in runs if r.read_manifest().get("status") == "complete"}
    rows, todo = [], []
    for shard in shards:
        run_id = Path(shard.run_path).name
        if run_id in complete or RunDir(Path(shard.run_path)).batch_done(shard.chunk):
            old = previous.get((run_id, shard.chunk))
            rows.append({**(old or _shard_row(shard, "done")), "index": shard.index,
                         "skipped": True})
        else:
            rows.append(_shard_row(shard, "pending"))
            todo.append(shard)
    return rows, todo


def _finish_runs(runs: list[RunDir], ledger: _Ledger, spec: SweepSpec) -> None:
    """Join the parts of every run whose shards are all done; mark the others failed."""
    summaries = [_Summary(t, job) for job in spec.jobs for t in job.tables()]
    for run in runs:
        manifest = run.read_manifest()
        if manifest.get("status") == "complete":
            continue
        mine = [r for r in ledger.manifest["shards"] if r["run"] == run.run_id]
        failed = [r for r in mine if r["status"] != "done"]
        if failed:
            run.update_manifest(status="failed", error=f"{len(failed)} of {len(mine)} shard(s) "
                                f"not done; see ../{SWEEP_MANIFEST}")
            continue
        t0 = time.perf_counter()
        tables = finalize_tables(run, summaries)
        model = ledger.model_info.get(run.run_id, manifest.get("model"))
        n_tokens = pc.sum(run.read_table("prompts", columns=["n_tokens"])["n_tokens"]).as_py()
        prompts = {**manifest["prompts"], "n_tokens": n_tokens,
                   "prepend_bos": model.get("prepend_bos")}
        run.update_manifest(status="complete", finished=_now(), tables=tables, model=model,
                            prompts=prompts, error=None,
                            timings={"finalize_s": round(time.perf_counter() - t0, 3),
                                     "shards": len(mine)})


def run_sweep(spec: SweepSpec, options: SweepOptions) -> dict:
    """Run (or resume) a sweep; returns the final ``sweep.json`` content.

    A shard that fails is recorded with its error and traceback and does not stop the others;
    the sweep's ``status`` is then ``failed`` (``n_failed`` > 0). Ctrl-C marks it
    ``interrupted`` (finished shards stay; rerun to resume).

    Every prompt set is checked against every model and job first
    (:func:`sweeps.checks.check_inputs`), before any run folder is made or shard runs.

    Raises:
        InputError: an unknown engine, bad prompt files (before any model loads), or a prompt
            some model or job cannot take (before any shard starts).
        RunStateError: a run folder made with another configuration (``overwrite`` replaces it),
            or one another process is writing.
    """
    if options.engine not in ENGINES:
        raise InputError(f"--engine {options.engine!r}: choose one of {', '.join(ENGINES)}")
    root = Path(spec.runs_dir or options.runs_dir) / spec.name
    worker, warnings = check_inputs(spec, root, overwrite=options.overwrite,
                                    on_cpu=options.engine == "ray")
    previous = {} if options.overwrite else _previous_rows(root / SWEEP_MANIFEST)
    runs, shards = plan_shards(spec, root, options.overwrite, warnings)
    rows, todo = _initial_rows(runs, shards, previous)
    ledger = _Ledger(root / SWEEP_MANIFEST, {
        "name": spec.name, "kind": "sweep", "status": "running", "created": _now(),
        "finished": None, "engine": options.engine, "address": options.address,
        "workers": options.workers, "command": options.command or sys.argv,
        "spec": spec.model_dump(mode="json"), "runs": [r.run_id for r in runs],
        "n_shards": len(shards), "n_skipped": len(shards) - len(todo), "shards": rows,
        "warnings": {run: said for run, said in warnings.items() if said},
        "versions": library_versions(), "timings": {}})
    t0 = time.perf_counter()
    try:
        if options.engine == "ray":
            worker = None  # free the driver's model before the actors load theirs
            run_ray(todo, ledger.record, address=options.address, workers=options.workers,
                    gpus_per_worker=options.gpus_per_worker)
        else:
            run_local(todo, ledger.record, worker=worker)
    except BaseException:
        ledger.manifest.update(status="interrupted", finished=_now())
        ledger.save()
        for run in runs:
            run.release()
        raise
    ledger.manifest["timings"]["shards_s"] = round(time.perf_counter() - t0, 3)
    _finish_runs(runs, ledger, spec)
    for run in runs:
        run.release()
    n_failed = sum(r["status"] != "done" for r in ledger.manifest["shards"])
    ledger.manifest.update(status="failed" if n_failed else "complete", n_failed=n_failed,
                           finished=_now())
    ledger.manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
    ledger.save()
    return ledger.manifest
