"""The circuits run's ``--select faithfulness=X`` step: per method, size the circuit
(:func:`circuits.sized.size_circuit`), replace the method's circuit by it, and add the
``faithfulness_curve`` and ``circuit_search`` tables (:mod:`circuits.sized`)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from circuits.discovery import AblationMeans, Faithfulness
from circuits.report import PROBE  # method -> the probe name its records carry
from circuits.sized import (SizedCircuit, circuit_faithfulness, curve_rows, search_rows,
                            size_circuit, subset)
from circuits.tasks import Task, load_task
from workbench.records import concat, conform, records

@dataclass
class Chosen:
    """A method's sized circuit and the faithfulness the ``faithfulness`` table reports for it
    (:func:`circuits.sized.circuit_faithfulness`: full forwards, independent of the search)."""

    sized: SizedCircuit
    faithfulness: Faithfulness


def held_out_task(model, task: Task, n: int) -> Task | None:
    """The ``n`` prompts of the task's file after its scored ones (``None`` for ``n = 0``)."""
    if not n:
        return None
    more = load_task(task.prompt_set.files[0].path, model, n_prompts=len(task) + n)
    return subset(more, len(task), len(task) + n)


def sized_tables(model, task: Task, found: dict, options, means: AblationMeans,
                 timings: dict, run_id: str, tables: dict) -> dict[str, Chosen]:
    """Size every method's circuit on ``task``; set each :class:`circuits.methods.Discovery`'s
    ``circuit`` to the chosen heads; append the rows to ``tables``. Returns ``{method: Chosen}``.
    """
    from circuits.evaluate import mlp_means
    from circuits.mlp_scores import mlp_scores

    sizing, batch = options.sizing, options.discovery.batch_size
    held = held_out_task(model, task, sizing.held_out)
    mlp = None
    if sizing.mlps:
        from circuits.run import _ablation_source

        mlp = mlp_means(model, _ablation_source(model, task, options), batch_size=batch)
    out = {}
    for method in options.methods:
        result, probe = found[method, task.name], PROBE[method]
        start = time.perf_counter()
        scores = mlp_scores(model, task, method, direction=options.discovery.direction,
                            batch_size=batch) if sizing.mlps else None
        sized = size_circuit(model, task, method, result.scores, options.selection.value, means,
                             sizing, mlp=mlp, mlp_scores=scores, n_random=options.n_random,
                             batch_size=batch, held_out=held)
        timings[f"search.{method}.{task.name}_s"] = round(time.perf_counter() - start, 3)
        result.circuit = sorted(sized.heads)
        faith = circuit_faithfulness(model, task, sized.circuit, means, mlp=mlp,
                                     n_random=options.n_random, batch_size=batch)
        out[method] = Chosen(sized, faith)
        rows = [search_rows(sized)]
        if sized.mlps:
            rows.append(records("mlp_member", [1.0] * len(sized.mlps), layer=sized.mlps,
                                segment=task.name))
        if scores is not None:  # the MLPs' place in the ranking
            rows.append(records("mlp_score", scores, layer=np.arange(len(scores)),
                                segment=task.name))
        tables.setdefault("faithfulness_curve", []).append(
            conform(curve_rows(sized), run_id=run_id, probe=probe))
        tables.setdefault("circuit_search", []).append(
            conform(concat(rows), run_id=run_id, probe=probe))
    return out
