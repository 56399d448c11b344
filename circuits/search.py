"""Circuits sized by faithfulness: the smallest faithful prefix of a ranking, its curve, its
random-circuit band (MIB, Mueller et al. 2025, arXiv 2504.13151; ACDC, Conmy et al. 2023, arXiv
2304.14997).

Normalised faithfulness of a circuit C is ``f(C) = (m(C) - m(empty)) / (m(model) - m(empty))``
with ``m`` the mean clean logit difference with every node outside C mean-ablated
(:mod:`circuits.evaluate`); ``f(empty) = 0`` and ``f(every node) = 1`` by construction.

:func:`smallest_prefix` walks a ranking (nodes by |score|, :func:`ranking`) coarse to fine: it
evaluates the prefixes of a geometric grid of sizes (:func:`size_grid`, one batched call: this is
*the faithfulness curve*), takes the first grid size whose ``f`` reaches the target and bisects
between it and the grid size before it, one size per step. The answer is the smallest size at
which the sampled curve first reaches the target; it is the smallest faithful prefix whenever ``f``
does not dip back below the target between two grid sizes before that (true of a curve monotone in
size). Cost: ``len(grid) + ceil(log2(gap))`` evaluations, where ``gap`` is the bracket's width (at
most ``(ratio - 1) x size``). When no size up to the cap reaches the target the search says so
(``reached`` False) and keeps the most faithful size evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from circuits.evaluate import MLP, CircuitEvaluator, Node
from workbench.errors import InputError

GRID_RATIO = 2 ** 0.5
MAX_GRID = 64  # sizes in one curve, at most


def ranking(scores: np.ndarray, mlp_scores: np.ndarray | None = None, *,
            absolute: bool = True) -> list[Node]:
    """Nodes by score, best first: heads from ``[n_layers, n_heads]`` scores and (optionally) MLPs
    ``(layer, MLP)`` from ``[n_layers]`` scores; by |score| unless ``absolute`` is False (heads
    that hurt the task, like IOI's negative name movers, rank by their magnitude too). NaN scores
    are left out; ties keep node order (layer, then head, MLP after the layer's heads)."""
    scores = np.asarray(scores, float)
    nodes = [(layer, head) for layer in range(scores.shape[0]) for head in range(scores.shape[1])]
    values = list(scores.ravel())
    if mlp_scores is not None:
        nodes += [(layer, MLP) for layer in range(len(mlp_scores))]
        values += list(np.asarray(mlp_scores, float))
    values = np.abs(values) if absolute else np.asarray(values, float)
    order = sorted((i for i in range(len(nodes)) if np.isfinite(values[i])),
                   key=lambda i: (-values[i], nodes[i][0], nodes[i][1] % 10 ** 6))
    return [nodes[i] for i in order]


def size_grid(cap: int, ratio: float = GRID_RATIO) -> list[int]:
    """Sizes ``round(ratio ** k)`` for k = 0, 1, ... (``1, 2, 3, 4, 6, 8, 11, 16, 23, ...`` for
    the default ratio sqrt 2) below ``cap``, and ``cap`` itself.

    Raises:
        InputError: ``cap < 1`` or ``ratio <= 1``.
    """
    if cap < 1:
        raise InputError(f"the circuit size cap must be at least 1, got {cap}")
    if not ratio > 1:
        raise InputError(f"the size grid's ratio must be above 1, got {ratio}")
    sizes, k = {cap}, 0
    while ratio ** k < cap:
        sizes.add(int(round(ratio ** k)))
        k += 1
    return sorted(s for s in sizes if s <= cap)


@dataclass
class SizeSearch:
    """The coarse-to-fine search's result (module docstring).

    Attributes:
        curve: every size evaluated -> its normalised faithfulness (size 0: the empty circuit, 0).
        grid: the coarse sizes (the faithfulness curve proper).
        chosen: the smallest faithful size found, or the most faithful size when none reached.
        reached: some size up to ``cap`` reached ``target``.
        evaluations: circuits evaluated (the grid's and the bisection's).
    """

    target: float
    cap: int
    grid: list[int]
    curve: dict[int, float]
    chosen: int
    reached: bool
    evaluations: int
    bisected: list[int] = field(default_factory=list)

    def note(self) -> str:
        """One line: what was found."""
        if self.reached:
            return (f"smallest faithful prefix: {self.chosen} nodes (f = "
                    f"{self.curve[self.chosen]:.3f} >= {self.target:g})")
        return (f"no prefix up to {self.cap} nodes reaches faithfulness {self.target:g}; kept the "
                f"best, {self.chosen} nodes (f = {self.curve[self.chosen]:.3f})")


def smallest_prefix(evaluate: Callable[[Sequence[int]], Sequence[float]], target: float, cap: int,
                    *, grid: Sequence[int] | None = None) -> SizeSearch:
    """The smallest prefix size whose faithfulness reaches ``target`` (module docstring).

    Args:
        evaluate: sizes -> their normalised faithfulness (called once with the whole grid, then
            once per bisection step with one size).
        target: the faithfulness to reach (> 0).
        cap: the largest size considered.
        grid: the coarse sizes (default :func:`size_grid`); sizes above ``cap`` are dropped.

    Raises:
        InputError: a target that is not a positive finite number, or an empty grid.
    """
    if not (np.isfinite(target) and target > 0):
        raise InputError(f"faithfulness target {target} must be a finite number above 0")
    grid = sorted({int(s) for s in (grid or size_grid(cap)) if 1 <= s <= cap})
    if not grid:
        raise InputError(f"no circuit size between 1 and {cap} to evaluate")
    curve = {0: 0.0, **dict(zip(grid, map(float, evaluate(grid))))}
    evaluations = len(grid)
    hits = [s for s in grid if curve[s] >= target]
    bisected: list[int] = []
    if not hits:
        best = max(grid, key=lambda s: (curve[s], -s))
        return SizeSearch(target, cap, grid, curve, best, False, evaluations)
    hi = hits[0]
    lo = max(s for s in curve if s < hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        curve[mid] = float(evaluate([mid])[0])
        bisected.append(mid)
        evaluations += 1
        lo, hi = (lo, mid) if curve[mid] >= target else (mid, hi)
    return SizeSearch(target, cap, grid, dict(sorted(curve.items())), hi, True, evaluations,
                      bisected)


def prefix_evaluator(evaluator: CircuitEvaluator, order: Sequence[Node]
                     ) -> Callable[[Sequence[int]], np.ndarray]:
    """``sizes -> normalised faithfulness`` of the prefixes ``order[:size]`` (nodes outside the
    ranking, e.g. MLPs at node level ``heads``, are always kept: see :class:`CircuitEvaluator`)."""
    always = [n for n in evaluator.nodes if n not in set(order)]

    def evaluate(sizes: Sequence[int]) -> np.ndarray:
        return evaluator.faithfulness([list(order[:s]) + always for s in sizes])
    return evaluate


def random_band(evaluator: CircuitEvaluator, sizes: Sequence[int], n_random: int, *,
                pool: Sequence[Node] | None = None, seed: int = 0) -> dict[int, np.ndarray]:
    """``{size: [n_random] normalised faithfulness}`` of random circuits of each size, drawn
    uniformly (seeded) from ``pool`` (default: every node of the evaluator)."""
    pool = list(pool if pool is not None else evaluator.nodes)
    rng = np.random.default_rng(seed)
    circuits, owners = [], []
    for size in sizes:
        for _ in range(n_random):
            picked = rng.choice(len(pool), min(size, len(pool)), replace=False)
            circuits.append([pool[i] for i in picked])
            owners.append(size)
    values = evaluator.faithfulness(circuits) if circuits else np.zeros(0)
    return {size: np.array([v for v, o in zip(values, owners) if o == size]) for size in sizes}
