"""``workbench circuits``: score heads, select circuits, measure faithfulness and overlap.

Tables in ``runs/<run_id>/`` (record schema, :mod:`workbench.records`; ``probe`` = the method:
``activation_patching``, ``attribution_patching`` or ``path_patching``; ``segment`` = the task name;
units in ``run.json``):

* ``task_metrics`` (probe ``task``): ``logit_diff`` per prompt with ``condition`` ``clean`` /
  ``corrupted``; ``mean_logit_diff`` and ``accuracy`` per condition (``prompt_id`` null).
* ``head_effects``: ``logit_diff`` per (prompt, layer, head) with the head patched, ``effect`` and
  ``score`` per (layer, head); ``condition`` = direction (path patching: plus stage and receivers).
* ``circuits``: ``member`` (value = the head's score), one row per circuit head; ``edge`` rows
  (path patching) with ``layer``/``head`` = the sender and ``condition`` = ``receiver=L.H`` or
  ``receiver=logits``; ``size`` (heads in the circuit; layer and head null).
* ``faithfulness``: ``logit_diff`` with ``condition`` ``model`` / ``circuit`` / ``empty``;
  ``faithfulness``, ``faithfulness_normalised``, ``faithfulness_random``, ``circuit_accuracy``;
  ``faithfulness_random_draw`` per random circuit (``condition`` ``draw=i``).
* ``overlap``: one set of rows per pair of tasks, ``segment`` = ``"taskA|taskB"`` (order of
  ``--task``): ``jaccard``, ``overlap_coefficient``, ``shared_over_first``, ``shared_over_second``,
  ``n_shared``, ``size_first``, ``size_second``, ``expected_shared``, ``p_value``,
  ``expected_jaccard`` (the random baseline of ``jaccard``); and ``shared``
  rows (value 1) naming each shared head by ``layer``/``head``.
* ``spot_check`` (attribution, unless ``--spot-check 0``): per top head by ``|attribution|``
  (:mod:`circuits.spot_check`): ``score_attribution``, ``score_activation``, ``disagrees`` (0/1),
  ``worst_effect_attribution`` / ``worst_effect_activation`` with that prompt's ``prompt_id``.
* ``directions`` (``--both-directions``; :mod:`circuits.directions`): per head of any method's
  circuit, ``score_noising``, ``score_denoising`` and ``one_direction_only`` (0/1).
* ``patching_grid`` (``--grids``) and ``direct_logit_attribution`` (``--dla``):
  :mod:`circuits.components`.
* ``ioi_classes`` (``--ioi-classes``; :mod:`circuits.ioi_classes`): the IOI head classes and
  their evidence (path-patching scores per stage, attention, copy scores, backup effects).
* ``method_agreement`` (with two or more methods): ``spearman`` of the per-head scores (path
  patching: stage 1) per task, ``condition`` = ``"methodA~methodB"``.
* ``faithfulness_curve`` and ``circuit_search`` (``--select faithfulness=F``): the size-faithfulness
  curve with its random band, and the search, refinement and held-out check
  (:mod:`circuits.sized`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import asdict
from itertools import combinations

import numpy as np
import pyarrow as pa
import torch

from circuits.components import component_tables
from circuits.directions import compare_directions
from circuits.discovery import Faithfulness, ablation_means, faithfulness
from circuits.effects import check_positions, spearman
from circuits.ioi_classes import IOICriteria
from circuits.methods import METHODS, Discovery
from circuits.options import UNITS, CircuitsOptions, check_methods
from circuits.overlap import Overlap, overlap_table
from circuits.progress import CircuitsProgress, plan
from circuits.report import PROBE, report  # noqa: F401 (report: the CLI's entry point)
from circuits.sized_run import sized_tables
from circuits.tasks import Task, load_task
from workbench.errors import InputError
from workbench.heads import check_heads, format_head, head_columns
from workbench.metrics import accuracy
from workbench.phases import Phases
from workbench.records import (PROMPTS_SCHEMA, SCHEMA_VERSION, TOKENS_SCHEMA, concat, conform,
                               records, string_column)
from workbench.run import git_state, library_versions
from workbench.store import RunDir, same_config_key
from workbench.tokens import prompt_rows, token_rows


def check_head_range(model, options: CircuitsOptions) -> None:
    """Raise :class:`InputError` naming a ``--heads`` item outside the model."""
    if options.discovery.heads is not None:
        check_heads(options.discovery.heads, model.info.n_layers, model.info.n_heads,
                    where="--heads")


def load_tasks(specs: list[str], model, *, n_prompts: int | None, positions: str | None
               ) -> list[Task]:
    """Load and check every task (and the patching positions) before anything is written."""
    tasks = [load_task(spec, model, n_prompts=n_prompts) for spec in specs]
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"a task is named twice: {', '.join(names)}")
    for task in tasks:
        check_positions(task, positions)
    return tasks


def check_ioi_tasks(tasks: list[Task], options: CircuitsOptions) -> None:
    """Refuse (one line) ``--ioi-classes`` for a task that is not run or lacks the IOI positions."""
    from circuits.ioi_run import check_ioi_tasks as check

    check(tasks, options.ioi_classes)


def execute_circuits(model, tasks: list[Task], options: CircuitsOptions) -> RunDir:
    """Run every method on every task, then faithfulness, overlap and agreement; write the run.

    Raises:
        InputError: an unknown method or duplicate task, before the run directory is created.
        RunStateError: the run exists and neither ``resume`` nor ``overwrite`` is on, or it was
            made with another configuration (``resume``: its finished phases are reused).
    """
    check_methods(options.methods)
    check_head_range(model, options)
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise InputError(f"a task is named twice: {', '.join(names)}")
    for task in tasks:
        check_positions(task, options.discovery.positions)
    check_ioi_tasks(tasks, options)
    manifest = _manifest(model, tasks, options)
    run, state = RunDir.create(options.runs_dir, manifest["run_id"], manifest,
                               resume=options.resume, overwrite=options.overwrite,
                               same_config=same_config_key(manifest["config_key"]))
    if state == "complete":
        return run
    timings: dict[str, float] = {}
    with Phases.guarding(run, timings=timings) as phases:  # finished phases, for --resume
        with CircuitsProgress(options.progress, options.console) as bars:
            found = _discover_all(model, tasks, options, timings, bars, phases)
            tables = _tables(model, tasks, found, options, timings, run.run_id, bars, phases)
        clean = [c for t in tasks for c in t.clean]
        run.write_table("prompts", pa.table(prompt_rows(clean), schema=PROMPTS_SCHEMA))
        run.write_table("tokens", pa.table(token_rows(clean, model.tokenizer), schema=TOKENS_SCHEMA))
        written = {}
        for name, table in tables.items():
            run.write_table(name, table)
            written[name] = {"rows": table.num_rows,
                             "metrics": sorted(set(table.column("metric").to_pylist()))}
        run.update_manifest(status="complete", finished=_now(), tables=written, timings=timings)
    return run


def _discover_all(model, tasks, options, timings, bars: CircuitsProgress, phases=Phases(None)
                  ) -> dict[tuple[str, str], Discovery]:
    found = {}
    for method in options.methods:
        for task in tasks:
            with bars.phase(f"{method} {task.name}", "heads x batches") as phase:
                result = phases.run(f"discovery {method} {task.name}", lambda: METHODS[method](
                    model, task, options.selection, options.discovery, progress=phase))
            found[method, task.name] = result
            timings[f"{method}.{task.name}_s"] = round(result.seconds, 3)
    if options.both_directions:
        d = options.discovery
        for task in tasks:
            heads = sorted({h for m in options.methods for h in found[m, task.name].circuit})
            with bars.phase(f"both directions {task.name}", "heads x batches") as phase:
                plan(phase, 2 * len(heads) * len(task.batches(d.batch_size)))
                found["directions", task.name] = phases.run(
                    f"directions {task.name}", lambda: compare_directions(
                        model, task, heads, positions=d.positions, batch_size=d.batch_size,
                        heads_per_forward=d.heads_per_forward, progress=phase))
    return found


def _tables(model, tasks, found, options, timings, run_id: str, bars: CircuitsProgress,
            phases=Phases(None)) -> dict[str, pa.Table]:
    tables: dict[str, list[pa.Table]] = {"task_metrics": [], "head_effects": [], "circuits": [],
                                         "faithfulness": []}
    for task in tasks:
        with bars.phase(f"faithfulness {task.name}", "batches") as phase:
            _task_tables(model, task, found, options, timings, run_id, tables, phase, phases)
    checks = [conform(found[m, t.name].spot_check.records(), run_id=run_id, probe=PROBE[m])
              for m in options.methods for t in tasks if found[m, t.name].spot_check is not None]
    if checks:
        tables["spot_check"] = checks
    if options.both_directions:
        tables["directions"] = [conform(found["directions", t.name].records(), run_id=run_id,
                                        probe="activation_patching") for t in tasks]
    n_total = model.info.n_layers * model.info.n_heads
    if len(tasks) > 1:
        tables["overlap"] = [
            conform(_overlap_rows(o), run_id=run_id, probe=PROBE[method])
            for method in options.methods
            for o in overlap_table({t.name: found[method, t.name].circuit for t in tasks}, n_total)]
    tables.update({name: [table] for name, table in phases.run("components", lambda: (
        component_tables(model, tasks, options, run_id, bars, timings))).items()})
    if options.ioi_classes:
        from circuits.ioi_run import ioi_tables

        tables.update({name: [table] for name, table in phases.run("ioi_classes", lambda: (
            ioi_tables(model, tasks, options, run_id, bars, timings))).items()})
    if len(options.methods) > 1:
        tables["method_agreement"] = [conform(_agreement_rows(found, tasks, options.methods),
                                              run_id=run_id, probe="agreement")]
    return {name: concat(parts) for name, parts in tables.items()}


def _task_tables(model, task, found, options, timings, run_id, tables, phase,
                 phases=Phases(None)) -> None:
    """Task metrics, head effects, circuits and faithfulness rows of one task (into ``tables``),
    advancing ``phase`` per batch of the ablation means and of every faithfulness pass."""
    effects = found[options.methods[0], task.name].effects[0]
    tables["task_metrics"].append(conform(_task_rows(effects), run_id=run_id, probe="task"))
    means = phases.run(f"means {task.name}", lambda: _ablation_means(model, task, options, phase))
    plan(phase, len(options.methods) * (3 + options.n_random)
         * len(task.batches(options.discovery.batch_size)))
    sized = {}
    if options.selection.by_faithfulness:  # choose each method's circuit (circuits.sized_run)
        sized = sized_tables(model, task, found, options, means, timings, run_id, tables)
    for method in options.methods:
        result, probe = found[method, task.name], PROBE[method]
        tables["head_effects"] += [conform(e.records(), run_id=run_id, probe=probe)
                                   for e in result.effects]
        tables["circuits"].append(conform(_circuit_rows(result), run_id=run_id, probe=probe))
        if not result.circuit and method not in sized:  # nothing selected: nothing to measure
            continue
        start = time.perf_counter()
        faith = sized[method].faithfulness if method in sized else phases.run(
            f"faithfulness {method} {task.name}", lambda: faithfulness(
                model, task, result.circuit, means=means, n_random=options.n_random,
                batch_size=options.discovery.batch_size, progress=phase))
        timings[f"faithfulness.{method}.{task.name}_s"] = round(time.perf_counter() - start, 3)
        tables["faithfulness"].append(conform(_faith_rows(faith, task.name), run_id=run_id,
                                              probe=probe))


def _ablation_means(model, task: Task, options: CircuitsOptions, phase=None):
    """Means over the corrupted prompts of the task's whole file (or its first ``mean_prompts``,
    never fewer than the scored prompts, so every scored prompt's length has a mean)."""
    source = _ablation_source(model, task, options)
    plan(phase, len(source.batches(options.discovery.batch_size)))
    return ablation_means(model, source, batch_size=options.discovery.batch_size, progress=phase)


