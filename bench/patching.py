"""Benchmark: activation patching of every head, naive loop against the resumed forward.

    python -m bench.patching [--n-prompts 16] [--every 1] [--heads-per-forward N] [--json out.json]

On SmolLM2-135M (fp32, the machine's torch threads), over the first ``--n-prompts`` IOI prompts in
one batch, corrupted into clean at ``hook_z``, every ``--every``-th head of the 270:

* ``naive``: :func:`circuits.patching.naive_activation_patching`, one full forward per head (all
  blocks, logits at every position), the usual TransformerLens loop;
* ``resumed``: :func:`circuits.patching.activation_patching`, blocks ``l..L-1`` only from cached
  block inputs, the unembedding at the last token only, ``--heads-per-forward`` heads per pass.

Both run once in the same process (resumed first, then naive, then resumed again; the faster
resumed time counts), check that they agree, and the script prints the times and the speedup.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=16)
    parser.add_argument("--every", type=int, default=1, help="patch every k-th head (smoke runs)")
    parser.add_argument("--heads-per-forward", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from circuits.patching import activation_patching, naive_activation_patching
    from circuits.tasks import load_task
    from workbench.heads import all_heads
    from workbench.models import load_model

    model = load_model("smollm2-135m")
    task = load_task("ioi", model, n_prompts=args.n_prompts)
    heads = all_heads(model.info.n_layers, model.info.n_heads)[::args.every]
    common = dict(heads=heads, batch_size=args.n_prompts)
    times = {}

    def timed(name, fn, **kwargs):
        start = time.perf_counter()
        result = fn(model, task, **common, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - start)
        return result

    fast = timed("resumed", activation_patching, heads_per_forward=args.heads_per_forward)
    naive = timed("naive", naive_activation_patching)
    timed("resumed", activation_patching, heads_per_forward=args.heads_per_forward)
    ok = ~np.isnan(naive.patched)
    diff = float(np.abs(fast.patched[ok] - naive.patched[ok]).max())
    best = {name: min(values) for name, values in times.items()}
    ratio = best["naive"] / best["resumed"]
    print(f"activation patching, {len(heads)} heads x {len(task)} IOI prompts, SmolLM2-135M "
          f"{model.info.dtype} on {model.info.device}, torch threads {torch.get_num_threads()}")
    print(f"naive (full forward per head):   {best['naive']:8.2f} s")
    runs = ", ".join(f"{t:.2f}" for t in times["resumed"])
    print(f"resumed (blocks l..L-1, last-token unembedding, {fast_heads(args, model)} head(s) per "
          f"forward): {best['resumed']:8.2f} s  (runs: {runs})")
    print(f"speedup: {ratio:.2f}x; max |LD difference| {diff:.1e} logits")
    if args.json:
        args.json.write_text(json.dumps({"times_s": times, "speedup": ratio, "max_diff": diff,
                                         "n_heads": len(heads), "n_prompts": len(task)}, indent=2))
    return 0


def fast_heads(args, model) -> int:
    from circuits.patching import default_heads_per_forward

    return args.heads_per_forward or default_heads_per_forward(model)


if __name__ == "__main__":
    sys.exit(main())
