"""Do the heads that diverge most without the passage carry the context answer?

    python -m experiments.context_ablation                 # SmolLM2-135M, the shipped sets
    python -m experiments.context_ablation --draws 20 --k 10 --seed 0 --out runs/ctx.json

On the counterfactual-context set (``data/counterfactual_context.jsonl``) and its closed-book twin:

1. logit difference (answer - distractor, ``workbench.metrics``) and accuracy with the passage and
   without it (closed book);
2. a ``head_divergence`` run (segment ``passage``, ``removal=drop``, ``hook_z``, last token),
   written to ``<runs-dir>/<model>-context-divergence``; its top-``k`` heads by ``mean_vhd``;
3. the task with those ``k`` heads zero-ablated (``workbench.heads.scale_heads_hooks``, alpha 0 on
   ``hook_z``), and with ``k`` heads drawn uniformly at random from all heads, ``draws`` times
   (``numpy.random.default_rng(seed)``): mean and sample sd over draws of each draw's mean logit
   difference and accuracy;
4. the same comparison held out: heads chosen on the even-indexed prompts only, ablation measured
   on the odd-indexed ones (the random draws' numbers restricted to those prompts).

Accuracy with and without the passage is also given per ``meta.kind``. Prints a summary and writes
every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.head_divergence import HeadDivergence
from workbench.forward import last_logits
from workbench.heads import Head, all_heads, format_head, scale_heads_hooks
from workbench.metrics import accuracy, answer_token_ids, logit_diff
from workbench.prompts import PromptSet, load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.selection import top_heads
from workbench.tokens import make_batches, pad_token_id, tokenize_prompt_set

ROOT = Path(__file__).resolve().parent.parent
OPEN_SET = ROOT / "data" / "counterfactual_context.jsonl"
CLOSED_SET = ROOT / "data" / "counterfactual_context_closed.jsonl"


def task_logit_diff(model: Any, prompt_set: PromptSet, heads: Sequence[Head] = (),
                    batch_size: int = 16) -> np.ndarray:
    """``[n]`` logit difference of every prompt (file order), with ``heads`` zero-ablated."""
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer,
                                    prepend_bos=model.info.prepend_bos, images=model.images)
    hooks = scale_heads_hooks(heads, 0.0) if heads else []
    order = {tok.id: i for i, tok in enumerate(tokenized)}
    out = np.zeros(len(tokenized))
    for batch in make_batches(tokenized, batch_size, pad_token_id(model.tokenizer)):
        diff = logit_diff(last_logits(model, batch, hooks),
                          answer_token_ids(model.tokenizer, batch.prompts),
                          answer_token_ids(model.tokenizer, batch.prompts, "distractor"))
        for tok, value in zip(batch.prompts, diff.cpu().tolist()):
            out[order[tok.id]] = value
    return out


def _stats(diff: np.ndarray) -> dict[str, float]:
    return {"logit_diff": float(diff.mean()), "accuracy": accuracy(torch.as_tensor(diff))}


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def _by_kind(prompt_set: PromptSet, diff: np.ndarray) -> dict[str, dict[str, float]]:
    """Logit difference and accuracy per ``meta.kind`` (prompts without one: ``"all"``)."""
    kinds = np.array([p.meta.get("kind", "all") for p in prompt_set.prompts])
    return {k: {"n": int((kinds == k).sum()), **_stats(diff[kinds == k])}
            for k in sorted(set(kinds))}


def divergence_run(model: Any, prompt_set: PromptSet, runs_dir: Path, batch_size: int = 16):
    """Run ``head_divergence`` (segment ``passage``, defaults otherwise); returns the run."""
    run_id = f"{model.info.name.rstrip('/').split('/')[-1]}-context-divergence"
    return execute_run(model, prompt_set, [HeadDivergence(segment="passage")],
                       RunOptions(runs_dir=runs_dir, run_id=run_id, batch_size=batch_size,
                                  overwrite=True, progress=False))


def random_draws(n_layers: int, n_heads: int, k: int, draws: int, seed: int) -> list[list[Head]]:
    """``draws`` sets of ``k`` distinct heads, uniform over all heads (reproducible by ``seed``)."""
    rng = np.random.default_rng(seed)
    heads = all_heads(n_layers, n_heads)
    return [sorted(heads[i] for i in rng.choice(len(heads), size=k, replace=False))
            for _ in range(draws)]


def _ablations(model: Any, prompt_set: PromptSet, top: list[Head], draws: list[list[Head]],
               batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-prompt logit differences with ``top`` ablated, ``[n]``, and with each draw ablated,
    ``[draw, n]``."""
    ablated_top = task_logit_diff(model, prompt_set, top, batch_size)
    per_draw = np.stack([task_logit_diff(model, prompt_set, heads, batch_size) for heads in draws])
    return ablated_top, per_draw


