"""``--select faithfulness=X`` in a circuits run: rank, size by faithfulness, refine, check on
held-out prompts, and the tables that record it.

For one (method, task): the method's scores rank the nodes (:func:`circuits.search.ranking`; heads,
or heads and MLPs with ``--nodes heads,mlps``), :func:`circuits.search.smallest_prefix` finds the
smallest prefix reaching the target (the faithfulness curve on a geometric grid, then bisection),
:func:`circuits.search.random_band` draws random circuits at the grid's powers of two and the
cap (:func:`band_sizes`), and
:func:`circuits.refine.refine` prunes and extends the prefix. ``held_out`` prompts of the task file
that follow the scored ones (never used to rank, size or refine) measure the chosen circuit again
(:func:`circuits.discovery.faithfulness`, with its bootstrap interval and random circuits).

Tables (record schema; ``probe`` = the method, ``segment`` = the task):

* ``faithfulness_curve``: ``faithfulness_normalised`` per size evaluated (``condition``
  ``size=N``; grid and bisection sizes), ``faithfulness_random_mean`` / ``faithfulness_random_sd``
  per grid size and ``faithfulness_random_draw`` per random circuit (``size=N;draw=i``);
* ``circuit_search``: ``target``, ``reached`` (0/1), ``cap``, ``prefix_size``,
  ``prefix_faithfulness``, ``size`` (after refinement), ``faithfulness_normalised`` (after
  refinement), ``n_added``, ``n_removed``, ``evaluations_curve``, ``evaluations_search``
  (grid + bisection), ``evaluations_random``, ``evaluations_refine``, ``forwards_refine``,
  ``refine_out_of_budget`` (the refinement's budget, by default what keeps curve + bisection +
  refinement within 3 curves, ran out),
  ``held_out_prompts`` and, with held-out prompts, ``held_out_faithfulness``,
  ``held_out_faithfulness_normalised`` with ``_lo`` / ``_hi`` and ``held_out_random``;
  ``refine_step`` rows (``layer``/``head`` the node, MLP: head -1; ``condition``
  ``add|remove;step=i``; value = ``f`` after the step); with ``--nodes heads,mlps``,
  ``mlp_member`` (1 per MLP in the circuit) and ``mlp_score`` per MLP (``layer``), the MLPs' place
  in the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from circuits.discovery import AblationMeans, Faithfulness, faithfulness
from circuits.evaluate import MLP, CircuitEvaluator, MlpMeans, Node, format_node, is_mlp
from circuits.refine import Refinement, RefineOptions, refine
from circuits.search import SizeSearch, prefix_evaluator, random_band, ranking, smallest_prefix
from circuits.tasks import Task
from workbench.errors import InputError
from workbench.prompts import PromptSet
from workbench.records import concat, records

NODE_KINDS = ("heads", "heads,mlps")
CURVES = 3  # the whole search (curve, bisection, refinement) costs at most this many curves
MAX_HELD_OUT = 10_000


@dataclass(frozen=True)
class SizingOptions:
    """``nodes``: ``heads`` or ``heads,mlps``; ``max_size``: the largest circuit searched (None:
    every node); ``held_out``: prompts after the scored ones to check the circuit on (0: none);
    ``per_forward``: circuits stacked per forward (1 on a CPU)."""

    nodes: str = "heads"
    max_size: int | None = None
    refine: RefineOptions = field(default_factory=RefineOptions)
    held_out: int = 0
    per_forward: int = 1

    def __post_init__(self):
        if self.nodes not in NODE_KINDS:
            raise InputError(f"--nodes {self.nodes!r} is not one of {', '.join(NODE_KINDS)}")
        if self.max_size is not None and not 1 <= self.max_size <= 10 ** 6:
            raise InputError(f"--max-size must be between 1 and 1000000, got {self.max_size}")
        if not 0 <= self.held_out <= MAX_HELD_OUT:
            raise InputError(f"--held-out must be between 0 and {MAX_HELD_OUT}, got "
                             f"{self.held_out}")
        if not 1 <= self.per_forward <= 64:
            raise InputError(f"circuits per forward must be between 1 and 64, got "
                             f"{self.per_forward}")

    @property
    def mlps(self) -> bool:
        return self.nodes == "heads,mlps"


@dataclass
class SizedCircuit:
    """One method's faithfulness-sized circuit on one task (module docstring)."""

    method: str
    task: str
    order: list[Node]
    search: SizeSearch
    band: dict[int, np.ndarray]
    refinement: Refinement
    evaluations_curve: float
    evaluations_random: float
    held_out: Faithfulness | None = None
    held_out_prompts: int = 0

    @property
    def circuit(self) -> list[Node]:
        return self.refinement.circuit

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [n for n in self.circuit if not is_mlp(n)]

    @property
    def mlps(self) -> list[int]:
        return [n[0] for n in self.circuit if is_mlp(n)]

    def note(self) -> str:
        """One line: the search's outcome, the refinement, the held-out check."""
        r = self.refinement
        line = (f"{self.task} ({self.method}): {self.search.note()}; refined to "
                f"{len(r.circuit)} nodes (f = {r.faithfulness:.3f}; +{len(r.added)} "
                f"-{len(r.removed)}, {r.evaluations:.1f} evaluations)")
        if self.held_out is not None:
            lo, hi = self.held_out.interval("faithfulness_normalised")
            line += (f"; held-out ({self.held_out_prompts} prompts) f = "
                     f"{self.held_out.normalised:.3f} [{lo:.3f}, {hi:.3f}]")
        return line


