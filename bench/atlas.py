"""Benchmark: the atlas's shared-forward battery against a plain Hugging Face forward.

    python -m bench.atlas [--repeats 5] [--json out.json]

The battery is every probe of the atlas that shares the forward pass (attention entropy, attention
sinks, massive activations, head types, position bias): one hooked pass computes all of them. It is
timed against the plain Hugging Face eager forward on the same batch of natural text, 1 x 512 tokens
(median of interleaved repeats, one process), and its peak resident memory is measured against the
plain forward's, each in a fresh subprocess (see :mod:`bench.probe_pass`). Targets: at most 1.3x the
time and 1.2x the peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.probe_pass import memory_all, time_all

BATTERY = ["attention_entropy", "attention_sink", "massive_activations", "head_types",
           "position_bias"]
VARIANTS = ("hf_eager", "probe_pass")
TARGETS = {"time": 1.3, "peak": 1.2}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``; ``quick``: 1 x 64 tokens, one repeat (smoke only)."""
    batch, seq = (1, 64) if quick else (1, 512)
    shape = f"{batch}x{seq}"
    t = time_all(BATTERY, 1 if quick else 5, [(batch, seq)], VARIANTS)[shape]
    m = memory_all(BATTERY, [(batch, seq)], VARIANTS)[shape]
    time_ratio = t["probe_pass"] / t["hf_eager"]
    peak_ratio = m["probe_pass"]["peak"] / m["hf_eager"]["peak"]
    rows = [
        {"benchmark": "atlas", "measure": f"plain HF forward (eager) {shape}",
         "value": t["hf_eager"], "unit": "s", "note": f"peak {m['hf_eager']['peak'] / 2**20:.0f} MB"},
        {"benchmark": "atlas", "measure": f"atlas battery, one pass {shape}",
         "value": t["probe_pass"], "unit": "s",
         "note": f"{time_ratio:.3f}x the plain forward's time (target <= {TARGETS['time']}); "
                 f"peak {m['probe_pass']['peak'] / 2**20:.0f} MB = {peak_ratio:.3f}x "
                 f"(target <= {TARGETS['peak']})"},
    ]
    return rows, {"probes": BATTERY, "shape": shape, "times_s": t, "memory": m,
                  "time_ratio": time_ratio, "peak_ratio": peak_ratio}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows, raw = suite(args.quick)
    for row in rows:
        print(f"{row['measure']}: {row['value']:.3f} {row['unit']}; {row['note']}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
