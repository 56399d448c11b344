"""Better circuits than a ranked prefix: greedy pruning and addition of nodes, ACDC's idea at node
level (Conmy et al. 2023, arXiv 2304.14997).

Starting from a circuit (the smallest faithful prefix of :mod:`circuits.search`), with ``f`` the
normalised faithfulness and ``target`` the selection's:

1. **reach**: while ``f < target``, add the best of the ``candidates`` top-ranked nodes outside the
   circuit (the one that brings ``f`` closest to 1; stop when none brings it closer);
2. **prune**: visit the members from the last layer to the first (ACDC's order, from the output
   backwards) and drop a member when its removal costs less than ``tolerance``, the cost being how
   much farther from the model it takes the circuit (``|1 - f(C - n)| - |1 - f(C)|``: a circuit
   above 1 over-performs the model, e.g. without IOI's negative name movers, and is not more
   faithful), while ``f(C - n) >= target`` (once reached);
3. **swap** (``rounds`` times): add the best outside candidate, prune again, and keep the result
   only if it is smaller than before, still at the target and no farther from 1 (within
   ``tolerance``); stop at the first round that is not.

The refinement spends at most ``budget`` evaluations (checked before each step; one step may
overrun it by its own cost) and stops where it is when they are spent.

Every one-node change is evaluated by resuming the circuit's captured run at the node's layer
(:meth:`circuits.evaluate.CircuitEvaluator.variants`), so pruning from the output backwards
never needs a new capture, and a node in layer ``l`` costs ``(L - l) / L`` of an evaluation. The
cost (evaluations and forwards) is reported with the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from circuits.evaluate import MLP, CircuitEvaluator, Node
from workbench.errors import InputError

MAX_CANDIDATES = 270 * 4
MAX_ROUNDS = 20
MAX_BUDGET = 100_000


def deviation(f: float) -> float:
    """``|1 - f|``: how far a circuit's normalised faithfulness is from the model's (MIB's CMD
    integrand). A circuit above 1 over-performs the model (it lacks heads that write against the
    answer) and is not more faithful for it."""
    return abs(1.0 - f)


@dataclass(frozen=True)
class RefineOptions:
    """``tolerance``: the largest faithfulness a pruned member may cost (in [0, 1]);
    ``candidates``: outside nodes (top-ranked) tried per addition (0: no addition);
    ``rounds``: swap rounds after the first pruning (0: none); ``budget``: the evaluations the
    refinement may spend (``None``: as many as it needs; :func:`circuits.sized.size_circuit`
    passes what keeps the whole search within 3 faithfulness curves). When the budget is spent
    the refinement stops where it is (the members not yet visited stay)."""

    tolerance: float = 0.01
    candidates: int = 8
    rounds: int = 1
    budget: float | None = None

    def __post_init__(self):
        if not (np.isfinite(self.tolerance) and 0 <= self.tolerance <= 1):
            raise InputError(f"--refine-tolerance {self.tolerance} must be a number in [0, 1]")
        if not 0 <= self.candidates <= MAX_CANDIDATES:
            raise InputError(f"--refine-candidates {self.candidates} must be between 0 and "
                             f"{MAX_CANDIDATES}")
        if not 0 <= self.rounds <= MAX_ROUNDS:
            raise InputError(f"--refine-rounds {self.rounds} must be between 0 and {MAX_ROUNDS}")
        if self.budget is not None and not (np.isfinite(self.budget)
                                            and 0 <= self.budget <= MAX_BUDGET):
            raise InputError(f"--refine-budget {self.budget} must be between 0 and "
                             f"{MAX_BUDGET} evaluations")


@dataclass
class Refinement:
    """What the refinement did: the circuit before and after, their faithfulness, the nodes
    removed and added, its cost (evaluations as :mod:`circuits.evaluate` counts them, and
    forwards), the step log (``(action, node, f after)``), and whether the budget ran out."""

    start: list[Node]
    circuit: list[Node]
    start_faithfulness: float
    faithfulness: float
    added: list[Node]
    removed: list[Node]
    evaluations: float
    forward_calls: int
    steps: list[tuple[str, Node, float]] = field(default_factory=list)
    out_of_budget: bool = False


def refine(evaluator: CircuitEvaluator, circuit: Sequence[Node], order: Sequence[Node],
           target: float, options: RefineOptions = RefineOptions(), *,
           fixed: Sequence[Node] = ()) -> Refinement:
    """Refine ``circuit`` (module docstring). ``order``: the ranking outside candidates come from;
    ``fixed``: nodes always kept and never pruned (e.g. MLPs at node level ``heads``).
    Returns :class:`Refinement` (its ``circuit`` excludes ``fixed``)."""
    ev, fixed_set = evaluator, frozenset(fixed)
    cost0, calls0 = ev.evaluations, ev.forward_calls
    budget = np.inf if options.budget is None else options.budget
    spent = {"out": False}

    def exhausted() -> bool:
        spent["out"] = spent["out"] or ev.evaluations - cost0 >= budget
        return spent["out"]
    steps: list[tuple[str, Node, float]] = []
    current = frozenset(circuit) | fixed_set
    base = ev.capture_base(current)
    f = float(ev.normalised(base.ld)[0])
    start_f = f

    def best_addition(circuit: frozenset, base):
        outside = [n for n in order if n not in circuit][:options.candidates]
        if not outside:
            return None, np.nan
        values = ev.normalised(ev.variants(base, [circuit | {n} for n in outside]))
        i = int(np.argmin(np.abs(1 - values)))  # the closest to the model
        return outside[i], float(values[i])

    def prune(circuit: frozenset, base, f: float, log: list) -> tuple[frozenset, float]:
        reached = f >= target
        for node in sorted(circuit - fixed_set, key=lambda n: (-n[0], n[1] != MLP, -n[1])):
            if exhausted():
                break
            without = circuit - {node}
            g = float(ev.normalised(ev.variants(base, [without]))[0])
            if deviation(g) - deviation(f) < options.tolerance and (g >= target or not reached):
                circuit, f = without, g
                log.append(("remove", node, g))
        return circuit, f

    while f < target and options.candidates and not exhausted():  # 1. reach
        node, g = best_addition(current, base)
        if node is None or not deviation(g) < deviation(f):
            break
        current, f = current | {node}, g
        steps.append(("add", node, g))
        base = ev.capture_base(current)
    current, f = prune(current, base, f, steps)  # 2. prune
    for _ in range(options.rounds if options.candidates else 0):  # 3. swap
        if exhausted():
            break
        base = ev.capture_base(current)
        node, g = best_addition(current, base)
        if node is None:
            break
        trial, log = current | {node}, [("add", node, g)]
        trial, g = prune(trial, ev.capture_base(trial), g, log)
        if not (len(trial) < len(current) and g >= min(target, f)
                and deviation(g) - deviation(f) < options.tolerance):
            break
        current, f = trial, g
        steps += log
    start = sorted(set(circuit) - fixed_set)
    final = sorted(current - fixed_set)
    return Refinement(start, final, start_f, f, sorted(set(final) - set(start)),
                      sorted(set(start) - set(final)), ev.evaluations - cost0,
                      ev.forward_calls - calls0, steps, spent["out"])