def refine_budget(search: SizeSearch) -> float:
    """The refinement's default budget: what keeps the whole selection (the curve, the
    bisection and the refinement, with the model's and the empty circuit's runs) within
    :data:`CURVES` faithfulness curves (the grid's evaluations plus those two runs)."""
    return max(0.0, CURVES * (len(search.grid) + 2) - (search.evaluations + 2))


def band_sizes(grid: list[int], cap: int) -> list[int]:
    """The curve's sizes that get random circuits: the powers of two and the cap (every other
    size of the default sqrt-2 grid: half the cost of a band at every size)."""
    return [s for s in grid if s == cap or (s & (s - 1)) == 0]


def subset(task: Task, start: int, stop: int | None = None) -> Task:
    """The task's prompts ``start:stop`` (same name and files)."""
    cut = slice(start, stop)
    prompts = PromptSet(task.prompt_set.prompts[cut], task.prompt_set.files,
                        task.prompt_set.label)
    return Task(task.name, prompts, task.clean[cut], task.corrupted[cut], task.answer[cut],
                task.distractor[cut], task.pad_id)


def sizing_options(*, nodes: str = "heads", max_size: int | None = None, held_out: int = 0,
                   refine_tolerance: float = 0.01, refine_candidates: int = 8,
                   refine_rounds: int = 1, refine_budget: float | None = None) -> SizingOptions:
    """The :class:`SizingOptions` of ``workbench circuits``' ``--nodes``, ``--max-size``,
    ``--held-out`` and ``--refine-*`` options (the CLI and ``wb.circuits`` build it here).

    Raises:
        InputError: an option out of its bounds (one line naming it).
    """
    return SizingOptions(nodes=",".join(str(nodes).replace(" ", "").split(",")),
                         max_size=max_size, held_out=held_out,
                         refine=RefineOptions(refine_tolerance, refine_candidates, refine_rounds,
                                              refine_budget))


def check_held_out(n_file: int, n_prompts: int | None, held_out: int, where: str) -> None:
    """Refuse ``held_out`` prompts that the file does not have after the first ``n_prompts``.

    Raises:
        InputError: naming the file (``where``) and the counts.
    """
    used = n_file if n_prompts is None else min(n_prompts, n_file)
    if held_out and used + held_out > n_file:
        raise InputError(f"{where}: --held-out {held_out} needs {used + held_out} prompts "
                         f"({used} scored, then {held_out} held out); the file has {n_file}; "
                         "lower --n-prompts or --held-out")


