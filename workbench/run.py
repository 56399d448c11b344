"""The run loop: hooks only where probes need them, reduce per batch, write parts, resume.

``execute_run`` is the whole job behind ``workbench run``: validate prompts and probes, load the
model, tokenise once, then for each batch register the probes' hook points (never a full
``run_with_cache``), reduce inside the hooks, and write that batch's records atomically. When no probe
needs logits the forward pass stops before the final norm and unembedding. A run interrupted at any
point resumes (``resume=True``) without duplicate rows: finished batches are skipped.

This module does not import ``probes``: it runs any objects with the probe interface (see
``probes/base.py``); the CLI resolves names to probes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from workbench.attention_impl import AUTO, EAGER, SDPA, AttentionChoice, choose_attention
from workbench.attention_impl import sdpa_attention
from workbench.coverage import input_warnings, no_records_warning
from workbench._callable import make_callable
from workbench.errors import InputError, RunStateError, WorkbenchError
from workbench.inmemory import MemoryRun
from workbench.manifest import read_manifest_file
from workbench.masks import AttentionMask, mask_hooks, verify_mask
from workbench.memory import BatchPlan, plan_batch
from workbench.models import LoadedModel
from workbench.prompts import PromptSet
from workbench.records import PROMPTS_SCHEMA, SCHEMA_VERSION, TOKENS_SCHEMA, concat, conform
from workbench.store import MANIFEST, META_TABLES, RunDir
from workbench.tokens import (Batch, TokenizedPrompt, make_batches, pad_token_id, prompt_rows,
                              tokenize_prompt_set, token_rows)

STOP_HOOK = "ln_final.hook_in"


class _StopForward(Exception):
    """Raised from a hook once every needed activation has been seen."""


@dataclass
class RunOptions:
    runs_dir: Path | None = Path("runs")  # None: keep the run in memory (workbench.inmemory)
    run_id: str | None = None
    batch_size: int | None = None  # None: chosen from free memory (workbench.memory)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=list)
    attention_mask: str | None = None  # a workbench.masks variant for every forward ("window:16")
    attention: str = AUTO  # auto | eager | sdpa for the shared forward (workbench.attention_impl)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformer-lens", "transformers", "pyarrow", "pandas", "numpy", "gguf",
                "attention-workbench"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5, check=True).stdout.strip() != ""
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _config_key(model: LoadedModel, prompt_set: PromptSet, probes: Sequence[Any],
                batch_size: int, mask: AttentionMask | None, attention: str = EAGER) -> dict:
    """Everything that decides a run's numbers; equal keys mean a resumable run."""
    info = model.info
    return {
        "model": info.name, "model_file_sha256": info.details.get("file_sha256"),
        "model_revision": info.details.get("revision"), "dtype": info.dtype,
        "device_type": torch.device(info.device).type, "prepend_bos": info.prepend_bos,
        "prompts_sha256": prompt_set.sha256,
        "probes": [{"name": p.name, "params": p.params()} for p in probes],
        "batch_size": batch_size,
        # absent when at their defaults, so that run ids stay as before
        **({} if mask is None else {"attention_mask": str(mask)}),
        **({} if attention == EAGER else {"attention": attention}),
    }


def default_run_id(key: dict, model: LoadedModel, prompt_set: PromptSet) -> str:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]
    slug = model.info.name.rstrip("/").split("/")[-1].replace(" ", "-")
    return f"{slug}-{prompt_set.name}-{digest}"


def _same_config(key: dict) -> Callable[[dict], str | None]:
    def check(stored: dict) -> str | None:
        old = stored.get("config_key")
        old = old if isinstance(old, dict) else {}
        diffs = [k for k in {**key, **old} if old.get(k) != key.get(k)]
        return f"its configuration differs in {', '.join(diffs)}" if diffs else None
    return check