def _ablation_source(model, task: Task, options: CircuitsOptions) -> Task:
    """The prompts whose corrupted runs the ablation means average (:func:`_ablation_means`)."""
    n = None if options.mean_prompts is None else max(options.mean_prompts, len(task))
    return load_task(task.prompt_set.files[0].path, model, n_prompts=n)


def _task_rows(effects) -> pa.Table:
    ids = effects.prompt_ids
    parts = []
    for condition, ld in (("clean", effects.clean), ("corrupted", effects.corrupted)):
        parts += [records("logit_diff", ld, prompt_id=string_column(ids, np.arange(len(ids))),
                          segment=effects.task, condition=condition),
                  records("mean_logit_diff", ld.mean(), segment=effects.task, condition=condition),
                  records("accuracy", accuracy(torch.from_numpy(ld)), segment=effects.task,
                          condition=condition)]
    return concat(parts)


def _circuit_rows(result: Discovery) -> pa.Table:
    layer, head = head_columns(result.circuit)
    parts = [records("member", result.scores[layer, head] if len(layer) else [], layer=layer,
                     head=head, segment=result.task),
             records("size", len(result.circuit), segment=result.task)]
    if result.edges:
        receivers = [r if isinstance(r, str) else format_head(r) for _, r, _ in result.edges]
        parts.append(records("edge", [w for *_, w in result.edges],
                             layer=[s[0] for s, _, _ in result.edges],
                             head=[s[1] for s, _, _ in result.edges], segment=result.task,
                             condition=np.array([f"receiver={r}" for r in receivers])))
    return concat(parts)


