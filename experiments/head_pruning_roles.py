"""Do learned head gates and importance keep the sink heads? (issue 19, README "Head importance
and pruning").

    python -m experiments.head_pruning_roles --sinks runs/<attention_sink run> \
        --gates runs/<learn-gates run> [--prune runs/<prune run>] [--threshold 0.3]

Sink heads: mean ``mean_sink_share_first`` (attention on token 0, probe ``attention_sink``) over
prompts > ``--threshold``. For each lambda of the gates run: how many sink heads stay open (gate
> 0) against the open share of all heads, and the hypergeometric chance of keeping at least that
many (and at most that many) sink heads if the open heads were a random set of the same size. With ``--prune``: the sink
heads' mean rank in the importance order (0 = removed first) against the mean rank of all heads.
Reads parquet only.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pandas as pd


def at_least(kept: int, n_all: int, n_sinks: int, n_open: int) -> float:
    """P(a random set of ``n_open`` of ``n_all`` heads holds >= ``kept`` of the ``n_sinks``)."""
    total = math.comb(n_all, n_open)
    return sum(math.comb(n_sinks, k) * math.comb(n_all - n_sinks, n_open - k)
               for k in range(kept, min(n_sinks, n_open) + 1)) / total


def at_most(kept: int, n_all: int, n_sinks: int, n_open: int) -> float:
    """P(a random set of ``n_open`` of ``n_all`` heads holds <= ``kept`` of the ``n_sinks``)."""
    return 1.0 - at_least(kept + 1, n_all, n_sinks, n_open) if kept < n_sinks else 1.0


def per_head(run: Path, table: str, metric: str, where: dict | None = None) -> pd.Series:
    frame = pd.read_parquet(run / f"{table}.parquet")
    frame = frame[frame.metric == metric]
    for column, value in (where or {}).items():
        frame = frame[frame[column] == value]
    return frame.groupby(["layer", "head"]).value.mean()


def report(sinks: Path, gates: Path, prune: Path | None, threshold: float) -> list[str]:
    share = per_head(sinks, "attention_sink", "mean_sink_share_first")
    sink_heads = set(share[share > threshold].index)
    n_all = len(share)
    lines = [f"sink heads (mean attention on token 0 > {threshold}): {len(sink_heads)} of {n_all}"]
    gate_rows = pd.read_parquet(gates / "learned_gates.parquet")
    gate_rows = gate_rows[gate_rows.metric == "gate"]
    for cond, rows in gate_rows.groupby("condition"):
        g = rows.set_index(["layer", "head"]).value
        open_heads = set(g[g > 0].index)
        kept = len(sink_heads & open_heads)
        p = at_least(kept, n_all, len(sink_heads), len(open_heads))
        q = at_most(kept, n_all, len(sink_heads), len(open_heads))
        lines.append(f"{cond}: {len(open_heads)} of {n_all} heads open "
                     f"({len(open_heads) / n_all:.0%}); sink heads open {kept} of "
                     f"{len(sink_heads)} ({kept / max(len(sink_heads), 1):.0%}); random sets: P(>= "
                     f"{kept}) = {p:.3g}, P(<= {kept}) = {q:.3g}; mean gate of sink heads "
                     f"{g[list(sink_heads)].mean():.3f} vs all {g.mean():.3f}")
    if prune is not None:
        imp = per_head(prune, "head_importance", "importance_norm")
        rank = imp.rank(method="first") - 1
        mean_sink = float(rank[list(sink_heads)].mean())
        lines.append(f"importance order (0 = pruned first, {n_all - 1} = last): sink heads' mean "
                     f"rank {mean_sink:.1f} vs {float(rank.mean()):.1f} for all heads; "
                     f"top-10% most important heads that are sink heads: "
                     f"{len(set(rank[rank >= 0.9 * n_all].index) & sink_heads)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sinks", type=Path, required=True)
    parser.add_argument("--gates", type=Path, required=True)
    parser.add_argument("--prune", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=0.3)
    args = parser.parse_args(argv)
    print("\n".join(report(args.sinks, args.gates, args.prune, args.threshold)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
