"""``atlas.json["circuits"]``: per task, the circuit that decides the circuit role, read back from
the circuits part run (``circuits``, ``faithfulness`` and, with a faithfulness selection,
``circuit_search`` tables; :mod:`circuits.sized`).

``{task: {"selection", "method", "size", "heads", "faithfulness_normalised", "lo", "hi",
"faithfulness", "target", "reached", "random_mean", "random_sd", "n_random", "prefix_size",
"evaluations", "held_out": {"n_prompts", "faithfulness_normalised", "lo", "hi", "faithfulness",
"random_faithfulness"}}}`` (held-out random: circuit / model of random circuits);
``random_mean`` / ``random_sd``: the normalised faithfulness of the random circuits of the same
size (``(draw - empty) / (model - empty)`` from each draw's circuit / model ratio); ``target`` and
``reached`` are ``None`` for a ``top_k``-style selection.
"""

from __future__ import annotations

import math

import numpy as np

from workbench.heads import format_head
from workbench.store import RunDir


def _value(df, metric: str, **where) -> float:
    rows = df[df.metric == metric]
    for column, wanted in where.items():
        rows = rows[rows[column] == wanted]
    return float(rows.value.iloc[0]) if len(rows) else float("nan")


def _json(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def circuit_summary(run: RunDir, probe: str, selection: str) -> dict:
    """The ``circuits`` entry of ``atlas.json`` (module docstring) for the method ``probe``."""
    tables = run.tables()
    circ = run.read_table("circuits").to_pandas()
    faith = run.read_table("faithfulness").to_pandas()
    search = run.read_table("circuit_search").to_pandas() if "circuit_search" in tables else None
    circ, faith = circ[circ.probe == probe], faith[faith.probe == probe]
    out = {}
    for task in dict.fromkeys(circ.segment):
        c, f = circ[circ.segment == task], faith[faith.segment == task]
        members = c[c.metric == "member"]
        heads = [format_head((int(r.layer), int(r.head))) for r in members.itertuples()]
        model, empty = (_value(f, "logit_diff", condition=k) for k in ("model", "empty"))
        draws = f[f.metric == "faithfulness_random_draw"].value.to_numpy()
        random = (draws * model - empty) / (model - empty) if len(draws) else np.zeros(0)
        entry = {"selection": selection, "method": probe, "size": len(heads), "heads": heads,
                 "faithfulness_normalised": _value(f, "faithfulness_normalised"),
                 "lo": _value(f, "faithfulness_normalised_lo"),
                 "hi": _value(f, "faithfulness_normalised_hi"),
                 "faithfulness": _value(f, "faithfulness"),
                 "target": None, "reached": None,
                 "random_mean": float(random.mean()) if len(random) else float("nan"),
                 "random_sd": float(random.std(ddof=1)) if len(random) > 1 else float("nan"),
                 "n_random": int(len(random))}
        s = None if search is None else search[(search.probe == probe) & (search.segment == task)
                                              & search.condition.isna()]
        if s is not None and len(s):
            entry.update(target=_value(s, "target"), reached=bool(_value(s, "reached")),
                         prefix_size=int(_value(s, "prefix_size")),
                         cap=int(_value(s, "cap")),
                         evaluations={k: _value(s, f"evaluations_{k}") for k in
                                      ("curve", "search", "refine", "random")})
            n_mlps = int((search[(search.probe == probe) & (search.segment == task)].metric
                          == "mlp_member").sum())
            entry["size"] = len(heads) + n_mlps
            held = int(_value(s, "held_out_prompts"))
            if held:
                entry["held_out"] = {
                    "n_prompts": held,
                    "faithfulness_normalised": _value(s, "held_out_faithfulness_normalised"),
                    "lo": _value(s, "held_out_faithfulness_normalised_lo"),
                    "hi": _value(s, "held_out_faithfulness_normalised_hi"),
                    "faithfulness": _value(s, "held_out_faithfulness"),
                    "random_faithfulness": _value(s, "held_out_random")}
        out[task] = {k: ({kk: _json(vv) for kk, vv in v.items()} if isinstance(v, dict)
                         else _json(v)) for k, v in entry.items()}
    return out
