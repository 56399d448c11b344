"""The interventions worked example on SmolLM2-135M (README "Interventions"; issue 7's numbers).

Run ``python -m experiments.interventions_smollm2 [ioi|context|noise|all] --runs-dir runs``:

1. ``ioi``: the most important IOI head from activation patching (16 prompts; every head is first
   scored by attribution patching, then the 20 best are activation-patched and the top one
   kept), scaled by alpha = 0..3 -> logit-difference dose-response.
2. ``context``: VAR redistribution away from the first token onto the passage on
   ``data/counterfactual_context.jsonl`` with the passage-centric heads of an ``attention_sink``
   run (``--sinks-run``; mean segment mass >= 0.2, non-sink share >= 0.8), and random heads of the
   same count as the control -> context-answer accuracy (LD = logit(context answer) -
   logit(memory answer) > 0).
3. ``noise``: value-noise sweep on the IOI head -> the critical noise level.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from workbench.heads import format_head
from workbench.interventions import parse_spec
from workbench.interventions.evaluate import InterveneOptions, Sweep, intervene, report
from workbench.models import load_model
from workbench.prompts import load_prompt_set

DATA = Path(__file__).resolve().parent.parent / "data"


def top_ioi_head(model, n_prompts: int = 16, shortlist: int = 20):
    from circuits.attribution import attribution_patching
    from circuits.patching import activation_patching
    from circuits.tasks import load_task

    task = load_task("ioi", model, n_prompts=n_prompts)
    estimate = attribution_patching(model, task).score
    order = sorted(((float(estimate[l, h]), (l, h)) for l in range(estimate.shape[0])
                    for h in range(estimate.shape[1])), reverse=True)[:shortlist]
    effects = activation_patching(model, task, heads=[h for _, h in order])
    score = effects.score
    best = max((h for _, h in order), key=lambda h: score[h])
    return best, {format_head(h): round(float(score[h]), 4) for _, h in order}


def ioi_prompts(n: int):
    prompts = load_prompt_set(DATA / "ioi.jsonl")
    return replace(prompts, prompts=prompts.prompts[:n])


def run(model, prompts, ops, runs_dir, run_id, sweep=None, **kw):
    options = InterveneOptions(sweep=Sweep.parse(sweep) if sweep else None, runs_dir=runs_dir,
                               run_id=run_id, overwrite=True, progress=False, **kw)
    result = intervene(model, prompts, parse_spec(ops, text=json.dumps(ops)), options)
    print(f"== {run_id}: {json.dumps(ops)} sweep={sweep}\n{report(result)}\n", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["ioi", "context", "noise", "all"], default="all")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--sinks-run", default="runs/ctx-sinks")
    parser.add_argument("--head", default=None, help="skip patching: the IOI head (L.H)")
    args = parser.parse_args()
    model = load_model("smollm2-135m")
    head = args.head
    if args.part in ("ioi", "noise", "all") and head is None:
        best, scores = top_ioi_head(model)
        head = format_head(best)
        print(f"activation-patching scores of the 20 attribution-shortlisted heads: {scores}")
        print(f"most important IOI head: {head}", flush=True)
    if args.part in ("ioi", "all"):
        run(model, ioi_prompts(16), [{"op": "scale_head", "heads": [head]}], args.runs_dir,
            "ioi-scale", "alpha=0,0.5,1,1.5,2,2.5,3")
    if args.part in ("context", "all"):
        context(model, args)
    if args.part in ("noise", "all"):
        run(model, ioi_prompts(16), [{"op": "value_noise", "heads": [head], "seed": 0}],
            args.runs_dir, "ioi-value-noise", "sigma=0,0.25,0.5,1,2,4,8,16")


def context(model, args) -> None:
    prompts = load_prompt_set(DATA / "counterfactual_context.jsonl")
    select = {"select": "image_centric", "run": args.sinks_run, "segment": "passage",
              "min_mass": 0.2, "rho": 0.8}
    op = {"op": "redistribute_attention", "target_segment": "passage", "p": 0.6}
    result = run(model, prompts, [{**op, "heads": select}], args.runs_dir, "ctx-var",
                 "p=0,0.3,0.6,0.9")
    n = len(result.read_manifest()["intervention"]["heads"][0])
    for seed in range(3):
        run(model, prompts, [{**op, "heads": {"select": "random", "k": n, "seed": seed}}],
            args.runs_dir, f"ctx-var-random{seed}", "p=0.6,0.9")


if __name__ == "__main__":
    main()
