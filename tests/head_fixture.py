"""A hand-made atlas with every optional part of the atlas contract (/work/CONTRACTS.md): causal
role tests, per-head ablation effects, IOI classes, faithful circuits, composition scores, stored
example patterns with their tokens, and a circuits part run with direct logit attribution. The
numbers are chosen by hand so that the head page's tables can be checked cell by cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from tests.app_fixture import TOP_INDUCTION, make_atlas, make_full_run
from workbench.heads import format_head
from workbench.records import TOKENS_SCHEMA, concat, conform, records

HEAD = TOP_INDUCTION  # the head whose page the tests open (L2H1)
CAUSAL = {"induction": {"effect": 1.25, "effect_lo": 0.9, "effect_hi": 1.6, "control_mean": 0.1,
                        "control_sd": 0.05, "p_value": 0.0476, "n_heads": 3, "n_draws": 20,
                        "metric": "loss_second_repeat", "unit": "nats",
                        "ablation": "mean", "source": "repeated", "heads": [], "note": ""},
          "low_entropy": {"descriptive": True, "note": "entropy describes the pattern"},
          "sink": {"n_heads": 0, "note": "no held heads"}}
HEAD_EFFECT = 0.42  # induction_head_effect of HEAD
IOI = {"name_mover": {"criterion": "path patching to logits; attends END->IO", "heads": []}}
CIRCUIT = {"selection": "faithfulness=0.8", "method": "path", "size": 5,
           "faithfulness_normalised": 0.83, "lo": 0.75, "hi": 0.9, "target": 0.8,
           "reached": True, "random_mean": 0.05, "random_sd": 0.02, "held_out": {}}
# (sender, receiver, metric, value): HEAD receives from L0H2 and L1H0, sends to L3H1
COMPOSITION = [((0, 2), HEAD, "k_composition", 0.31), ((1, 0), HEAD, "k_composition", 0.12),
               ((1, 0), HEAD, "q_composition", 0.08), (HEAD, (3, 1), "v_composition", 0.27),
               ((0, 0), (3, 2), "q_composition", 0.5)]
OV_COPYING = 0.66
DLA = {"ioi": (0.7, 0.5, 0.9), "induction": (-0.2, -0.3, -0.1)}  # mean, lo, hi of HEAD
PATTERN_TOKENS = ["A", " b", " A", " b"]


def _pattern() -> np.ndarray:
    """HEAD's stored example pattern: an induction pattern (the second A attends to b)."""
    p = np.tril(np.full((4, 4), 0.1))
    p[0, 0], p[1, :2], p[2, :3], p[3, :4] = 1, [0.5, 0.5], [0.2, 0.7, 0.1], [0.1, 0.1, 0.7, 0.1]
    return p


def make_evidence_atlas(runs: Path, run_id: str = "atlas-evidence") -> Path:
    """An atlas folder (and its part runs) with every optional part of the contract."""
    make_full_run(runs)
    circuits = make_full_run(runs, "circuits-part", seed=2)
    folder = make_atlas(runs, run_id)
    heads = pd.read_parquet(folder / "atlas.parquet")
    at = (heads["layer"] == HEAD[0]) & (heads["head"] == HEAD[1])
    heads["induction_effect"] = np.where(heads["induction"], CAUSAL["induction"]["effect"],
                                         np.nan)
    heads["induction_effect_p"] = np.where(heads["induction"], 0.0476, np.nan)
    heads["induction_head_effect"] = np.where(at, HEAD_EFFECT, np.nan)
    heads["ioi_class"] = np.where(at, "name_mover", None)
    heads["ioi_circuit"] = at
    heads.to_parquet(folder / "atlas.parquet", index=False)
    doc = json.loads((folder / "atlas.json").read_text())
    doc["runs"]["circuits"] = {"run_id": "circuits-part", "path": "../circuits-part"}
    doc.update(causal=CAUSAL, ioi_classes={k: {**v, "heads": [format_head(HEAD)]}
                                           for k, v in IOI.items()},
               circuits={"ioi": CIRCUIT}, composition={"baseline": {}, "top_pairs": []})
    (folder / "atlas.json").write_text(json.dumps(doc))
    parts = [records(metric, value, layer=receiver[0], head=receiver[1],
                     condition=f"sender={format_head(sender)}")
             for sender, receiver, metric, value in COMPOSITION]
    parts.append(records("ov_copying", OV_COPYING, layer=HEAD[0], head=HEAD[1]))
    _write(folder / "composition.parquet", conform(concat(parts), run_id=run_id,
                                                   probe="composition"))
    p = _pattern()
    q, k = np.tril_indices(4)
    _write(folder / "head_patterns.parquet", conform(records(
        "pattern", p[q, k], layer=HEAD[0], head=HEAD[1], prompt_id="ex0", query_pos=q,
        key_pos=k), run_id=run_id, probe="attention_pattern"))
    _write(folder / "tokens.parquet", pa.Table.from_pylist(
        [{"prompt_id": "ex0", "pos": i, "token_id": i, "token": t, "char_start": 0,
          "char_end": 0} for i, t in enumerate(PATTERN_TOKENS)], schema=TOKENS_SCHEMA))
    dla = []
    for task, (mean, lo, hi) in DLA.items():
        for metric, value in (("dla_mean", mean), ("dla_lo", lo), ("dla_hi", hi)):
            dla.append(records(metric, value, layer=HEAD[0], head=HEAD[1], segment=task,
                               condition="head"))
        dla.append(records("dla_mean", 0.01, segment=task, condition="attn_bias"))
    circuits.write_table("direct_logit_attribution",
                         conform(concat(dla), run_id="circuits-part",
                                 probe="direct_logit_attribution"))
    return folder


def _write(path: Path, table: pa.Table) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, path)


__all__ = ["CAUSAL", "CIRCUIT", "COMPOSITION", "DLA", "HEAD", "HEAD_EFFECT", "IOI", "OV_COPYING",
           "PATTERN_TOKENS", "make_evidence_atlas"]
