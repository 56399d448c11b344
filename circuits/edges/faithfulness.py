"""Faithfulness curves of edge circuits and their areas, with bootstrap spread over prompts.

MIB (Mueller et al. 2025, arXiv 2504.13151; its released code's ``evaluate_area_under_curve``,
github.com/hannamw/MIB-circuit-track ``MIB_circuit_track/evaluation.py``):

* circuits of the top ``fraction x n_edges`` edges of a ranking (rounded up, then pruned,
  :func:`circuits.edges.patching.prune`) at fractions 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100 %;
  the ranking is ``absolute`` (largest ``|score|`` first) or ``signed`` (the edges that carry
  the task first, :mod:`circuits.edges.search`);
* faithfulness ``f(C) = (m(C) - m(empty)) / (m(model) - m(empty))`` with ``m`` the metric averaged
  over prompts, ``m(C)`` measured by edge patching, ``empty`` = every edge patched;
* a curve's areas: the trapezoidal area under ``f`` and under ``|1 - f|`` over the fraction axis
  (linear, ``x`` from 0.001 to 1). MIB's CPR is the first area of the ``signed`` curve (higher is
  better), its CMD the second area of the ``absolute`` curve (lower is better): its
  ``print_results.py`` takes CPR from the ``abs-False`` results and CMD from the ``abs-True`` ones.

Spread: a percentile bootstrap over prompts (resampled with replacement, ``n_boot`` times, seeded):
each resample recomputes the three means, ``f`` at every size and both areas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits.edges.ablation import AblationSource
from circuits.edges.eap import EdgeScores
from circuits.edges.forward import GraphModel
from circuits.edges.patching import circuit_metric
from circuits.edges.search import grid_sizes, prefix_circuit, ranking
from workbench.errors import InputError
from workbench.stats import bootstrap_indices, bootstrap_mean_ci  # noqa: F401 (re-exported)

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def areas(fractions, faithfulness) -> tuple[float, float]:
    """``(CPR, CMD)``: trapezoidal areas under ``f`` and under ``|1 - f|`` over ``fractions``
    (MIB's convention, linear axis). Works along the last axis of ``faithfulness``."""
    x = np.asarray(fractions, float)
    f = np.asarray(faithfulness, float)
    dx = np.diff(x)
    cpr = (dx * (f[..., 1:] + f[..., :-1]) / 2).sum(-1)
    gap = np.abs(1 - f)
    cmd = (dx * (gap[..., 1:] + gap[..., :-1]) / 2).sum(-1)
    return cpr, cmd


def faithfulness_of_means(circuit: np.ndarray, model: np.ndarray, empty: np.ndarray
                          ) -> np.ndarray:
    """``(mean m(C) - mean m(empty)) / (mean m(model) - mean m(empty))`` over the last axis."""
    e = empty.mean(-1)
    return (circuit.mean(-1) - e[..., None]) / (model.mean(-1) - e)[..., None]


class CircuitEvaluator:
    """Edge-patched metric of circuits on one task, each distinct circuit measured once.

    The ablated (e.g. corrupted) sender outputs of each batch are computed once and kept
    (:class:`AblationSource` with ``cache=True``). :attr:`n_forwards` counts the circuits measured
    (one patched forward per batch each); :attr:`model` / :attr:`empty` are the ``[n_prompts]``
    metric with no edge / every edge ablated.
    """

    def __init__(self, model, task, *, metric: str, ablation: str, batch_size: int = 16,
                 graph_model: GraphModel | None = None, progress=None):
        self.model_ref, self.task, self.metric, self.ablation = model, task, metric, ablation
        self.batch_size, self.progress = batch_size, progress
        self.gm = graph_model or GraphModel(model)
        self.source = AblationSource(self.gm, task, ablation, batch_size, cache=True)
        self.memo: dict[bytes, np.ndarray] = {}
        self.n_forwards = 0
        everything = np.arange(self.gm.graph.n_edges)
        self.model, self.empty = self(
            [everything, np.array([], dtype=np.int64)])

    def __call__(self, circuits: list[np.ndarray]) -> np.ndarray:
        """``[len(circuits), n_prompts]`` metric with every edge outside each circuit ablated."""
        keys = [np.asarray(c, dtype=np.int64).tobytes() for c in circuits]
        todo = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if todo:
            got = circuit_metric(self.model_ref, self.task,
                                 [np.frombuffer(k, dtype=np.int64) for k in todo],
                                 metric=self.metric, ablation=self.ablation,
                                 batch_size=self.batch_size, graph_model=self.gm,
                                 source=self.source, progress=self.progress)
            self.n_forwards += len(todo)
            self.memo.update(zip(todo, got))
        return np.stack([self.memo[k] for k in keys]) if keys else \
            np.zeros((0, len(self.task)))


@dataclass
class FaithfulnessCurve:
    """Faithfulness of one method's edge circuits on one task at several sizes.

    Attributes:
        fractions: ``[k]`` requested fraction of edges.
        n_requested, n_kept: ``[k]`` edges requested and left after pruning.
        circuit: ``[k, n_prompts]`` metric with the circuit's edges clean, the rest ablated.
        model, empty: ``[n_prompts]`` metric with no edge / every edge ablated.
        faithfulness, low, high: ``[k]`` f and its bootstrap interval.
        cpr, cmd: areas (``*_low``/``*_high`` their bootstrap intervals).
    """

    task: str
    method: str
    metric: str
    ablation: str
    fractions: np.ndarray
    n_requested: np.ndarray
    n_kept: np.ndarray
    circuit: np.ndarray
    model: np.ndarray
    empty: np.ndarray
    faithfulness: np.ndarray
    low: np.ndarray
    high: np.ndarray
    cpr: float
    cmd: float
    cpr_low: float
    cpr_high: float
    cmd_low: float
    cmd_high: float
    ranking: str = "absolute"
    circuits: list = None


def faithfulness_curve(model, task, scores: EdgeScores, *, fractions=MIB_FRACTIONS,
                       ranking_name: str = "absolute", batch_size: int = 16, n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0,
                       graph_model: GraphModel | None = None, progress=None,
                       evaluator: CircuitEvaluator | None = None) -> FaithfulnessCurve:
    """Evaluate the top-``fraction`` edge circuits of ``scores`` (ranked ``absolute`` or
    ``signed``) by edge patching (same metric and ablation as the scores).

    Raises:
        InputError: fractions not increasing in (0, 1]; an unknown ranking.
    """
    x = np.asarray(fractions, float)
    if x.size < 2 or (np.diff(x) <= 0).any() or x[0] <= 0 or x[-1] > 1:
        raise InputError(f"faithfulness fractions must increase within (0, 1], got {list(x)}")
    order = ranking(scores.scores, ranking_name, scores.metric)
    ev = evaluator or CircuitEvaluator(model, task, metric=scores.metric,
                                       ablation=scores.ablation, batch_size=batch_size,
                                       graph_model=graph_model, progress=progress)
    graph = ev.gm.graph
    requested = grid_sizes(graph.n_edges, x)
    circuits = [prefix_circuit(graph, order, k) for k in requested]
    full, empty, circuit = ev.model, ev.empty, ev(circuits)
    f = faithfulness_of_means(circuit, full, empty)
    cpr, cmd = areas(x, f)
    idx = bootstrap_indices(len(task), n_boot, seed)
    boot = faithfulness_of_means(circuit[:, idx].transpose(1, 0, 2), full[idx], empty[idx])
    boot_cpr, boot_cmd = areas(x, boot)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    low, high = np.nanpercentile(boot, q, axis=0)
    (cl, ch), (ml, mh) = np.nanpercentile(boot_cpr, q), np.nanpercentile(boot_cmd, q)
    return FaithfulnessCurve(task.name, scores.method, scores.metric, scores.ablation, x,
                             requested, np.array([c.size for c in circuits]), circuit, full,
                             empty, f, low, high, float(cpr), float(cmd), float(cl), float(ch),
                             float(ml), float(mh), ranking_name, circuits)