def size_circuit(model, task: Task, method: str, head_scores: np.ndarray, target: float,
                 means: AblationMeans, options: SizingOptions, *,
                 mlp: MlpMeans | None = None, mlp_scores: np.ndarray | None = None,
                 n_random: int = 3, batch_size: int = 16, held_out: Task | None = None,
                 seed: int = 0) -> SizedCircuit:
    """Rank, search, draw the random band, refine and check on ``held_out`` (module docstring).

    Raises:
        InputError: ``--nodes heads,mlps`` without MLP means or scores.
    """
    if options.mlps and (mlp is None or mlp_scores is None):
        raise InputError("--nodes heads,mlps needs MLP ablation means and MLP scores")
    ev = CircuitEvaluator(model, task, means, mlp=mlp if options.mlps else None,
                          batch_size=batch_size, per_forward=options.per_forward)
    order = ranking(head_scores, mlp_scores if options.mlps else None)
    cap = min(options.max_size or len(order), len(order))
    search = smallest_prefix(prefix_evaluator(ev, order), target, cap)
    grid_cost = len(search.grid)
    before_random = ev.evaluations
    band = random_band(ev, band_sizes(search.grid, cap), n_random, seed=seed)
    evaluations_random = ev.evaluations - before_random
    start = order[:search.chosen]
    refine_options = options.refine
    if refine_options.budget is None:
        refine_options = replace(refine_options, budget=refine_budget(search))
    refined = refine(ev, start, order, target, refine_options)
    sized = SizedCircuit(method, task.name, order, search, band, refined, float(grid_cost),
                         float(evaluations_random))
    if held_out is not None and len(held_out):
        sized.held_out = circuit_faithfulness(model, held_out, refined.circuit, means,
                                              mlp=mlp if options.mlps else None,
                                              n_random=n_random, batch_size=batch_size, seed=seed)
        sized.held_out_prompts = len(held_out)
    return sized


def circuit_faithfulness(model, task: Task, circuit: list[Node], means: AblationMeans, *,
                         mlp: MlpMeans | None = None, n_random: int = 3, batch_size: int = 16,
                         seed: int = 0) -> Faithfulness:
    """:class:`Faithfulness` of a node circuit with ``n_random`` random circuits of its size: for
    heads only, :func:`circuits.discovery.faithfulness` itself (full forwards, independent of the
    search's evaluator); with MLP nodes (``mlp`` given), the same quantities from
    :class:`CircuitEvaluator` (MLPs outside the circuit ablated too)."""
    if mlp is None:
        return faithfulness(model, task, [n for n in circuit if not is_mlp(n)], means=means,
                            n_random=n_random, seed=seed, batch_size=batch_size)
    ev = CircuitEvaluator(model, task, means, mlp=mlp, batch_size=batch_size)
    ld = ev.logit_diffs([circuit])[0]
    rng = np.random.default_rng(seed)
    draws = ev.logit_diffs([[ev.nodes[i] for i in rng.choice(len(ev.nodes), len(circuit),
                                                             replace=False)]
                            for _ in range(n_random)]).mean(1) if n_random else np.zeros(0)
    model_mean = ev.model_ld.mean()
    return Faithfulness(float(model_mean), float(ld.mean()), float(ev.empty_ld.mean()),
                        float((ld > 0).mean()),
                        float(draws.mean() / model_mean) if len(draws) else float("nan"),
                        tuple(float(d / model_mean) for d in draws),
                        tuple(map(float, ev.model_ld)), tuple(map(float, ld)),
                        tuple(map(float, ev.empty_ld)))