def execute_run(model: LoadedModel, prompt_set: PromptSet, probes: Sequence[Any],
                options: RunOptions, *, load_seconds: float | None = None) -> RunDir | MemoryRun:
    """Run ``probes`` over ``prompt_set`` on ``model`` and write the run directory (or, with
    ``options.runs_dir`` None, keep the same manifest and tables in a :class:`MemoryRun`).

    Validation (context length, segments, hook points) happens before the run directory is
    created, so bad input leaves nothing behind.

    With ``options.attention_mask`` every forward of the run (shared and probe-owned) has that
    mask applied to its attention scores (:mod:`workbench.masks`); it is checked to take effect on
    the model first, and recorded in the manifest and the configuration key.

    Raises:
        InputError: a prompt longer than the context, a probe the prompts or model cannot support,
            a malformed attention mask.
        MaskNotApplied: the attention mask does not take effect on this model.
        RunStateError: the run exists (without resume/overwrite) or cannot be resumed.
    """
    t0 = time.perf_counter()
    mask = AttentionMask.parse(options.attention_mask) if options.attention_mask else None
    tokenized, probes = prepare_probes(model, prompt_set, probes)
    hooks = BatchHooks(model, probes, mask, attention=options.attention)
    plan = batch_plan(model, tokenized, hooks, options)
    batches = make_batches(tokenized, plan.batch_size, pad_token_id(model.tokenizer))
    t_tok = time.perf_counter() - t0
    mask_check = verify_mask(model, mask) if mask is not None else None

    key = _config_key(model, prompt_set, probes, plan.batch_size, mask,
                      hooks.attention.implementation)
    run_id = options.run_id or default_run_id(key, model, prompt_set)
    manifest = _manifest(run_id, key, model, prompt_set, tokenized, probes, options, len(batches))
    manifest["batching"]["plan"] = plan.to_dict()
    manifest["attention"] = hooks.attention.to_dict()
    manifest["attention_mask"] = None if mask is None else {"spec": str(mask), "check": mask_check}
    manifest["warnings"] = warnings = input_warnings(tokenized, probes)
    if options.runs_dir is None:  # in memory (the Python API): nothing is written
        run, state = MemoryRun(run_id, manifest), "new"
    else:
        run, state = RunDir.create(options.runs_dir, run_id, manifest, resume=options.resume,
                                   overwrite=options.overwrite, same_config=_same_config(key))
    if state == "complete":  # resuming a finished run: its tables stand as they are
        return run
    timings = {"load_model_s": load_seconds, "tokenize_s": round(t_tok, 3)}
    try:
        run.write_table("prompts", pa.table(prompt_rows(tokenized), schema=PROMPTS_SCHEMA))
        run.write_table("tokens", pa.table(token_rows(tokenized, model.tokenizer),
                                           schema=TOKENS_SCHEMA))
        t1 = time.perf_counter()
        todo = [b for b in batches if not run.batch_done(b.index)]
        n_done = _run_batches(hooks, todo, run, len(batches), options.progress)
        timings["forward_s"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        tables = finalize_tables(run, probes)
        timings["finalize_s"] = round(time.perf_counter() - t2, 3)
        timings["total_s"] = round(time.perf_counter() - t0 + (load_seconds or 0), 3)
        run.update_manifest(status="complete", finished=_now(), tables=tables, timings=timings,
                            warnings=warnings + no_records_warning(tables),
                            batches={"total": len(batches), "run_now": n_done,
                                     "skipped_as_done": len(batches) - len(todo)})
    except KeyboardInterrupt:
        run.update_manifest(status="interrupted", timings=timings, finished=None)
        raise
    except BaseException as err:
        run.update_manifest(status="failed", error=f"{type(err).__name__}: {err}", timings=timings)
        raise
    finally:
        run.release()  # the final status released it; this covers a failed manifest write
    return run


def prepare_probes(model: LoadedModel, prompt_set: PromptSet, probes: Sequence[Any]
                   ) -> tuple[list[TokenizedPrompt], list[Any]]:
    """Tokenise ``prompt_set`` once, check every probe against it and the model (before any
    forward pass or file write) and return the prompts with the prepared probes.

    Raises:
        InputError: a prompt longer than the context, a probe the prompts or model cannot support.
    """
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos,
                                    n_ctx=model.info.n_ctx, model_name=model.info.name,
                                    images=model.images)
    for probe in probes:
        check_hook_points(model, probe)
        probe.check(tokenized, model)
    return tokenized, [probe.prepare(model, tokenized) for probe in probes]


