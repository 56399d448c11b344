"""The benchmark suite: one table (each figure, its target and whether it is met), one JSON file.

    python -m bench [--quick] [--all | --only probe_pass,memory,...] [--json runs/bench.json]

By default the benchmarks with speed targets run (:data:`DEFAULT`: ``atlas``, ``snippet``,
``grids``, ``patching``; a few minutes on a quiet 2-core machine); ``--all`` runs every benchmark
(the memory, sweep, importance and edge benchmarks take much longer). A row with a target shows
it and ✓ (met) or ✗ (missed); the process exits 0 either way (1 only when a benchmark failed).

Benchmarks (each module also runs alone, ``python -m bench.<name> --help``):

* ``probe_pass``: the probe pass against a plain Hugging Face forward on the same batches;
* ``atlas``: the atlas's shared-forward battery (entropy, sinks, massive activations, head types,
  position bias) in one pass against the plain forward, time and peak memory at 1 x 512 and
  8 x 128 tokens (targets <= 1.2x each);
* ``snippet``: the README's 8-line ``wb.load`` + ``wb.run`` snippet as a process against the same
  task with TransformerLens directly (``bench/tl_direct.py``), interleaved (target <= 1x);
* ``grids``: patching grids, packed cells against one resumed forward per cell (target >= 4x,
  same cells to 1e-5), and the whole ``--grids all --dla`` on 16 IOI prompts (target <= 300 s);
* ``memory``: peak memory of the probe pass, the plain forward and ``run_with_cache`` at 512, 2048
  and 8192 tokens (``run_with_cache`` skipped, with its estimated size, when it cannot fit);
* ``patching``: activation patching resumed and batched against the one-head-per-forward loop
  (target >= 3x) and against attribution patching;
* ``sweep``: the same sweep on the local engine and on Ray with 1 and 2 workers;
* ``app_load``: the app opening a run of a million records;
* ``importance``: Michel head importance over 64 natural-text prompts against one forward +
  backward pass, and 200 steps of L0 gate training;
* ``edges``: EAP and EAP-IG edge scores (IOI, 16 prompts) against one forward + backward, and a
  10-point faithfulness curve;
* ``app_views``: the Live pattern page's all-heads view at 30 and 128 tokens in Chromium, one
  canvas against the earlier 270 plotly heatmaps.
* ``ioi_classes``: the IOI head classes against one attribution pass.
* ``circuit_search``: the whole ``--select faithfulness=0.8`` search (curve, bisection,
  refinement) against one faithfulness curve (IOI, 32 prompts).

``--quick`` runs every benchmark on a small shape for smoke testing; its numbers are not for
reporting. Run the full suite on a quiet machine: ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = ("probe_pass", "atlas", "snippet", "grids", "memory", "patching", "sweep", "app_load",
              "importance", "edges", "app_views", "ioi_classes", "circuit_search")
DEFAULT = ("atlas", "snippet", "grids", "patching")  # the benchmarks with speed targets



def machine() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "platform": platform.platform()}


def table(rows: list[dict]) -> str:
    """A plain-text table of the rows (benchmark, measure, value, unit, target, met, note)."""
    def value(row):
        v = row.get("value")
        return "-" if v is None else f"{v:,.3f}" if v < 100 else f"{v:,.0f}"
    cells = [("benchmark", "measure", "value", "unit", "target", "met", "note")] + [
        (r["benchmark"], r["measure"], value(r), r.get("unit", ""), r.get("target", ""),
         "" if "ok" not in r else "✓" if r["ok"] else "✗", r.get("note", "")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(6)]
    return "\n".join("  ".join([c[0].ljust(widths[0]), c[1].ljust(widths[1]),
                                c[2].rjust(widths[2]), c[3].ljust(widths[3]),
                                c[4].ljust(widths[4]), c[5].ljust(widths[5]), c[6]]).rstrip()
                     for c in cells)


def machine_line() -> str:
    """``2 CPUs, torch 2.x (2 threads), load average 1.2 / 0.9 / 0.8, no GPU``."""
    m = machine()
    try:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    return (f"{m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), load "
            f"average {load}, {m['gpu'] or 'no GPU'}")


def run_one(name: str, quick: bool) -> tuple[list[dict], dict]:
    """One benchmark's rows and raw result; a failure becomes a row saying why."""
    start = time.perf_counter()
    try:
        rows, raw = importlib.import_module(f"bench.{name}").suite(quick)
    except Exception as err:  # noqa: BLE001 - one broken benchmark must not hide the others
        rows = [{"benchmark": name, "measure": "failed", "value": None, "unit": "",
                 "note": f"{type(err).__name__}: {err}"}]
        raw = {"error": traceback.format_exc(limit=6)}
    return rows, {**raw, "benchmark_s": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes: a smoke run")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated subset of {', '.join(BENCHMARKS)} (default: "
                             f"{','.join(DEFAULT)})")
    parser.add_argument("--all", action="store_true", help="every benchmark")
    parser.add_argument("--json", type=Path, default=Path("runs") / "bench.json")
    args = parser.parse_args(argv)
    only = ",".join(BENCHMARKS) if args.all else args.only or ",".join(DEFAULT)
    names = [n for n in only.split(",") if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {BENCHMARKS}")
    rows, raw = [], {}
    for name in names:
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        got, raw[name] = run_one(name, args.quick)
        rows += got
    print(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_line()}")
    print(table(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "machine": machine(), "rows": rows, "raw": raw}, indent=2,
        default=str) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(r["measure"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