def _random_stats(draws: list[list[Head]], per_draw: np.ndarray, cols=slice(None)) -> dict:
    ld = per_draw[:, cols].mean(1)
    acc = (per_draw[:, cols] > 0).mean(1)
    return {"logit_diff_mean": float(ld.mean()), "logit_diff_sd": _sd(ld),
            "accuracy_mean": float(acc.mean()), "accuracy_sd": _sd(acc),
            "per_draw": [{"heads": [format_head(h) for h in heads], "logit_diff": float(d),
                          "accuracy": float(a)} for heads, d, a in zip(draws, ld, acc)]}


def _held_out(model: Any, open_set: PromptSet, table, draws, per_draw, baseline, k: int,
              batch_size: int) -> dict:
    """Heads chosen on the even-indexed prompts, ablated on the odd-indexed ones (the random
    draws' numbers restricted to the odd prompts)."""
    select = [p.id for p in open_set.prompts[0::2]]
    odd = PromptSet(open_set.prompts[1::2], open_set.files)
    top = top_heads(table, k, prompt_ids=select)
    ablated = task_logit_diff(model, odd, [h for h, _ in top], batch_size)
    random = _random_stats(draws, per_draw, slice(1, None, 2))
    del random["per_draw"]
    return {"select_on": "even-indexed prompts", "evaluate_on": "odd-indexed prompts",
            "top_heads": [{"head": format_head(h), "mean_vhd": v} for h, v in top],
            "baseline": _stats(baseline[1::2]), "ablate_top": _stats(ablated),
            "ablate_random": random}


def run_experiment(model: Any, open_set: PromptSet, closed_set: PromptSet, *, k: int = 10,
                   draws: int = 20, seed: int = 0, runs_dir: Path = Path("runs"),
                   batch_size: int = 16) -> dict:
    """Every number of the experiment (see the module docstring), as a JSON-able dict."""
    with_passage = task_logit_diff(model, open_set, batch_size=batch_size)
    closed = task_logit_diff(model, closed_set, batch_size=batch_size)
    run = divergence_run(model, open_set, runs_dir, batch_size)
    table = run.read_table(HeadDivergence.name)
    top = top_heads(table, k)
    sets = random_draws(model.info.n_layers, model.info.n_heads, k, draws, seed)
    ablated_top, per_draw = _ablations(model, open_set, [h for h, _ in top], sets, batch_size)
    return {
        "model": model.info.name, "n_prompts": len(open_set), "k": k, "draws": draws,
        "seed": seed, "divergence_run": str(run.path),
        "with_passage": _stats(with_passage), "without_passage": _stats(closed),
        "by_kind": {"with_passage": _by_kind(open_set, with_passage),
                    "without_passage": _by_kind(closed_set, closed)},
        "top_heads": [{"head": format_head(h), "mean_vhd": v} for h, v in top],
        "ablate_top": _stats(ablated_top),
        "ablate_random": _random_stats(sets, per_draw),
        "held_out": _held_out(model, open_set, table, sets, per_draw, with_passage, k,
                              batch_size),
    }


def summary(result: dict) -> str:
    """The headline numbers as a few lines of text."""
    r, w, o = result["ablate_random"], result["with_passage"], result["without_passage"]
    h = result["held_out"]
    top = ", ".join(f"{t['head']} ({t['mean_vhd']:.2f})" for t in result["top_heads"])
    closed = result["by_kind"]["without_passage"]
    kinds = "; ".join(f"{kind}: {v['accuracy']:.2f} / {closed[kind]['accuracy']:.2f}"
                      for kind, v in result["by_kind"]["with_passage"].items())
    return "\n".join([
        f"{result['model']}, {result['n_prompts']} prompts",
        f"with passage:    logit diff {w['logit_diff']:+.3f}, accuracy {w['accuracy']:.3f}",
        f"without passage: logit diff {o['logit_diff']:+.3f}, accuracy {o['accuracy']:.3f}",
        f"top-{result['k']} divergent heads (mean_vhd): {top}",
        f"ablate top-{result['k']}: logit diff {result['ablate_top']['logit_diff']:+.3f}, "
        f"accuracy {result['ablate_top']['accuracy']:.3f}",
        f"ablate {result['k']} random heads ({result['draws']} draws, seed {result['seed']}): "
        f"logit diff {r['logit_diff_mean']:+.3f} ± {r['logit_diff_sd']:.3f}, accuracy "
        f"{r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f}",
        f"accuracy with / without passage by kind: {kinds}",
        f"held out (heads chosen on even prompts, ablated on odd): baseline logit diff "
        f"{h['baseline']['logit_diff']:+.3f}; top-{result['k']} "
        f"{h['ablate_top']['logit_diff']:+.3f}; random {h['ablate_random']['logit_diff_mean']:+.3f}"
        f" ± {h['ablate_random']['logit_diff_sd']:.3f}",
    ])


def main(argv: list[str] | None = None) -> int:
    from workbench.models import load_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=Path, default=OPEN_SET)
    parser.add_argument("--closed", type=Path, default=CLOSED_SET)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.model, device=args.device)
    result = run_experiment(model, load_prompt_set(args.prompts), load_prompt_set(args.closed),
                            k=args.k, draws=args.draws, seed=args.seed, runs_dir=args.runs_dir,
                            batch_size=args.batch_size)
    print(summary(result))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