def batch_plan(model: LoadedModel, tokenized: list[TokenizedPrompt], hooks: "BatchHooks",
                options: RunOptions) -> BatchPlan:
    """``options.batch_size`` when given; the stored one when resuming a named run; otherwise
    the automatic plan of :mod:`workbench.memory` for the longest prompt."""
    device_type = model.device.type
    if options.batch_size is not None:
        return BatchPlan(options.batch_size, "given", device_type)
    stored = Path(options.runs_dir or ".") / (options.run_id or "") / MANIFEST
    if options.resume and options.run_id and options.runs_dir and stored.is_file():
        try:  # an unreadable manifest is reported by RunDir.create, in one line
            key = read_manifest_file(stored).get("config_key")
        except (OSError, RunStateError):
            key = None
        size = key.get("batch_size") if isinstance(key, dict) else None
        if isinstance(size, int) and size >= 1:
            return BatchPlan(size, "resumed", device_type)
    return plan_batch(model, max(t.n_tokens for t in tokenized),
                      eager=hooks.attention.implementation == EAGER or bool(hooks.own),
                      needs_logits=any(p.needs_logits for p in hooks.probes) or bool(hooks.own))


def check_hook_points(model: LoadedModel, probe: Any) -> None:
    """Raise :class:`InputError` if the model lacks a hook point the probe needs."""
    names = model.bridge.hook_dict
    for point in probe.hook_points:
        for layer in (0, model.info.n_layers - 1):
            name = f"blocks.{layer}.{point}"
            if name not in names:
                raise InputError(f"probe {probe.name!r} needs hook {name!r}, which model "
                                 f"{model.info.name!r} ({model.info.architecture}) does not have")


def _run_batches(hooks: "BatchHooks", batches: list[Batch], run: RunDir, total: int,
                 show_progress: bool) -> int:
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(f"{run.run_id}", total=total, completed=total - len(batches))
        for batch in batches:
            tables = hooks.run_batch(batch)
            run.write_batch(batch.index, {name: conform(t, run_id=run.run_id, probe=name)
                                          for name, t in tables.items()})
            progress.advance(task)
    return len(batches)


class BatchHooks:
    """Runs batches through the probes: one shared forward for the hooked probes, then each
    ``owns_forward`` probe's own passes.

    The shared forward registers each probe's hook points (only those) for the duration of the
    pass; hooks call ``probe.observe`` with the current batch's state and return ``None``, so the
    activations are never changed. When no probe needs logits the pass stops at ``ln_final``.
    With ``mask``, its score hooks are active around every forward of the batch (probe-owned
    ones included) and run before the probes' hooks.

    ``attention`` (auto | eager | sdpa) picks the shared forward's attention implementation
    (:func:`workbench.attention_impl.choose_attention`; ``self.attention`` holds the choice):
    ``auto`` runs sdpa when no shared-forward probe reads an attention hook. Probe-owned forwards
    always run eager.

    Raises:
        InputError: ``attention="sdpa"`` where it cannot be used.
    """

    def __init__(self, model: LoadedModel, probes: Sequence[Any],
                 mask: AttentionMask | None = None, *, attention: str = AUTO):
        self.model = model
        self.mask_hooks = mask_hooks(model, mask) if mask is not None else []
        self.own = [p for p in probes if p.owns_forward]
        self.probes = [p for p in probes if not p.owns_forward]
        self.states: list[Any] = []
        self.hooks = []
        for i, probe in enumerate(self.probes):
            for point in probe.hook_points:
                for layer in range(model.info.n_layers):
                    self.hooks.append((f"blocks.{layer}.{point}", self._hook(i, layer, point)))
        if not any(p.needs_logits for p in self.probes) and STOP_HOOK in model.bridge.hook_dict:
            self.hooks.append((STOP_HOOK, self._stop))
        if self.probes:
            self.attention = choose_attention(
                model, [pt for p in self.probes for pt in p.hook_points], attention,
                masked=mask is not None)
        else:
            self.attention = AttentionChoice(EAGER, attention, "no shared forward: every probe "
                                             "runs its own (eager) passes")

    def _hook(self, i: int, layer: int, point: str):
        probe = self.probes[i]

        def fn(activation, hook):
            probe.observe(self.states[i], layer, point, activation)
            return None
        return fn

    @staticmethod
    def _stop(activation, hook):
        raise _StopForward

    def run_batch(self, batch: Batch) -> dict[str, pa.Table]:
        """Forward ``batch`` and return each probe's records, keyed by probe name."""
        batch = batch.to(self.model.device)
        out = {}
        with self.model.bridge.hooks(fwd_hooks=self.mask_hooks):
            if self.probes:
                self.states = [p.start(batch, self.model) for p in self.probes]
                fast = self.attention.implementation == SDPA
                with torch.inference_mode(), self.model.bridge.hooks(fwd_hooks=self.hooks), \
                        (sdpa_attention(self.model) if fast else contextlib.nullcontext()):
                    try:
                        self.model.bridge(batch.input_ids, return_type=None,
                                          **batch.model_kwargs())
                    except _StopForward:
                        pass
                for probe, state in zip(self.probes, self.states):
                    out[probe.name] = probe.finish(state)
                self.states = []
            for probe in self.own:
                out[probe.name] = probe.run_batch(self.model, batch)
        return {name: t for name, t in out.items() if t is not None and t.num_rows}


