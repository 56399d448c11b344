"""A small synthetic run with every record shape the figure sets draw (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from workbench.records import PROMPTS_SCHEMA, TOKENS_SCHEMA, concat, conform, records
from workbench.store import RunDir

N_LAYERS, N_HEADS = 4, 3
PROMPTS = {"p0": ["The", " cat", " sat", " on", " mats"], "p1": ["A", " b", "\n", " ", "c", " d"],
           "p2": ["x", " y", " z", " w"]}
UNITS = {"score": "logit", "layer_norm": "norm units", "attn": "fraction of attention",
         "sink": "fraction of attention", "effect": "logit", "seg_mass": "fraction of attention"}
ALPHAS = (0.0, 0.5, 1.0, 2.0)


def _per_head(rng) -> list[pa.Table]:
    out = []
    for pid in PROMPTS:
        for layer in range(N_LAYERS):
            heads = np.arange(N_HEADS)
            out.append(records("score", rng.normal(layer - 1.5, 1.0, N_HEADS), layer=layer,
                               head=heads, prompt_id=pid))
            out.append(records("layer_norm", rng.uniform(1, 2) * (layer + 1), layer=layer,
                               prompt_id=pid))
            for segment in ("IO", "S1"):
                out.append(records("seg_mass", rng.uniform(0, 1, N_HEADS), layer=layer,
                                   head=heads, prompt_id=pid, segment=segment))
    return out


def _patterns(rng) -> list[pa.Table]:
    out = []
    for pid, toks in PROMPTS.items():
        n = len(toks)
        for layer in range(N_LAYERS):
            for head in range(N_HEADS):
                q, k = np.tril_indices(n)
                logits = rng.normal(size=len(q))
                pattern = np.zeros((n, n))
                pattern[q, k] = np.exp(logits)
                pattern /= pattern.sum(1, keepdims=True)
                out.append(records("attn", pattern[q, k], layer=layer, head=head, prompt_id=pid,
                                   query_pos=q, key_pos=k))
                out.append(records("sink", pattern[n - 1], layer=layer, head=head, prompt_id=pid,
                                   key_pos=np.arange(n)))
    return out


def _sweep(rng) -> list[pa.Table]:
    out = []
    for pid in PROMPTS:
        for layer, head in ((1, 2), (3, 0)):
            out.append(records("effect", rng.normal(2.0, 0.1), layer=layer, head=head,
                               prompt_id=pid, condition="clean"))
            for alpha in ALPHAS:
                out.append(records("effect", 2.0 * alpha + rng.normal(0, 0.1), layer=layer,
                                   head=head, prompt_id=pid, condition=f"alpha={alpha:g}"))
    return out


def fixture_table(seed: int = 0) -> pa.Table:
    """The record table ``probe_a`` (schema-conformed)."""
    rng = np.random.default_rng(seed)
    table = concat(_per_head(rng) + _patterns(rng) + _sweep(rng))
    return conform(table, run_id="fixture", probe="probe_a")


def tokens_table() -> pa.Table:
    rows = [{"prompt_id": pid, "pos": i, "token_id": i, "token": tok, "char_start": 0,
             "char_end": 0} for pid, toks in PROMPTS.items() for i, tok in enumerate(toks)]
    return pa.Table.from_pylist(rows, schema=TOKENS_SCHEMA)


def make_run(runs_dir: Path, run_id: str = "fixture", metrics: tuple[str, ...] = ()) -> RunDir:
    """Write the synthetic run ``runs_dir/run_id`` (run.json, probe_a, prompts, tokens), with only
    ``metrics`` when given."""
    table = fixture_table()
    if metrics:
        table = table.filter(pc.is_in(table["metric"], pa.array(list(metrics))))
    manifest = {"run_id": run_id, "status": "complete", "units": UNITS,
                "model": {"name": "synthetic", "n_layers": N_LAYERS, "n_heads": N_HEADS},
                "prompts": {"sha256": "0" * 64}, "git": {"commit": None},
                "tables": {"probe_a": {"rows": table.num_rows,
                                       "metrics": sorted(set(table["metric"].to_pylist()))}}}
    run, _ = RunDir.create(runs_dir, run_id, manifest, resume=False, overwrite=True,
                           same_config=lambda m: None)
    run.write_table("probe_a", table)
    run.write_table("tokens", tokens_table())
    prompts = [{"prompt_id": pid, "text": "".join(t), "n_tokens": len(t), "task": None,
                "answer": None, "distractor": None, "corrupted_text": None, "segments": None,
                "source": None} for pid, t in PROMPTS.items()]
    run.write_table("prompts", pa.Table.from_pylist(prompts, schema=PROMPTS_SCHEMA))
    return run
