"""Lost in the middle, side by side: behaviour by answer depth next to the attention position bias.

    python -m experiments.lost_in_the_middle [--model smollm2-135m] [--prompts data/retrieval.jsonl]
        [--attention-mask window:16] [--runs-dir runs] [--batch-size 8] [--layers 0,2,4,-1]
        [--profile-layers 0,1,2,3,4,6,10,-1] [--json out.json] [--reuse]

1. Runs the ``position_bias`` probe (``segment=needle``) over the retrieval set (run id
   ``lost-in-the-middle-<model>-<mask>``; overwritten unless ``--reuse`` finds it complete) and
   prints, per layer, the prompt-mean first-token, first-k, middle and last-k mass of the last
   token's cumulative attention for the pure product and the residual-aware rollout, and the
   per-token profile by tenth of the prompt at ``--profile-layers``.
2. Computes, per prompt, the logit difference answer - distractor at the last token
   (``workbench.forward.last_logits`` + ``workbench.metrics``), and prints per answer depth
   (``meta.depth`` and ``meta.depth_fraction``): prompts, accuracy (answer beats distractor, chance
   0.5), top-1 accuracy (answer is the argmax), mean logit difference, and the last token's
   residual-aware cumulative attention on the needle line at ``--layers`` (default 0,2,4,-1).

With ``--attention-mask`` both the probe run and the behavioural forward use the mask.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from probes import make_probes
from workbench.forward import last_logits
from workbench.masks import AttentionMask, mask_hooks
from workbench.metrics import answer_token_ids, logit_diff
from workbench.models import load_model
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.store import RunDir
from workbench.tokens import make_batches, pad_token_id, tokenize_prompt_set


def behaviour(model, prompt_set, mask: AttentionMask | None, batch_size: int) -> pd.DataFrame:
    """Per prompt: logit difference, whether the answer beats the distractor, and is top-1."""
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos)
    hooks = mask_hooks(model, mask) if mask is not None else []
    rows = []
    for batch in make_batches(tokenized, batch_size, pad_token_id(model.tokenizer)):
        last = last_logits(model, batch, hooks).float()
        answer = answer_token_ids(model.tokenizer, batch.prompts)
        distractor = answer_token_ids(model.tokenizer, batch.prompts, "distractor")
        diff = logit_diff(last, answer, distractor).cpu()
        top = last.argmax(-1).cpu() == answer
        for tok, d, t in zip(batch.prompts, diff.tolist(), top.tolist()):
            rows.append({"prompt_id": tok.id, "depth": tok.prompt.meta.get("depth"),
                         "depth_fraction": tok.prompt.meta.get("depth_fraction"),
                         "logit_diff": d, "correct": d > 0, "top1": bool(t)})
    return pd.DataFrame(rows)


def attention_by_layer(table: pd.DataFrame) -> pd.DataFrame:
    """Prompt means per layer: first-token, first-k, middle, last-k mass for both conditions."""
    means = table[table.metric.str.startswith("mean_") & table.prompt_id.isna()]
    wide = means.pivot_table(index="layer", columns=["metric", "condition"], values="value")
    cols = [(f"mean_{m}", c) for m in ("first_token_mass", "first_k_mass", "middle_mass",
                                       "last_k_mass") for c in ("product", "rollout")]
    wide = wide[cols]
    wide.columns = [f"{m[5:]}:{c}" for m, c in cols]
    return wide


def profile_by_decile(table: pd.DataFrame, layers: list[int]) -> pd.DataFrame:
    """The last token's cumulative attention per token, in percent, averaged over prompts and over
    the positions of each tenth of the prompt (decile 0 holds the first token), at ``layers``."""
    rows = table[(table.metric == "last_token_profile") & table.layer.isin(layers)].copy()
    n = rows.groupby("prompt_id").key_pos.transform("max") + 1
    rows["decile"] = (rows.key_pos * 10 // n).clip(upper=9).astype(int)
    wide = rows.groupby(["condition", "layer", "decile"]).value.mean().unstack("decile") * 100
    wide.columns = [f"d{c}" for c in wide.columns]
    return wide


def by_depth(beh: pd.DataFrame, table: pd.DataFrame, layers: list[int]) -> pd.DataFrame:
    """Behaviour and the last token's cumulative attention on the needle line (rollout, at
    ``layers``) grouped by answer depth."""
    needle = table[(table.metric == "segment_mass") & (table.condition == "rollout")
                   & table.layer.isin(layers)]
    needle = needle.pivot(index="prompt_id", columns="layer", values="value")
    needle.columns = [f"needle_rollout_L{layer}" for layer in needle.columns]
    joined = beh.merge(needle, left_on="prompt_id", right_index=True)
    agg = {"n": ("prompt_id", "size"), "accuracy": ("correct", "mean"), "top1": ("top1", "mean"),
           "logit_diff": ("logit_diff", "mean"), **{c: (c, "mean") for c in needle.columns}}
    label = joined.groupby("depth", sort=False).agg(**agg)
    fraction = joined.groupby("depth_fraction").agg(**agg)
    order = [d for d in ("beginning", "middle", "end") if d in label.index]
    return pd.concat({"depth": label.loc[order], "depth_fraction": fraction},
                     names=["grouped_by", "answer_depth"])


def markdown(frame: pd.DataFrame, digits: int) -> str:
    """A pipe table of ``frame`` (index included), floats to ``digits`` decimals."""
    frame = frame.reset_index()
    cell = lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(False)]
    return "\n".join(lines)


def _complete_run(path: Path) -> RunDir | None:
    if not (path / "run.json").exists():
        return None
    run = RunDir.open(path)
    return run if run.read_manifest().get("status") == "complete" else None


def _layer_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=Path, default=Path("data/retrieval.jsonl"))
    parser.add_argument("--attention-mask", default=None)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="also write the tables as JSON")
    parser.add_argument("--layers", type=_layer_list, default=[0, 2, 4, -1],
                        help="layers for the needle attention columns")
    parser.add_argument("--profile-layers", type=_layer_list, default=[0, 1, 2, 3, 4, 6, 10, -1],
                        help="layers for the decile profile")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a complete probe run of the same id instead of rerunning it")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    mask = AttentionMask.parse(args.attention_mask) if args.attention_mask else None
    model = load_model(args.model)
    prompt_set = load_prompt_set(args.prompts)
    run_id = f"lost-in-the-middle-{args.model.split('/')[-1]}-{mask or 'causal'}".replace(":", "_")
    run = _complete_run(args.runs_dir / run_id) if args.reuse else None
    run = run or execute_run(model, prompt_set, make_probes(
        ["position_bias"], {"position_bias": {"segment": "needle"}}), RunOptions(
        runs_dir=args.runs_dir, run_id=run_id, batch_size=args.batch_size, overwrite=True,
        attention_mask=None if mask is None else str(mask)))
    table = run.read_table("position_bias").to_pandas()
    with torch.inference_mode():
        beh = behaviour(model, prompt_set, mask, args.batch_size)
    n = model.info.n_layers
    tables = {"layers": attention_by_layer(table),
              "deciles": profile_by_decile(table, sorted({x % n for x in args.profile_layers})),
              "depth": by_depth(beh, table, sorted({x % n for x in args.layers}))}
    print(f"\nrun {run.path}; mask {mask or 'none (the model is causal)'}\n")
    print("Last token's cumulative attention, prompt means, per layer:")
    print(markdown(tables["layers"], 4))
    print("\nPer-token cumulative attention of the last token (%), by tenth of the prompt:")
    print(markdown(tables["deciles"], 2))
    print("\nBehaviour, and the rollout's mass on the needle line, by answer depth:")
    print(markdown(tables["depth"], 3))
    result = {"run": str(run.path), "mask": str(mask) if mask else None,
              **{k: v.reset_index().to_dict("records") for k, v in tables.items()}}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
