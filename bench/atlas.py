"""Benchmark: the atlas's shared-forward battery against a plain Hugging Face forward.

    python -m bench.atlas [--repeats 5] [--json out.json]

The battery is every probe of the atlas that shares the forward pass (attention entropy, attention
sinks, massive activations, head types, position bias): one hooked pass computes all of them. It is
timed against the plain Hugging Face eager forward on the same batches of natural text, 1 x 512
and 8 x 128 tokens (the fastest of interleaved repeats, one process: on a shared machine the
minimum is the least disturbed measurement), and its peak resident memory is measured against the
plain forward's, each in a fresh subprocess (see :mod:`bench.probe_pass`). Targets: at most 1.2x
the time and 1.2x the peak memory at each shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.targets import target_row
from bench.probe_pass import memory_all, time_all

BATTERY = ["attention_entropy", "attention_sink", "massive_activations", "head_types",
           "position_bias"]
VARIANTS = ("hf_eager", "probe_pass")
TARGETS = {"time": 1.2, "peak": 1.2}
SHAPES = [(1, 512), (8, 128)]


def suite(quick: bool = False, repeats: int = 5) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``; ``quick``: 1 x 64 tokens, one repeat (smoke only)."""
    shapes = [(1, 64)] if quick else SHAPES
    times = time_all(BATTERY, 1 if quick else repeats, shapes, VARIANTS, stat=min)
    memory = memory_all(BATTERY, shapes, VARIANTS)
    rows, raw = [], {"probes": BATTERY, "times_s": times, "memory": memory, "ratios": {}}
    for batch, seq in shapes:
        shape = f"{batch}x{seq}"
        t, m = times[shape], memory[shape]
        time_ratio = t["probe_pass"] / t["hf_eager"]
        peak_ratio = m["probe_pass"]["peak"] / m["hf_eager"]["peak"]
        raw["ratios"][shape] = {"time": time_ratio, "peak": peak_ratio}
        rows += [
            {"benchmark": "atlas", "measure": f"plain HF forward (eager) {shape}",
             "value": t["hf_eager"], "unit": "s",
             "note": f"peak {m['hf_eager']['peak'] / 2**20:.0f} MB"},
            target_row("atlas", f"battery / plain forward, time {shape}", time_ratio, "x",
                       TARGETS["time"], "<=", f"battery {t['probe_pass']:.3f} s"),
            target_row("atlas", f"battery / plain forward, peak memory {shape}", peak_ratio, "x",
                       TARGETS["peak"], "<=", f"{m['probe_pass']['peak'] / 2**20:.0f} MB"),
        ]
    return rows, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows, raw = suite(args.quick, args.repeats)
    for row in rows:
        print(f"{row['measure']}: {row['value']:.3f} {row['unit']}; {row.get('target', '')} "
              f"{row['note']}")
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
