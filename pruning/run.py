"""Run directories of ``workbench heads`` (kind ``heads``): records, manifest, learned specs.

Tables in ``runs/<run_id>/`` (record schema, :mod:`workbench.records`; units in ``run.json``;
``<metric>`` is ``lm_loss`` or ``logit_diff``, see :mod:`pruning.objectives`):

* ``head_importance`` (probe ``head_importance``; every command but ``learn-gates``):
  ``gate_gradient`` per (prompt, layer, head), ``dL(x)/dg_h`` at g = 1 (signed);
  ``importance`` per (layer, head), ``E_x |dL/dg_h|``; ``importance_norm``, that divided by the
  layer's l2 norm; ``<metric>`` per prompt of the unmodified model.
* ``pruning_curve`` (probe ``pruning``): ``<metric>`` per (prompt, step) and ``mean_<metric>`` /
  ``degradation`` per step, ``condition`` = ``pruned=<fraction of heads removed>``, ``segment`` =
  the order (``importance``, ``random-<seed>``); ``removable_fraction`` per order, and for
  ``segment`` = ``random`` the mean over the seeds (``random_min`` / ``random_max`` their range).
* ``learned_gates`` (probe ``l0_gates``), ``condition`` = ``lambda=<value>``: ``gate``
  (deterministic) and ``log_alpha`` per (layer, head); per lambda ``open_gates``,
  ``expected_open_gates``, ``train_loss``, ``mean_<metric>`` and ``degradation`` on the held-out
  prompts, ``<metric>`` per held-out prompt; ``mean_<metric>`` of the unmodified model on the
  held-out prompts with ``condition`` = ``baseline``. The spec of each lambda is written next to
  the tables as ``gates_lambda=<value>.json`` (load it with ``workbench intervene --spec``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from pruning.importance import Importance
from pruning.learn import LearnedGates
from pruning.objectives import PromptData, degradation
from pruning.prune import Curve, removable_fraction
from workbench.records import (PROMPTS_SCHEMA, SCHEMA_VERSION, TOKENS_SCHEMA, concat, conform,
                               records, string_column)
from workbench.run import git_state, library_versions
from workbench.store import RunDir, atomic_write_json, same_config_key
from workbench.tokens import prompt_rows, token_rows


@dataclass
class HeadsOptions:
    runs_dir: Path = Path("runs")
    run_id: str | None = None
    overwrite: bool = False
    progress: bool = True
    batch_size: int = 8
    command: list[str] | None = None
    params: dict = field(default_factory=dict)  # the command's parameters, for the manifest
    resume: bool = False  # continue an interrupted run (finished phases reused: workbench.phases)


def units(metric: str, unit: str) -> dict[str, str]:
    return {"gate_gradient": f"{unit} per unit gate (dL/dg at g = 1)",
            "importance": f"{unit} per unit gate (E_x |dL/dg|)",
            "importance_norm": "dimensionless (importance / layer l2 norm)",
            metric: unit, f"mean_{metric}": unit,
            "degradation": "fraction of the unmodified model's value (positive = worse)",
            "removable_fraction": "fraction of all heads (<= tolerance degradation)",
            "gate": "gate value in [0, 1] (deterministic hard-concrete gate)",
            "log_alpha": "hard-concrete log alpha", "open_gates": "heads with gate > 0",
            "expected_open_gates": "heads (sum of P(gate != 0))",
            "train_loss": "training loss (nats; softplus(-LD) for logit_diff)"}


def start_run(model, data: PromptData, prompt_set, command: str, options: HeadsOptions
              ) -> RunDir:
    """Create the run directory with its manifest (``status`` running), or reopen it with
    ``options.resume`` (``run.state``: ``"resumed"``, or ``"complete"``: nothing to do).

    Raises:
        RunStateError: the run exists and neither ``resume`` nor ``overwrite`` is on, or it was
            made with another configuration.
    """
    obj = data.objective
    config = {"command": command, "model": model.info.name, "prompts": prompt_set.sha256,
              "prompt_ids": data.ids, "objective": obj.name, **options.params}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    slug = model.info.name.rstrip("/").split("/")[-1].replace(" ", "-")
    run_id = options.run_id or f"{slug}-heads-{command}-{prompt_set.name}-{digest[:8]}"
    config["batch_size"] = options.batch_size  # the batches' sums: part of the numbers
    manifest = {
        "run_id": run_id, "kind": "heads", "status": "running", "created": _now(),
        "finished": None, "command": options.command or sys.argv, "model": model.info.to_dict(),
        "prompts": {"name": prompt_set.name, "files": [vars(f) for f in prompt_set.files],
                    "sha256": prompt_set.sha256, "n_prompts": len(data.ids),
                    "n_tokens": int(sum(t.n_tokens for t in data.tokenized)),
                    "prepend_bos": model.info.prepend_bos},
        "heads": {"command": command, "objective": obj.name, "metric": obj.metric,
                  **options.params},
        "probes": [], "units": units(obj.metric, obj.unit),
        "record_schema_version": SCHEMA_VERSION, "versions": library_versions(),
        "git": git_state(), "device": model.info.device, "timings": {}, "tables": {},
        "config_key": config}
    run, _ = RunDir.create(options.runs_dir, run_id, manifest, resume=options.resume,
                           overwrite=options.overwrite, same_config=same_config_key(config))
    return run


def finish_run(run: RunDir, model, data: PromptData, tables: dict[str, pa.Table],
               timings: dict, **extra) -> RunDir:
    """Write the tables (plus ``prompts`` and ``tokens``) and mark the run complete."""
    tok = list(data.tokenized)
    run.write_table("prompts", pa.table(prompt_rows(tok), schema=PROMPTS_SCHEMA))
    run.write_table("tokens", pa.table(token_rows(tok, model.tokenizer), schema=TOKENS_SCHEMA))
    written = {}
    for name, table in tables.items():
        table = conform(table, run_id=run.run_id, probe=PROBES[name])
        run.write_table(name, table)
        written[name] = {"rows": table.num_rows,
                         "metrics": sorted(set(table.column("metric").to_pylist()))}
    run.update_manifest(status="complete", finished=_now(), tables=written, timings=timings,
                        **extra)
    return run


PROBES = {"head_importance": "head_importance", "pruning_curve": "pruning",
          "learned_gates": "l0_gates"}


def _grid(values: np.ndarray) -> dict:
    n_layers, n_heads = values.shape[-2:]
    return {"layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers)}


def importance_table(imp: Importance, metric: str) -> pa.Table:
    n_prompts, n_layers, n_heads = imp.gradients.shape
    per = n_layers * n_heads
    grid = _grid(imp.raw)
    ids = string_column(imp.prompt_ids, np.repeat(np.arange(n_prompts), per))
    return concat([
        records("gate_gradient", imp.gradients.ravel(), layer=np.tile(grid["layer"], n_prompts),
                head=np.tile(grid["head"], n_prompts), prompt_id=ids),
        records("importance", imp.raw.ravel(), **grid),
        records("importance_norm", imp.normalised.ravel(), **grid),
        records(metric, imp.values, prompt_id=np.array(imp.prompt_ids))])


def curve_table(curves: list[Curve], prompt_ids: list[str], objective, n_total: int,
                tolerance: float) -> tuple[pa.Table, dict[str, float]]:
    """The ``pruning_curve`` table and the removable fraction of every order (and ``random``)."""
    metric, parts, fractions = objective.metric, [], {}
    for curve in curves:
        means = curve.means()
        base = float(means[0])
        for count, values, mean in zip(curve.counts, curve.values, means):
            cond = f"pruned={count / n_total:.4g}"
            parts += [records(metric, values, prompt_id=np.array(prompt_ids), segment=curve.order_name,
                              condition=cond),
                      records(f"mean_{metric}", mean, segment=curve.order_name, condition=cond),
                      records("degradation", degradation(objective, base, float(mean)),
                              segment=curve.order_name, condition=cond)]
        fractions[curve.order_name] = removable_fraction(curve.counts, means, base, objective,
                                                         n_total, tolerance)
    randoms = [v for k, v in fractions.items() if k.startswith("random-")]
    if randoms:
        fractions.update(random=float(np.mean(randoms)), random_min=float(min(randoms)),
                         random_max=float(max(randoms)))
    parts += [records("removable_fraction", v, segment=k) for k, v in fractions.items()]
    return concat(parts), fractions


def gates_table(learned: list[LearnedGates], eval_ids: list[str], base: np.ndarray,
                objective) -> pa.Table:
    metric = objective.metric
    parts = [records(f"mean_{metric}", float(base.mean()), condition="baseline"),
             records(metric, base, prompt_id=np.array(eval_ids), condition="baseline")]
    for item in learned:
        cond = lambda_label(item.lam)
        grid = _grid(item.gates)
        mean = float(item.eval_values.mean())
        parts += [records("gate", item.gates.ravel(), condition=cond, **grid),
                  records("log_alpha", item.log_alpha.ravel(), condition=cond, **grid),
                  records("open_gates", item.open_gates, condition=cond),
                  records("expected_open_gates", item.expected_open, condition=cond),
                  records("train_loss", item.train_loss, condition=cond),
                  records(f"mean_{metric}", mean, condition=cond),
                  records("degradation", degradation(objective, float(base.mean()), mean),
                          condition=cond),
                  records(metric, item.eval_values, prompt_id=np.array(eval_ids),
                          condition=cond)]
    return concat(parts)


def lambda_label(lam: float) -> str:
    return f"lambda={lam:g}"


def write_spec(run: RunDir, learned: LearnedGates, spec: list[dict]) -> Path:
    """``<run>/gates_lambda=<value>.json``: the learned gates as a ``scale_head`` spec."""
    path = run.path / f"gates_{lambda_label(learned.lam)}.json"
    atomic_write_json(path, spec)
    return path


class Timer:
    """Wall-clock seconds of named phases, for the manifest's ``timings``."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[f"{name}_s"] = round(now - self._start, 3)
        self._start = now


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
