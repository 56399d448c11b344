"""One method's edge circuits on one task: MIB's two curves, CPR / CMD, the random band and the
faithfulness search (``--select faithfulness=T``), all measured by edge patching through one
:class:`circuits.edges.faithfulness.CircuitEvaluator` (each distinct circuit once).

* the ``signed`` curve (MIB's CPR) and the ``absolute`` curve (MIB's CMD) at MIB's 10 sizes
  (:mod:`circuits.edges.faithfulness`);
* the random band: ``n_random`` random edge sets of each grid circuit's kept size
  (:func:`circuits.edges.search.random_circuits`);
* the search over the ranking whose curve reaches the target first (``absolute`` on ties),
  seeded with that curve's values (:func:`circuits.edges.search.search`); other selections (``top_n`` ...) take a prefix of the
  ``|score|`` ranking as before.

Every faithfulness gets a percentile bootstrap interval over prompts (the same resamples for all).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from circuits.edges.eap import EdgeScores
from circuits.edges.faithfulness import (CircuitEvaluator, FaithfulnessCurve, faithfulness_curve,
                                         faithfulness_of_means)
from circuits.edges.patching import EdgeSelection, prune, top_edges
from circuits.edges.search import (SEARCH_REL_TOL, SearchResult, prefix_circuit,
                                   random_circuits, ranking, search, search_ranking)
from workbench.records import concat, records
from workbench.stats import bootstrap_indices


@dataclass
class EdgeEvaluation:
    """What :func:`evaluate_edges` measured for one method on one task.

    Attributes:
        signed, absolute: the two MIB curves (CPR = ``signed.cpr``, CMD = ``absolute.cmd``).
        search: the faithfulness search (None for ``top_n`` / ``top_percent`` / ``threshold``).
        chosen: edge indices of the selected circuit; ``chosen_faithfulness`` its faithfulness
            and ``chosen_random`` ``[n_random]`` that of random edge sets of its size.
        random: ``[n_grid, n_random]`` faithfulness of random edge sets of the kept sizes
            (``random_sizes``) of the searched ranking's grid circuits (``absolute`` without a
            search).
        point_low, point_high: bootstrap interval of each search point's faithfulness.
        forwards: patched forwards per part (``curves``, ``random``, ``search``: the bisection's
            own; circuits already measured are not measured again).
    """

    scores: EdgeScores
    signed: FaithfulnessCurve
    absolute: FaithfulnessCurve
    search: SearchResult | None
    chosen: np.ndarray
    random: np.ndarray
    random_sizes: np.ndarray
    point_low: np.ndarray | None
    point_high: np.ndarray | None
    forwards: dict
    chosen_faithfulness: float = float("nan")
    chosen_random: np.ndarray | None = None


def evaluate_edges(model, task, scores: EdgeScores, selection: EdgeSelection, *,
                   n_random: int = 3, n_boot: int = 1000, batch_size: int = 16, seed: int = 0,
                   graph_model=None, level: float = 0.95) -> EdgeEvaluation:
    """Curves, areas, random band and the selected circuit of one method on one task."""
    ev = CircuitEvaluator(model, task, metric=scores.metric, ablation=scores.ablation,
                          batch_size=batch_size, graph_model=graph_model)
    graph = ev.gm.graph
    kw = dict(n_boot=n_boot, level=level, seed=seed, evaluator=ev)
    signed = faithfulness_curve(model, task, scores, ranking_name="signed", **kw)
    absolute = faithfulness_curve(model, task, scores, ranking_name="absolute", **kw)
    forwards = {"curves": ev.n_forwards}
    curves = {"signed": signed, "absolute": absolute}
    name = search_ranking({k: c.faithfulness for k, c in curves.items()}, selection.value) \
        if selection.method == "faithfulness" else "absolute"
    sizes = np.array([c.size for c in curves[name].circuits])
    draws = random_circuits(graph.n_edges, sizes, n_random, seed=seed)
    flat = [c for row in draws for c in row]
    before = ev.n_forwards
    values = ev(flat) if flat else np.zeros((0, len(task)))
    forwards["random"] = ev.n_forwards - before
    rand = faithfulness_of_means(values, ev.model, ev.empty).reshape(len(sizes), n_random)
    found, low, high = None, None, None
    if selection.method == "faithfulness":
        order = ranking(scores.scores, name, scores.metric)
        before = ev.n_forwards
        found = search(lambda k: prefix_circuit(graph, order, k), selection.value,
                       curves[name].n_requested, ev, ev.model, ev.empty,
                       known=dict(zip(curves[name].n_requested.tolist(), curves[name].circuit)),
                       ranking_name=name, rel_tol=SEARCH_REL_TOL)
        forwards["search"] = ev.n_forwards - before
        chosen = found.circuit
        idx = bootstrap_indices(len(task), n_boot, seed)
        boot = faithfulness_of_means(found.values[:, idx].transpose(1, 0, 2), ev.model[idx],
                                     ev.empty[idx])
        q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
        low, high = np.nanpercentile(boot, q, axis=0)
    else:
        chosen = prune(graph, top_edges(scores.scores, selection.count(scores.scores)))
    before = ev.n_forwards
    controls = random_circuits(graph.n_edges, [chosen.size], n_random, seed=seed + 1)[0]
    chosen_random = faithfulness_of_means(ev(controls), ev.model, ev.empty) if controls else \
        np.zeros(0)
    forwards["random"] += ev.n_forwards - before
    chosen_f = faithfulness_of_means(ev([chosen]), ev.model, ev.empty)[0]
    return EdgeEvaluation(scores, signed, absolute, found, chosen, rand, sizes, low, high,
                          forwards, float(chosen_f), chosen_random)


def curve_rows(e: EdgeEvaluation) -> pa.Table:
    """The ``edge_faithfulness_curve`` table's records of one (method, task): per measured size
    (``condition`` ``size=N``, N = edges kept after pruning; prefixes that prune to the same
    circuit appear once, with the smallest prefix) ``faithfulness_normalised`` with
    ``_low`` / ``_high``, ``n_edges_requested``, ``on_grid`` (1 = an MIB grid size, 0 = a
    bisection step), and at grid sizes ``faithfulness_random`` (mean) and one
    ``faithfulness_random_draw`` per random circuit; then ``chosen_size``,
    ``chosen_faithfulness``, ``chosen_random_draw`` / ``chosen_random_mean`` (random edge sets of
    the chosen size), with a search ``target`` and ``reached`` (1/0), ``size_for_target``
    (``condition`` ``target=t``, :func:`target_sizes`) and the patched forwards per part (``forwards_curves``, ``forwards_random``, ``forwards_search``)."""
    task = e.scores.task
    c = e.absolute
    if e.search is not None:
        s = e.search
        kept, req, f, lo, hi, grid = s.kept, s.k, s.f, e.point_low, e.point_high, s.on_grid
    else:
        kept, req, f, lo, hi = c.n_kept, c.n_requested, c.faithfulness, c.low, c.high
        grid = np.ones(len(kept), bool)
    first = np.unique(np.asarray(kept), return_index=True)[1]  # prefixes that prune alike: once
    kept, req, f, grid = kept[first], req[first], f[first], grid[first]
    lo, hi = np.asarray(lo)[first], np.asarray(hi)[first]
    cond = np.array([f"size={int(n)}" for n in kept])
    out = [records(name, v, segment=task, condition=cond) for name, v in (
        ("faithfulness_normalised", f), ("faithfulness_normalised_low", lo),
        ("faithfulness_normalised_high", hi), ("n_edges_requested", req),
        ("on_grid", grid.astype(float)))]
    rcond = np.array([f"size={int(n)}" for n in e.random_sizes])
    if e.random.size:
        out.append(records("faithfulness_random", e.random.mean(1), segment=task,
                           condition=rcond))
        out.append(records("faithfulness_random_draw", e.random.ravel(), segment=task,
                           condition=np.repeat(rcond, e.random.shape[1])))
    out += [records("chosen_size", int(e.chosen.size), segment=task),
            records("chosen_faithfulness", e.chosen_faithfulness, segment=task)]
    if e.chosen_random is not None and e.chosen_random.size:
        out += [records("chosen_random_draw", e.chosen_random, segment=task),
                records("chosen_random_mean", float(e.chosen_random.mean()), segment=task)]
    if e.search is not None:
        out += [records("target", e.search.target, segment=task),
                records("reached", float(e.search.reached), segment=task),
                records("search_ranking", float(e.search.ranking == "signed"), segment=task)]
    sized = target_sizes(kept, f)
    out.append(records("size_for_target", np.array(list(sized.values()), float), segment=task,
                       condition=np.array([f"target={t:g}" for t in sized])))
    out += [records(f"forwards_{k}", v, segment=task) for k, v in e.forwards.items()]
    return concat(out)


TARGETS = (0.5, 0.8, 0.9, 0.95, 1.0)


def target_sizes(kept: np.ndarray, f: np.ndarray, targets=TARGETS) -> dict[float, float]:
    """Per target ``t``: the smallest measured circuit size whose faithfulness reaches ``t`` (NaN
    when none does). Non-decreasing in ``t`` by construction (a minimum over nested sets), so
    the size-for-target curve is monotone even where ``f`` over sizes is not; exact to the
    search's tolerance at the searched target, an upper bound from the measured sizes at the
    others."""
    kept, f = np.asarray(kept, float), np.asarray(f, float)
    return {t: float(kept[f >= t].min()) if (f >= t).any() else float("nan") for t in targets}
