"""Benchmark: the whole ``--select faithfulness=0.8`` search against one faithfulness curve.

    python -m bench.circuit_search [--n-prompts 32] [--json out.json]

On SmolLM2-135M (fp32, CPU), the first ``--n-prompts`` IOI prompts, heads ranked by attribution
patching (computed once, outside the timings), ablation means over the IOI file's corrupted
prompts (computed once):

* ``curve``: one faithfulness curve: the normalised faithfulness of the ranking's prefixes at the
  geometric grid of sizes (:func:`circuits.search.size_grid`, 17 sizes for 270 heads), with the
  evaluator's clean and empty runs (:class:`circuits.evaluate.CircuitEvaluator`);
* ``search``: the whole selection: the same curve, the bisection to the smallest faithful prefix
  (:func:`circuits.search.smallest_prefix`) and the refinement with the default options
  (:func:`circuits.refine.refine`, its default budget: :func:`circuits.sized.refine_budget`);
* ``band``: the random-circuit band the run adds (3 random circuits per grid size), reported
  apart.

Each runs twice, alternating; the faster run counts. Target: search <= 3x the curve. The ratio of
evaluations (circuits run over every prompt and layer) is reported too: it does not depend on the
machine's load.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(n_prompts: int = 32, target: float = 0.8, repeats: int = 2) -> dict:
    import torch

    from circuits.attribution import attribution_patching
    from circuits.discovery import ablation_means
    from circuits.evaluate import CircuitEvaluator
    from circuits.refine import RefineOptions, refine
    from circuits.search import prefix_evaluator, random_band, ranking, size_grid, smallest_prefix
    from circuits.sized import refine_budget
    from circuits.tasks import load_task
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    means = ablation_means(model, load_task("ioi", model), batch_size=16)
    order = ranking(attribution_patching(model, task, batch_size=16).score)
    grid = size_grid(len(order))
    times: dict[str, list[float]] = {}
    out: dict = {}

    def curve():
        ev = CircuitEvaluator(model, task, means, batch_size=16)
        values = prefix_evaluator(ev, order)(grid)
        return ev, values

    def search():
        ev = CircuitEvaluator(model, task, means, batch_size=16)
        found = smallest_prefix(prefix_evaluator(ev, order), target, len(order))
        refined = refine(ev, order[:found.chosen], order, target,
                         RefineOptions(budget=refine_budget(found)))
        return ev, found, refined

    for _ in range(repeats):
        start = time.perf_counter()
        ev_curve, values = curve()
        times.setdefault("curve", []).append(time.perf_counter() - start)
        start = time.perf_counter()
        ev_search, found, refined = search()
        times.setdefault("search", []).append(time.perf_counter() - start)
    start = time.perf_counter()
    ev_band = CircuitEvaluator(model, task, means, batch_size=16)
    random_band(ev_band, grid, 3)
    times["band"] = [time.perf_counter() - start]
    best = {k: min(v) for k, v in times.items()}
    out.update(times_s=times, best_s=best, n_prompts=len(task), grid=grid,
               ratio=best["search"] / best["curve"],
               evaluations_curve=ev_curve.evaluations, evaluations_search=ev_search.evaluations,
               evaluations_band=ev_band.evaluations,
               evaluation_ratio=ev_search.evaluations / ev_curve.evaluations,
               prefix_size=found.chosen, prefix_faithfulness=found.curve[found.chosen],
               reached=found.reached, refined_size=len(refined.circuit),
               refined_faithfulness=refined.faithfulness,
               refine_forwards=refined.forward_calls, refine_evaluations=refined.evaluations,
               torch_threads=torch.get_num_threads())
    return out


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench`` and the raw result."""
    res = measure(8 if quick else 32, repeats=1 if quick else 2)
    best = res["best_s"]
    rows = [{"benchmark": "circuit_search", "measure": f"faithfulness curve, {len(res['grid'])} "
             f"sizes ({res['n_prompts']} IOI prompts)", "value": best["curve"], "unit": "s",
             "note": f"{res['evaluations_curve']:.0f} evaluations"},
            {"benchmark": "circuit_search", "measure": "faithfulness=0.8 search + refinement",
             "value": best["search"], "unit": "s",
             "note": f"{res['ratio']:.2f}x the curve (target <= 3x); evaluations "
                     f"{res['evaluations_search']:.1f} ({res['evaluation_ratio']:.2f}x)"},
            {"benchmark": "circuit_search", "measure": "random band, 3 per size",
             "value": best["band"], "unit": "s"}]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    res = measure(args.n_prompts)
    text = json.dumps(res, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
