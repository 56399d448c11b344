"""Benchmark: activation patching of every head, naive loop against the resumed forward.

    python -m bench.patching [--n-prompts 16] [--every 1] [--layer-every 1] [--heads-per-forward N]
                             [--json out.json]

On SmolLM2-135M (fp32, the machine's torch threads), over the first ``--n-prompts`` IOI prompts in
one batch, corrupted into clean at ``hook_z``, every ``--every``-th head of the 270, of every
``--layer-every``-th layer (the suite: every head of layers 0, 3, 6, ..., 27, 90 heads: the same
mix of depths as all 270 in a third of the time):

* ``naive``: :func:`circuits.patching.naive_activation_patching`, one full forward per head (all
  blocks, logits at every position), the usual TransformerLens loop;
* ``resumed``: :func:`circuits.patching.activation_patching`, blocks ``l..L-1`` only from cached
  block inputs, the unembedding at the last token only, ``--heads-per-forward`` heads per pass;
* ``attribution``: :func:`circuits.attribution.attribution_patching` (EAP, arXiv:2310.10348): one
  forward and one backward per batch for all heads, an estimate.

All run in the same process (resumed first, then naive, then resumed again; the faster resumed
time counts; attribution last), check that resumed and naive agree, and the script prints the
times and the speedups. ``--quick``: 4 prompts, every 27th head (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.targets import target_row


def measure(n_prompts: int = 16, every: int = 1, heads_per_forward: int | None = None,
            layer_every: int = 1) -> dict:
    """Times (s) of the three methods, the speedups and the resumed-vs-naive agreement."""
    import numpy as np
    import torch

    from circuits.attribution import attribution_patching
    from circuits.patching import activation_patching, naive_activation_patching
    from circuits.tasks import load_task
    from workbench.heads import all_heads
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=n_prompts)
    heads = [h for h in all_heads(model.info.n_layers, model.info.n_heads)[::every]
             if h[0] % layer_every == 0]
    times: dict[str, list[float]] = {}

    def timed(name, fn, **kwargs):
        start = time.perf_counter()
        result = fn(model, task, batch_size=n_prompts, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    fast = timed("resumed", activation_patching, heads=heads, heads_per_forward=heads_per_forward)
    naive = timed("naive", naive_activation_patching, heads=heads)
    timed("resumed", activation_patching, heads=heads, heads_per_forward=heads_per_forward)
    timed("attribution", attribution_patching)
    ok = ~np.isnan(naive.patched)
    best = {name: min(values) for name, values in times.items()}
    return {"times_s": times, "best_s": best, "speedup": best["naive"] / best["resumed"],
            "attribution_speedup_vs_naive": best["naive"] / best["attribution"],
            "max_diff": float(np.abs(fast.patched[ok] - naive.patched[ok]).max()),
            "n_heads": len(heads), "n_prompts": len(task),
            "heads_per_forward": heads_per_forward or _default_heads(model),
            "device": model.info.device, "dtype": model.info.dtype,
            "torch_threads": torch.get_num_threads()}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench`` and the raw result."""
    res = measure(4, 27) if quick else measure(layer_every=3)
    what = f"{res['n_heads']} heads x {res['n_prompts']} IOI prompts"
    best = res["best_s"]
    rows = [{"benchmark": "patching", "measure": f"naive loop ({what})", "value": best["naive"],
             "unit": "s"},
            target_row("patching", "resumed + batched: speedup over naive", res["speedup"], "x",
                       3.0, ">=", f"resumed {best['resumed']:.1f} s, {res['heads_per_forward']} "
                       f"heads per forward; max |LD difference| {res['max_diff']:.1e}"),
            {"benchmark": "patching", "measure": "attribution (EAP estimate)",
             "value": best["attribution"], "unit": "s",
             "note": f"{res['attribution_speedup_vs_naive']:.1f}x faster than naive"}]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--every", type=int, default=1, help="patch every k-th head (smoke runs)")
    parser.add_argument("--heads-per-forward", type=int, default=None)
    parser.add_argument("--layer-every", type=int, default=1, help="heads of every k-th layer")
    parser.add_argument("--quick", action="store_true", help="4 prompts, every 27th head")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(4, 27) if args.quick else measure(args.n_prompts, args.every,
                                                    args.heads_per_forward, args.layer_every)
    best = res["best_s"]
    print(f"activation patching, {res['n_heads']} heads x {res['n_prompts']} IOI prompts, "
          f"SmolLM2-135M {res['dtype']} on {res['device']}, torch threads {res['torch_threads']}")
    print(f"naive (full forward per head):   {best['naive']:8.2f} s")
    runs = ", ".join(f"{t:.2f}" for t in res["times_s"]["resumed"])
    print(f"resumed (blocks l..L-1, last-token unembedding, {res['heads_per_forward']} head(s) "
          f"per forward): {best['resumed']:8.2f} s  (runs: {runs})")
    print("attribution (all heads, one forward + backward per batch): "
          f"{best['attribution']:8.2f} s")
    print(f"speedup: {res['speedup']:.2f}x; max |LD difference| {res['max_diff']:.1e} logits")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


def _default_heads(model) -> int:
    return model.info.n_heads  # activation_patching's default


if __name__ == "__main__":
    sys.exit(main())