def curve_rows(sized: SizedCircuit) -> pa.Table:
    """The ``faithfulness_curve`` rows of one sized circuit (module docstring)."""
    s = sized.search
    sizes = sorted(s.curve)
    parts = [records("faithfulness_normalised", [s.curve[k] for k in sizes], segment=sized.task,
                     condition=np.array([f"size={k}" for k in sizes]))]
    grid = [k for k in s.grid if len(sized.band.get(k, ()))]
    if grid:
        parts += [records("faithfulness_random_mean", [float(sized.band[k].mean()) for k in grid],
                          segment=sized.task, condition=np.array([f"size={k}" for k in grid])),
                  records("faithfulness_random_sd",
                          [float(sized.band[k].std(ddof=1)) if len(sized.band[k]) > 1 else 0.0
                           for k in grid],
                          segment=sized.task, condition=np.array([f"size={k}" for k in grid]))]
        draws = [(k, i, float(v)) for k in grid for i, v in enumerate(sized.band[k])]
        parts.append(records("faithfulness_random_draw", [v for *_, v in draws],
                             segment=sized.task,
                             condition=np.array([f"size={k};draw={i}" for k, i, _ in draws])))
    return concat(parts)


def search_rows(sized: SizedCircuit) -> pa.Table:
    """The ``circuit_search`` rows of one sized circuit (module docstring)."""
    s, r = sized.search, sized.refinement
    values = {"target": s.target, "reached": float(s.reached), "cap": s.cap,
              "prefix_size": s.chosen, "prefix_faithfulness": s.curve[s.chosen],
              "size": len(r.circuit), "faithfulness_normalised": r.faithfulness,
              "n_added": len(r.added), "n_removed": len(r.removed),
              "evaluations_curve": sized.evaluations_curve,
              "evaluations_search": float(s.evaluations),
              "evaluations_random": sized.evaluations_random,
              "evaluations_refine": r.evaluations, "forwards_refine": float(r.forward_calls),
              "refine_out_of_budget": float(r.out_of_budget),
              "held_out_prompts": float(sized.held_out_prompts)}
    if sized.held_out is not None:
        h = sized.held_out
        lo, hi = h.interval("faithfulness_normalised")
        flo, fhi = h.interval("faithfulness")
        values.update(held_out_faithfulness=h.faithfulness, held_out_faithfulness_lo=flo,
                      held_out_faithfulness_hi=fhi, held_out_faithfulness_normalised=h.normalised,
                      held_out_faithfulness_normalised_lo=lo,
                      held_out_faithfulness_normalised_hi=hi, held_out_random=h.random)
    parts = [records(name, float(v), segment=sized.task) for name, v in values.items()]
    if r.steps:
        parts.append(records("refine_step", [f for *_, f in r.steps],
                             layer=[n[0] for _, n, _ in r.steps],
                             head=[n[1] for _, n, _ in r.steps], segment=sized.task,
                             condition=np.array([f"{a};step={i}" for i, (a, _, _) in
                                                 enumerate(r.steps)])))
    return concat(parts)


