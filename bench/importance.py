"""Benchmark: Michel head importance against one forward + backward pass, and L0 gate training.

    python -m bench.importance [--n-prompts 64] [--steps 200] [--batch-size 8] [--json out.json]

On SmolLM2-135M (fp32, CPU), natural text (``data/natural.jsonl`` has 55 prompts; to reach
``--n-prompts`` the first ones are reused under new ids, so 64 = all 55 + the first 9 again):

* ``forward_backward``: per batch, one forward with gradients, the summed LM loss and
  ``loss.backward()`` into every parameter (an ordinary training step without the update);
* ``importance``: :func:`pruning.importance.head_importance` on the same batches (one forward and
  one backward to the per-prompt head gates);
* ``forward``: the same forwards under ``inference_mode`` (for scale);
* ``gate_training``: :func:`pruning.learn.train_gates`, ``--steps`` steps of ``--gate-batch``
  IOI prompts (``data/ioi.jsonl``, objective ``logit_diff``, lambda 0.003; the objective the
  README's learned gates use).

Each pass runs twice, alternating, and the faster run counts. Target: importance <= 3x the forward
+ backward pass.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path


def natural_data(model, n_prompts: int):
    """``n_prompts`` natural-text prompts for the LM loss (reused under new ids past 55)."""
    from pruning.objectives import prepare
    from workbench.prompts import load_prompt_set

    data = prepare(model, load_prompt_set(Path("data") / "natural.jsonl"), "lm")
    tok = list(data.tokenized)
    extra = [replace(t, prompt=replace(t.prompt, id=f"{t.id}~repeat"))
             for t in tok[:max(0, n_prompts - len(tok))]]
    return replace(data, tokenized=tuple((tok + extra)[:n_prompts]))


def forward_backward(model, data, batch_size: int) -> None:
    import torch

    from pruning.objectives import metric_values

    for batch in data.batches(batch_size):
        with torch.enable_grad():
            logits = model.bridge(batch.input_ids, **batch.model_kwargs())
            metric_values(data, logits, batch).sum().backward()
        model.bridge.zero_grad(set_to_none=True)


def forward(model, data, batch_size: int) -> None:
    import torch

    for batch in data.batches(batch_size):
        with torch.inference_mode():
            model.bridge(batch.input_ids, **batch.model_kwargs())


def measure(n_prompts: int = 64, steps: int = 200, batch_size: int = 8,
            gate_batch: int = 8) -> dict:
    """Times (s) of the passes, the ratio, and the gate-training time."""
    import torch

    from pruning.importance import head_importance
    from pruning.learn import GateTraining, train_gates
    from pruning.objectives import prepare
    from workbench.models import load_model
    from workbench.prompts import load_prompt_set

    model = load_model("smollm2-135m")
    data = natural_data(model, n_prompts)
    times: dict[str, list[float]] = {}

    def timed(name, fn, *args, **kwargs):
        start = time.perf_counter()
        fn(*args, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - start)

    for _ in range(2):
        timed("forward_backward", forward_backward, model, data, batch_size)
        timed("importance", head_importance, model, data, batch_size=batch_size)
    timed("forward", forward, model, data, batch_size)
    ioi = prepare(model, load_prompt_set(Path("data") / "ioi.jsonl"), "logit_diff")
    gates = train_gates(model, ioi, GateTraining(0.003, steps=steps, batch_size=gate_batch,
                                                 lr=0.1))
    best = {k: min(v) for k, v in times.items()}
    return {"times_s": times, "best_s": best, "gate_training_s": gates.seconds,
            "ratio": best["importance"] / best["forward_backward"], "n_prompts": len(data.ids),
            "n_tokens": int(sum(t.n_tokens for t in data.tokenized)), "steps": steps,
            "batch_size": batch_size, "gate_batch": gate_batch,
            "gate_step_s": gates.seconds / steps, "torch_threads": torch.get_num_threads()}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench`` and the raw result."""
    res = measure(8, 5) if quick else measure()
    what = f"{res['n_prompts']} natural prompts, {res['n_tokens']} tokens"
    best = res["best_s"]
    rows = [{"benchmark": "importance", "measure": f"forward + backward ({what})",
             "value": best["forward_backward"], "unit": "s"},
            {"benchmark": "importance", "measure": "head importance (all 270 heads)",
             "value": best["importance"], "unit": "s",
             "note": f"{res['ratio']:.2f}x the forward + backward (target <= 3x)"},
            {"benchmark": "importance", "measure": f"gate training, {res['steps']} steps of "
             f"{res['gate_batch']} IOI prompts", "value": res["gate_training_s"], "unit": "s",
             "note": f"{res['gate_step_s']:.2f} s per step"}]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-prompts", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gate-batch", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(args.n_prompts, args.steps, args.batch_size, args.gate_batch)
    best = res["best_s"]
    print(f"{res['n_prompts']} natural prompts ({res['n_tokens']} tokens), SmolLM2-135M fp32, "
          f"torch threads {res['torch_threads']}")
    print(f"forward:            {best['forward']:8.2f} s")
    print(f"forward + backward: {best['forward_backward']:8.2f} s")
    print(f"importance:         {best['importance']:8.2f} s  ({res['ratio']:.2f}x)")
    print(f"gate training:      {res['gate_training_s']:8.2f} s for {res['steps']} steps "
          f"({res['gate_step_s']:.2f} s/step)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
