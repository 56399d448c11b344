"""Checking a sweep's inputs before any shard starts.

Every prompt set is checked against every model's context and tokenizer and every job's needs
(named segments, task fields, hook points) before a run folder is made or a shard runs, so one bad
prompt is one line and exit 2 naming it, not a failed shard per chunk. The driver loads each model
once for this (on the CPU for the Ray engine, whose workers may have GPUs the driver lacks); runs
already complete are not checked again.
"""

from __future__ import annotations

from pathlib import Path

from sweeps.shards import ShardWorker
from sweeps.spec import SweepSpec
from workbench.errors import InputError, RunStateError
from workbench.prompts import load_prompt_set
from workbench.store import RunDir


def _complete(path: Path) -> bool:
    try:
        return RunDir(path).read_manifest().get("status") == "complete"
    except RunStateError:
        return False


def check_inputs(spec: SweepSpec, root: Path, *, overwrite: bool = False,
                 on_cpu: bool = False, worker: ShardWorker | None = None
                 ) -> tuple[ShardWorker, dict[str, list[str]]]:
    """Check every (model, prompt set, job) that still has work; return the worker holding the
    last model loaded (the local engine reuses it) and each run's warnings (``{run_id: [...]}``,
    prompts a job writes no rows for; see :mod:`workbench.coverage`).

    Raises:
        InputError: a prompt longer than a model's context, a prompt lacking a segment a job
            needs, a task prompt set a job cannot use (the sweep, model, prompt set, job and
            prompt are named); a bad prompt file.
        ModelNotAvailable: a model that cannot be loaded.
    """
    worker = worker or ShardWorker()
    warnings: dict[str, list[str]] = {}
    sets = [load_prompt_set(files) for files in spec.prompt_sets]
    for entry in spec.models:
        todo = [ps for ps in sets
                if overwrite or not _complete(root / f"{entry.slug}--{ps.name}")]
        if not todo:
            continue
        worker._load(entry.model_copy(update={"device": "cpu", "device_map": None})
                     if on_cpu else entry)
        for prompt_set in todo:
            said = warnings.setdefault(f"{entry.slug}--{prompt_set.name}", [])
            for i, job in enumerate(spec.jobs):
                try:
                    said += job.validate(worker.model, prompt_set)
                except InputError as err:
                    raise InputError(f"sweep {spec.name!r}: model {entry.spec}, prompt set "
                                     f"{prompt_set.name}, jobs[{i}] ({job.kind}): {err}"
                                     ) from None
    return worker, warnings