UNITS = {
    "faithfulness_random_mean": "mean normalised faithfulness of random circuits of this size",
    "faithfulness_random_sd": "sd of the normalised faithfulness of random circuits of this size",
    "target": "normalised faithfulness the selection asks for",
    "reached": "1 if a circuit up to the cap reached the target, else 0",
    "cap": "nodes: the largest circuit searched", "prefix_size": "nodes (smallest faithful "
    "prefix of the ranking, or the most faithful prefix when none reached)",
    "prefix_faithfulness": "(circuit - empty) / (model - empty) of the prefix",
    "n_added": "nodes", "n_removed": "nodes",
    "evaluations_curve": "circuit evaluations (one circuit over every prompt and layer)",
    "evaluations_search": "circuit evaluations (grid + bisection)",
    "evaluations_random": "circuit evaluations", "evaluations_refine": "circuit evaluations "
    "(resumed runs count the fraction of layers they run)",
    "forwards_refine": "forward passes (one batch each)",
    "refine_out_of_budget": "1 if the refinement stopped when its budget was spent, else 0",
    "held_out_prompts": "prompts after the scored ones, not used to rank, size or refine",
    "held_out_faithfulness": "circuit / model LD on the held-out prompts",
    "held_out_faithfulness_lo": "2.5th bootstrap percentile", "held_out_faithfulness_hi":
    "97.5th bootstrap percentile", "held_out_faithfulness_normalised": "(circuit - empty) / "
    "(model - empty) on the held-out prompts", "held_out_faithfulness_normalised_lo":
    "2.5th bootstrap percentile", "held_out_faithfulness_normalised_hi":
    "97.5th bootstrap percentile", "held_out_random": "faithfulness of random circuits of equal "
    "size on the held-out prompts (circuit / model)",
    "refine_step": "normalised faithfulness after the step",
    "mlp_score": "the MLP's score (same method and unit as the heads' score; --nodes heads,mlps)",
}

__all__ = ["MLP", "SizedCircuit", "SizingOptions", "check_held_out", "curve_rows", "format_node",
           "search_rows", "size_circuit", "subset"]


def report_lines(search, curve) -> list[str]:
    """Report lines of the ``circuit_search`` and ``faithfulness_curve`` tables (pandas frames or
    ``None``): per (method, task) the chosen size and faithfulness, the refinement's cost, the
    held-out check, and the curve with the random band."""
    if search is None:
        return []
    lines = ["faithfulness-sized circuits (normalised faithfulness f = (circuit - empty) / "
             "(model - empty); random: mean +- sd of random circuits of the size)"]
    for (probe, task), rows in search.groupby(["probe", "segment"], sort=False):
        v = {r.metric: r.value for r in rows[rows.condition.isna()].itertuples()}
        reached = "reached" if v["reached"] else "NOT reached (kept the most faithful)"
        line = (f"  {probe} {task}: target {v['target']:g} {reached}; prefix "
                f"{int(v['prefix_size'])} nodes f = {v['prefix_faithfulness']:.3f}; refined "
                f"{int(v['size'])} nodes f = {v['faithfulness_normalised']:.3f} "
                f"(+{int(v['n_added'])} -{int(v['n_removed'])}); evaluations: curve "
                f"{v['evaluations_curve']:.0f}, search {v['evaluations_search']:.0f}, refine "
                f"{v['evaluations_refine']:.1f} ({int(v['forwards_refine'])} forwards"
                f"{', budget spent' if v.get('refine_out_of_budget') else ''}), random "
                f"{v['evaluations_random']:.0f}")
        lines.append(line)
        if "held_out_faithfulness_normalised" in v:
            lines.append(f"    held out ({int(v['held_out_prompts'])} prompts not used to find "
                         f"it): f = {v['held_out_faithfulness_normalised']:.3f} "
                         f"[{v['held_out_faithfulness_normalised_lo']:.3f}, "
                         f"{v['held_out_faithfulness_normalised_hi']:.3f}]; circuit/model "
                         f"{v['held_out_faithfulness']:.3f} (random circuits "
                         f"{v['held_out_random']:.3f})")
        if curve is not None:
            c = curve[(curve.probe == probe) & (curve.segment == task)]
            f = {int(r.condition[5:]): r.value for r in
                 c[c.metric == "faithfulness_normalised"].itertuples()}
            mean = {int(r.condition[5:]): r.value for r in
                    c[c.metric == "faithfulness_random_mean"].itertuples()}
            sd = {int(r.condition[5:]): r.value for r in
                  c[c.metric == "faithfulness_random_sd"].itertuples()}
            lines.append("    curve: " + ", ".join(
                f"{k}: {f[k]:.2f}" + (f" ({mean[k]:+.2f}+-{sd[k]:.2f})" if k in mean else "")
                for k in sorted(f) if k))
    return lines