def _faith_rows(faith: Faithfulness, task: str) -> pa.Table:
    parts = [records("logit_diff", value, segment=task, condition=condition)
             for condition, value in (("model", faith.model), ("circuit", faith.circuit),
                                      ("empty", faith.empty))]
    parts += [records(metric, value, segment=task) for metric, value in (
        ("faithfulness", faith.faithfulness), ("faithfulness_normalised", faith.normalised),
        ("faithfulness_random", faith.random), ("circuit_accuracy", faith.circuit_accuracy))]
    for metric in ("faithfulness", "faithfulness_normalised"):
        lo, hi = faith.interval(metric)
        parts += [records(f"{metric}_lo", lo, segment=task),
                  records(f"{metric}_hi", hi, segment=task)]
    if faith.random_draws:  # one row per random circuit (condition draw=i): the baseline's spread
        parts.append(records("faithfulness_random_draw", list(faith.random_draws), segment=task,
                             condition=np.array([f"draw={i}" for i in
                                                 range(len(faith.random_draws))])))
    return concat(parts)


def _overlap_rows(o: Overlap) -> pa.Table:
    pair = f"{o.first}|{o.second}"
    parts = [records(metric, getattr(o, metric), segment=pair) for metric in (
        "jaccard", "overlap_coefficient", "shared_over_first", "shared_over_second", "n_shared",
        "size_first", "size_second", "expected_shared", "p_value", "expected_jaccard")]
    if o.shared:
        parts.append(records("shared", np.ones(len(o.shared)), layer=[h[0] for h in o.shared],
                             head=[h[1] for h in o.shared], segment=pair))
    return concat(parts)


