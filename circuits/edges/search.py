"""Edge circuits sized by faithfulness: rankings, the coarse-to-fine search, the random band.

Rankings (MIB, Mueller et al. 2025, arXiv 2504.13151; its released ``run_evaluation.py`` /
``print_results.py``): a circuit of size ``k`` is the top ``k`` edges of a ranking, then pruned
(:func:`circuits.edges.patching.prune`):

* ``signed``: the edges that carry the task first. A score estimates ``m(edge ablated) -
  m(clean)``, so with ``logit_diff`` and ``prob`` the most negative score comes first, with ``kl``
  the most positive (:func:`task_sign`). MIB's CPR uses these circuits (``absolute=False``;
  MIB attributes with the negated logit difference, so its "highest score" is our most negative).
* ``absolute``: the largest ``|score|`` first, whatever the sign. MIB's CMD uses these circuits
  (``absolute=True``). Edges that *oppose* the task (ablating them raises the logit difference,
  e.g. negative name movers' edges) enter early, so the faithfulness of small circuits can be
  negative and the curve is not monotone.

Search (``--select faithfulness=T``): the faithfulness ``f(k) = (m(C_k) - m(empty)) / (m(model) -
m(empty))`` (means over prompts) is measured on the coarse grid of MIB's sizes (the faithfulness
curve itself, :data:`circuits.edges.faithfulness.MIB_FRACTIONS`); the first grid size reaching
``T`` and the grid size before it (or the empty circuit) bracket the answer, and a bisection over
the prefix length ``k`` inside the bracket finds a ``k`` with ``f(k) >= T`` and ``f(k') < T`` for a
``k'`` at most ``max(1, rel_tol * k)`` below it (``rel_tol`` 0: ``k' = k - 1``, the smallest
prefix; the command uses :data:`SEARCH_REL_TOL`, 2 %; one patched forward per step,
``ceil(log2(bracket / tolerance))`` steps at most; prefixes whose pruned circuits coincide are
measured once). The search runs on the ranking whose curve reaches ``T`` at the smaller grid size
(``absolute`` on ties, :func:`search_ranking`). When ``f`` is not monotone the answer is the
first crossing after the last grid size below ``T``: a smaller prefix inside an earlier grid
interval that happens to reach ``T`` is not looked for. When no size up to the cap reaches ``T``,
the best size measured is kept and :attr:`SearchResult.reached` is False.

Random band: ``n_random`` random edge sets of each grid circuit's size (the number of edges
*kept* after pruning), drawn uniformly without replacement from every edge (seeded), evaluated as
they are (not pruned: with the ``corrupted`` ablation an edge from a sender that receives no
circuit edge carries exactly its ablated value, so pruning them changes nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from circuits.edges.graph import EdgeGraph
from circuits.edges.patching import prune
from workbench.errors import InputError

RANKINGS = ("signed", "absolute")
SEARCH_REL_TOL = 0.02  # the bisection stops within 2 % of the crossing


def task_sign(metric: str) -> float:
    """``-1`` for ``logit_diff`` and ``prob`` (an edge that carries the task has a negative score:
    ablating it lowers the metric), ``+1`` for ``kl`` (ablating it raises the divergence)."""
    return 1.0 if metric == "kl" else -1.0


def ranking(scores: np.ndarray, how: str, metric: str) -> np.ndarray:
    """``[n_edges]`` edge indices, best first (stable: ties by edge order).

    Raises:
        InputError: ``how`` is not ``signed`` or ``absolute``.
    """
    if how not in RANKINGS:
        raise InputError(f"edge ranking {how!r} is not one of {', '.join(RANKINGS)}")
    s = np.asarray(scores, float)
    key = np.abs(s) if how == "absolute" else task_sign(metric) * s
    return np.argsort(-key, kind="stable")


def prefix_circuit(graph: EdgeGraph, order: np.ndarray, k: int) -> np.ndarray:
    """The top ``k`` edges of ``order``, pruned, as sorted edge indices."""
    return prune(graph, np.sort(np.asarray(order[:k], dtype=np.int64)))


def grid_sizes(n_edges: int, fractions: Sequence[float]) -> np.ndarray:
    """Prefix lengths of the grid: ``max(1, ceil(f * n_edges))`` per fraction."""
    return np.array([max(1, math.ceil(f * n_edges - 1e-9)) for f in fractions], dtype=np.int64)


def faithfulness(values: np.ndarray, model: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """``(mean m(C) - mean m(empty)) / (mean m(model) - mean m(empty))`` over the last axis."""
    e = np.asarray(empty).mean(-1)
    return (np.asarray(values).mean(-1) - e) / (np.asarray(model).mean(-1) - e)


@dataclass
class SearchResult:
    """Every prefix the search measured, in increasing ``k``.

    Attributes:
        k: ``[n]`` prefix lengths (edges requested); ``kept``: ``[n]`` edges after pruning.
        values: ``[n, n_prompts]`` metric of each circuit; ``f``: ``[n]`` faithfulness.
        on_grid: ``[n]`` whether the size is a grid size (else a bisection step).
        chosen: index into ``k`` of the chosen size; ``reached``: ``f[chosen] >= target``.
        n_forwards: circuits evaluated by patched forwards (the grid's plus the bisection's;
            full and empty circuits not counted).
    """

    target: float
    ranking: str
    k: np.ndarray
    kept: np.ndarray
    values: np.ndarray
    f: np.ndarray
    on_grid: np.ndarray
    chosen: int
    reached: bool
    n_forwards: int
    circuits: dict[int, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def circuit(self) -> np.ndarray:
        """Edge indices of the chosen circuit."""
        return self.circuits[int(self.k[self.chosen])]

    def message(self, cap: int) -> str | None:
        """One line when the target was not reached, else None."""
        if self.reached:
            return None
        return (f"no circuit of up to {cap} edges reaches faithfulness {self.target:g} "
                f"({self.ranking} ranking); kept the best measured: {int(self.kept[self.chosen])} "
                f"edges, faithfulness {self.f[self.chosen]:.3f}")


def search(circuit_of: Callable[[int], np.ndarray], target: float, grid: Sequence[int],
           evaluate: Callable[[list[np.ndarray]], np.ndarray], model: np.ndarray,
           empty: np.ndarray, *, known: dict[int, np.ndarray] | None = None,
           ranking_name: str = "signed", rel_tol: float = 0.0) -> SearchResult:
    """The smallest prefix whose faithfulness reaches ``target`` (module docstring).

    Args:
        circuit_of: prefix length ``k >= 1`` -> the circuit's edge indices (sorted), e.g.
            ``lambda k: prefix_circuit(graph, order, k)``.
        grid: non-decreasing prefix lengths of the coarse grid (the last one is the cap).
        evaluate: circuits (edge index arrays) -> ``[n, n_prompts]`` metric values.
        model, empty: ``[n_prompts]`` metric of the full model and of the empty circuit.
        known: prefix length -> ``[n_prompts]`` values already measured (e.g. the curve's).
        rel_tol: stop the bisection when the bracket ``(lo, hi]`` is at most ``max(1, rel_tol *
            hi)`` prefixes wide (0: the exact crossing); the chosen size ``hi`` reaches the
            target and is at most that much above the crossing.

    Raises:
        InputError: a target that is not finite, or grid sizes that decrease.
    """
    if not math.isfinite(target):
        raise InputError(f"faithfulness target must be finite, got {target}")
    grid = [int(k) for k in grid]
    if not grid or any(b < a for a, b in zip(grid, grid[1:])) or grid[0] < 1:
        raise InputError(f"search grid sizes must not decrease and start from 1, got {grid}")
    grid = list(dict.fromkeys(grid))  # small graphs: several fractions round to one size
    circuits: dict[int, np.ndarray] = {}
    values: dict[int, np.ndarray] = dict(known or {})
    by_circuit: dict[bytes, int] = {}
    forwards = 0

    def circuit(k: int) -> np.ndarray:
        if k not in circuits:
            circuits[k] = np.asarray(circuit_of(k), np.int64) if k else \
                np.array([], np.int64)
        return circuits[k]

    def measure(ks: list[int]) -> None:
        nonlocal forwards
        todo, aliases = [], []
        for k in ks:
            if k in values:
                continue
            key = circuit(k).tobytes()
            if key in by_circuit:  # the same pruned circuit as a prefix measured or pending
                aliases.append((k, by_circuit[key]))
                continue
            by_circuit[key] = k
            todo.append(k)
        if todo:
            got = evaluate([circuit(k) for k in todo])
            forwards += len(todo)
            for k, v in zip(todo, got):
                values[k] = np.asarray(v, float)
        for k, first in aliases:
            values[k] = values[first]

    for k in list(values):
        by_circuit.setdefault(circuit(k).tobytes(), k)

    def f_of(k: int) -> float:
        return float(faithfulness(values[k], model, empty)) if k else 0.0

    measure(grid)
    values[0] = np.asarray(empty, float)
    circuits[0] = np.array([], np.int64)
    hits = [i for i, k in enumerate(grid) if f_of(k) >= target]
    if hits:
        i = hits[0]
        lo, hi = (grid[i - 1] if i else 0), grid[i]
        while hi - lo > max(1, int(rel_tol * hi)):
            mid = (lo + hi) // 2
            measure([mid])
            if f_of(mid) >= target:
                hi = mid
            else:
                lo = mid
        chosen_k, reached = hi, True
    else:
        chosen_k, reached = max(grid, key=f_of), False
    ks = sorted(k for k in values if k > 0)
    for k in ks:
        circuit(k)
    f = np.array([f_of(k) for k in ks])
    return SearchResult(target, ranking_name, np.array(ks, np.int64),
                        np.array([circuits[k].size for k in ks], np.int64),
                        np.stack([values[k] for k in ks]), f,
                        np.array([k in grid for k in ks]), ks.index(chosen_k), reached,
                        forwards, circuits)


def search_ranking(curves: dict[str, np.ndarray], target: float) -> str:
    """The ranking (``curves``: name -> faithfulness at the grid sizes, same grid) whose curve
    reaches ``target`` at the smallest grid size; ``absolute`` on ties and when none does."""
    def first(f):
        hits = np.nonzero(np.asarray(f) >= target)[0]
        return int(hits[0]) if hits.size else len(f)
    return min(sorted(curves, key=lambda name: name != "absolute"),
               key=lambda name: first(curves[name]))


def random_circuits(n_edges: int, sizes: Sequence[int], n_random: int, seed: int = 0
                    ) -> list[list[np.ndarray]]:
    """``n_random`` uniform random edge sets per size (sorted indices, no pruning), seeded."""
    rng = np.random.default_rng(seed)
    return [[np.sort(rng.choice(n_edges, size=int(s), replace=False)) for _ in range(n_random)]
            for s in sizes]