def finalize_tables(run: RunDir, probes: Sequence[Any]) -> dict[str, dict]:
    """Join each table's parts (in part order), add the probe's summaries to record tables, write
    ``<table>.parquet`` and drop the parts. ``prompts`` and ``tokens`` parts (written by sweep
    shards) are joined as they are. Returns ``{table: {"rows", "metrics"}}`` for record tables."""
    by_name = {p.name: p for p in probes}
    tables = {}
    for name in run.part_table_names():
        parts = run.read_parts(name)
        if name in META_TABLES:
            run.write_table(name, pa.concat_tables(parts))
            continue
        table = concat(parts)
        probe = by_name.get(name)
        summary = probe.summarize(table) if probe is not None else None
        if summary is not None and summary.num_rows:
            table = pa.concat_tables([table, conform(summary, run_id=run.run_id, probe=name)])
        table = table.sort_by([("metric", "ascending"), ("layer", "ascending"),
                               ("head", "ascending")])
        run.write_table(name, table)
        tables[name] = {"rows": table.num_rows,
                        "metrics": sorted(set(table.column("metric").to_pylist()))}
    run.drop_parts()
    return tables


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _manifest(run_id: str, key: dict, model: LoadedModel, prompt_set: PromptSet,
              tokenized: list[TokenizedPrompt], probes: Sequence[Any], options: RunOptions,
              n_batches: int) -> dict:
    units = {}
    for probe in probes:
        units.update(probe.units)
    return {
        "run_id": run_id,
        "kind": "probes",
        "status": "running",
        "created": _now(),
        "finished": None,
        "command": options.command or sys.argv,
        "config_key": key,
        "model": model.info.to_dict(),
        "prompts": {
            "name": prompt_set.name,
            "files": [vars(f) for f in prompt_set.files],
            "sha256": prompt_set.sha256,
            "n_prompts": len(tokenized),
            "n_tokens": int(sum(t.n_tokens for t in tokenized)),
            "prepend_bos": model.info.prepend_bos,
        },
        "probes": [{"name": p.name, "params": p.params(), "hook_points": list(p.hook_points),
                    "units": dict(p.units), "headline": list(p.headline)} for p in probes],
        "units": units,
        "batching": {"batch_size": key["batch_size"], "n_batches": n_batches,
                     "order": "by token length (stable)", "padding": "right"},
        "record_schema_version": SCHEMA_VERSION,
        "versions": library_versions(),
        "git": git_state(),
        "device": model.info.device,
        "timings": {},
        "tables": {},
    }


__all__ = ["BatchHooks", "RunOptions", "WorkbenchError", "batch_plan", "execute_run",
           "finalize_tables", "prepare_probes"]


# ``wb.run(...)``: called as a function, this module is the public API's :func:`workbench.api.run`
make_callable(__name__, "workbench.api:run")