def _agreement_rows(found, tasks, methods) -> pa.Table:
    parts = []
    for a, b in combinations(methods, 2):
        for task in tasks:
            rho = spearman(found[a, task.name].effects[0].score,
                           found[b, task.name].effects[0].score)
            parts.append(records("spearman", rho, segment=task.name,
                                 condition=f"{PROBE[a]}~{PROBE[b]}"))
    return concat(parts)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _manifest(model, tasks: list[Task], options: CircuitsOptions) -> dict:
    info = model.info
    config = {"model": info.name, "model_file_sha256": info.details.get("file_sha256"),
              "dtype": info.dtype, "prepend_bos": info.prepend_bos,
              "tasks": [{"name": t.name, "sha256": t.prompt_set.sha256, "n_prompts": len(t)}
                        for t in tasks],
              "methods": options.methods, "selection": str(options.selection),
              "both_directions": options.both_directions,
              **({"grids": list(options.grids)} if options.grids else {}),
              **({"grid_layers": list(options.grid_layers)} if options.grid_layers else {}),
              **({"dla": True} if options.dla else {}),
              **({"ioi_classes": {"tasks": list(options.ioi_classes),
                                  "criteria": asdict(IOICriteria())}}
                 if options.ioi_classes else {}),
              "discovery": asdict(options.discovery), "n_random": options.n_random,
              "mean_prompts": options.mean_prompts,
              **({"sizing": asdict(options.sizing)} if options.selection.by_faithfulness
                 else {})}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    slug = info.name.rstrip("/").split("/")[-1].replace(" ", "-")
    run_id = options.run_id or f"{slug}-circuits-{'+'.join(t.name for t in tasks)}-{digest}"
    return {
        "run_id": run_id, "kind": "circuits", "status": "running", "created": _now(),
        "finished": None, "command": sys.argv, "config_key": config, "model": info.to_dict(),
        "prompts": {"name": "+".join(t.name for t in tasks),
                    "files": [vars(f) for t in tasks for f in t.prompt_set.files],
                    "n_prompts": sum(len(t) for t in tasks),
                    "n_tokens": int(sum(c.n_tokens for t in tasks for c in t.clean)),
                    "prepend_bos": info.prepend_bos},
        "probes": [{"name": PROBE[m], "params": {**asdict(options.discovery),
                                                  "selection": str(options.selection),
                                                  "n_random": options.n_random,
                                                  "mean_prompts": options.mean_prompts},
                    "hook_points": ["attn.hook_z"], "units": UNITS} for m in options.methods],
        "units": UNITS, "record_schema_version": SCHEMA_VERSION,
        "conventions": {"segment": "task name (overlap: 'taskA|taskB')",
                        "condition": "direction / clean|corrupted / receiver=... (see docs)"},
        "versions": library_versions(), "git": git_state(), "device": info.device,
        "timings": {}, "tables": {},
    }
