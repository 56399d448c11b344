"""Benchmark: EAP and EAP-IG edge scores and a faithfulness curve against one forward + backward.

    python -m bench.edges [--n-prompts 16] [--json out.json]

On SmolLM2-135M (fp32, CPU), the first ``--n-prompts`` IOI prompts (one batch of 16):

* ``forward_backward``: the bridge's forward with gradients and the backward of the summed logit
  difference to every head's ``z`` (:func:`circuits.attribution.z_gradients`, no parameter
  gradients): one forward + backward;
* ``eap``: :func:`circuits.edges.eap.edge_scores`, method ``eap`` (all 70,651 edges);
* ``eap_ig``: the same, method ``eap-ig`` with 5 steps;
* ``curve``: :func:`circuits.edges.faithfulness.faithfulness_curve` of the EAP-IG scores, the 10
  MIB sizes plus the full and empty circuits (12 patched forwards per batch).

The three scoring passes run three times, alternating, and the fastest run of each counts. Targets: EAP <= 3x and
EAP-IG <= 6x the forward + backward; the curve in minutes.

``--search``: the faithfulness search against one faithfulness curve, on the same EAP-IG scores
(computed once): ``curve`` = :func:`circuits.edges.faithfulness.faithfulness_curve` (one ranking,
10 sizes + full + empty, a fresh evaluator), ``search`` = :func:`circuits.edges.sized.evaluate_edges`
with ``--select faithfulness=0.8`` and no random band (both MIB curves, the choice of ranking, the
bisection and the chosen circuit, a fresh evaluator); alternated ``--repeats`` times, fastest
counts. Target: search <= 3x the curve. Also printed: the patched forwards of each (the cost on
any machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(n_prompts: int = 16) -> dict:
    import torch

    from circuits.attribution import z_gradients
    from circuits.edges.eap import edge_scores
    from circuits.edges.faithfulness import faithfulness_curve
    from circuits.edges.forward import GraphModel
    from circuits.tasks import load_task
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    gm = GraphModel(model)
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def forward_backward():
        for tb in task.batches(16):
            z_gradients(model, tb.clean, tb.answer, tb.distractor)

    for _ in range(3):
        timed("forward_backward", forward_backward)
        timed("eap", lambda: edge_scores(model, task, method="eap", graph_model=gm))
        ig = timed("eap_ig", lambda: edge_scores(model, task, method="eap-ig", graph_model=gm))
    curve = timed("curve", lambda: faithfulness_curve(model, task, ig, graph_model=gm,
                                                      n_boot=200))
    best = {k: min(v) for k, v in times.items()}
    return {"times_s": times, "best_s": best, "n_prompts": len(task),
            "n_edges": gm.graph.n_edges,
            "eap_ratio": best["eap"] / best["forward_backward"],
            "eap_ig_ratio": best["eap_ig"] / best["forward_backward"],
            "curve_cpr": curve.cpr, "curve_cmd": curve.cmd,
            "torch_threads": torch.get_num_threads()}


def measure_search(n_prompts: int = 16, repeats: int = 1, target: float = 0.8) -> dict:
    from circuits.edges.eap import edge_scores
    from circuits.edges.faithfulness import CircuitEvaluator, faithfulness_curve
    from circuits.edges.forward import GraphModel
    from circuits.edges.patching import EdgeSelection
    from circuits.edges.sized import evaluate_edges
    from circuits.tasks import load_task
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    gm = GraphModel(model)
    scores = edge_scores(model, task, method="eap-ig", graph_model=gm)
    times: dict[str, list[float]] = {}
    forwards: dict[str, int] = {}
    found = None
    for _ in range(repeats):
        start = time.perf_counter()
        ev = CircuitEvaluator(model, task, metric=scores.metric, ablation=scores.ablation,
                              graph_model=gm)
        faithfulness_curve(model, task, scores, evaluator=ev, n_boot=200)
        times.setdefault("curve", []).append(time.perf_counter() - start)
        forwards["curve"] = ev.n_forwards
        start = time.perf_counter()
        found = evaluate_edges(model, task, scores, EdgeSelection("faithfulness", target),
                               n_random=0, n_boot=200, graph_model=gm)
        times.setdefault("search", []).append(time.perf_counter() - start)
        forwards["search"] = sum(found.forwards.values())  # curves include model and empty
    best = {k: min(v) for k, v in times.items()}
    s = found.search
    return {"times_s": times, "best_s": best, "n_prompts": len(task),
            "ratio": best["search"] / best["curve"], "forwards": forwards,
            "forward_ratio": forwards["search"] / forwards["curve"],
            "chosen_edges": int(found.chosen.size), "chosen_f": found.chosen_faithfulness,
            "ranking": s.ranking, "reached": s.reached, "bisection_forwards":
            found.forwards.get("search", 0)}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench`` and the raw result."""
    res = measure(4 if quick else 16)
    best, what = res["best_s"], f"{res['n_prompts']} IOI prompts"
    rows = [{"benchmark": "edges", "measure": f"forward + backward ({what})",
             "value": best["forward_backward"], "unit": "s"},
            {"benchmark": "edges", "measure": f"EAP, {res['n_edges']} edges", "value": best["eap"],
             "unit": "s", "note": f"{res['eap_ratio']:.2f}x the forward + backward (target <= 3x)"},
            {"benchmark": "edges", "measure": "EAP-IG, 5 steps", "value": best["eap_ig"],
             "unit": "s", "note": f"{res['eap_ig_ratio']:.2f}x (target <= 6x)"},
            {"benchmark": "edges", "measure": "faithfulness curve, 10 sizes", "value": best["curve"],
             "unit": "s"}]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--search", action="store_true",
                        help="the faithfulness search against one curve (see the docstring)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.search:
        res = measure_search(args.n_prompts, args.repeats)
        best = res["best_s"]
        print(f"{res['n_prompts']} IOI prompts, SmolLM2-135M fp32, EAP-IG scores")
        print(f"one faithfulness curve:        {best['curve']:8.2f} s  "
              f"({res['forwards']['curve']} patched forwards)")
        print(f"search (faithfulness=0.8):     {best['search']:8.2f} s  "
              f"({res['forwards']['search']} patched forwards, "
              f"{res['bisection_forwards']} of them bisection)")
        print(f"ratio: {res['ratio']:.2f}x time, {res['forward_ratio']:.2f}x forwards "
              f"(target <= 3x); chosen {res['chosen_edges']} edges, faithfulness "
              f"{res['chosen_f']:.3f}, {res['ranking']} ranking, reached {res['reached']}")
        if args.json:
            args.json.write_text(json.dumps(res, indent=2, default=float))
        return 0
    res = measure(args.n_prompts)
    best = res["best_s"]
    print(f"{res['n_prompts']} IOI prompts, SmolLM2-135M fp32, {res['n_edges']} edges, "
          f"torch threads {res['torch_threads']}")
    print(f"forward + backward: {best['forward_backward']:8.2f} s")
    print(f"EAP:                {best['eap']:8.2f} s  ({res['eap_ratio']:.2f}x)")
    print(f"EAP-IG (5 steps):   {best['eap_ig']:8.2f} s  ({res['eap_ig_ratio']:.2f}x)")
    print(f"faithfulness curve: {best['curve']:8.2f} s  (CPR {res['curve_cpr']:.3f}, "
          f"CMD {res['curve_cmd']:.3f})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
