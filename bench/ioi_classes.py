"""Benchmark: the IOI head classes (``workbench circuits --ioi-classes``) against one attribution
pass, and the cheap first pass against exact path patching of every head.

    python -m bench.ioi_classes [--n-prompts 32] [--check-candidates] [--json out.json]

On SmolLM2-135M (fp32, the machine's torch threads), the first ``--n-prompts`` IOI prompts, batches
of 16, in one process:

* ``ioi_classes``: :func:`circuits.ioi_classes.ioi_classes` with the default cut-offs (four
  path-patching stages, each a linear estimate for every sender and exact path patching of the
  12 best, attention, copy scores, two direct-logit-attribution passes);
* ``attribution``: :func:`circuits.attribution.attribution_patching` (one forward and one backward
  per batch), run before and after, the faster counting: the unit the atlas's circuits part is
  made of.

``--check-candidates`` also path-patches every head to the logits (270 resumed forwards per batch)
and prints how many of the exact top-8 heads by |score| the first pass picked (recall).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def measure(n_prompts: int = 32, check_candidates: bool = False) -> dict:
    import numpy as np
    import torch

    from circuits.attribution import attribution_patching
    from circuits.ioi_classes import ioi_classes
    from circuits.path_patching import path_patching
    from circuits.tasks import load_task
    from workbench.heads import format_head
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return out
    timed("attribution", attribution_patching, model, task, batch_size=16)
    result = timed("ioi_classes", ioi_classes, model, task, batch_size=16)
    timed("attribution", attribution_patching, model, task, batch_size=16)
    best = {name: min(values) for name, values in times.items()}
    out = {"times_s": times, "best_s": best, "ratio": best["ioi_classes"] / best["attribution"],
           "classes": {format_head(h): c for h, c in sorted(result.classes.items())},
           "n_prompts": len(task), "torch_threads": torch.get_num_threads()}
    if check_candidates:
        full = timed("path_all", path_patching, model, task, batch_size=16)
        score = np.nan_to_num(full.score)
        top = {tuple(int(v) for v in np.unravel_index(i, score.shape))
               for i in np.argsort(-np.abs(score), axis=None)[:8]}
        picked = set(result.stages["name_mover"].candidates)
        out.update(path_all_s=times["path_all"][0], recall_top8=len(top & picked) / 8,
                   exact_top8=[format_head(h) for h in sorted(top)],
                   picked=[format_head(h) for h in sorted(picked)])
    return out


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench`` and the raw result."""
    res = measure(8 if quick else 32)
    rows = [{"benchmark": "ioi_classes", "measure": f"IOI classes ({res['n_prompts']} prompts)",
             "value": res["best_s"]["ioi_classes"], "unit": "s",
             "note": f"{res['ratio']:.1f}x one attribution pass"}]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=32)
    parser.add_argument("--check-candidates", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(args.n_prompts, args.check_candidates)
    best = res["best_s"]
    print(f"IOI classes, SmolLM2-135M, {res['n_prompts']} IOI prompts, torch threads "
          f"{res['torch_threads']}")
    print(f"ioi_classes: {best['ioi_classes']:8.2f} s; attribution pass: "
          f"{best['attribution']:8.2f} s; ratio {res['ratio']:.1f}")
    print("classes: " + ", ".join(f"{h} {c}" for h, c in res["classes"].items()))
    if "recall_top8" in res:
        print(f"first pass vs exact path patching of all heads to the logits "
              f"({res['path_all_s']:.1f} s): recall of the exact top 8 = {res['recall_top8']:.2f}"
              f"; exact {res['exact_top8']}; picked {res['picked']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
