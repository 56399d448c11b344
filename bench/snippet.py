"""Benchmark: the README's Python snippet as a process against the same task with TransformerLens.

    python -m bench.snippet [--repeats 3] [--json out.json]

Three processes, each timed from start to exit (interpreter start, imports, model load, the run,
the printed tables), interleaved and repeated (the fastest of ``--repeats`` counts: on a shared
machine the minimum is the least disturbed run), after one warm-up round (page cache, the
workbench's converted model and its check cache):

* ``tl_direct``: ``bench/tl_direct.py`` (TransformerLens 4's ``TransformerBridge`` and
  ``run_with_cache`` on the three prompts, the three tables and their top 5);
* ``snippet``: the README's ``wb.load`` + ``wb.run`` snippet (the first ``python`` block of
  README.md that calls ``wb.load``), as a user runs it: the load-time checks come from the check
  cache (:mod:`workbench.load_checks`);
* ``snippet_recheck``: the same with ``WORKBENCH_RECHECK=1`` (the checks run on every load, as
  every load did before the check cache).

Target: ``snippet`` at most ``tl_direct``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from bench.targets import target_row

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("tl_direct", "snippet", "snippet_recheck")


def readme_snippet() -> str:
    """The README's first ``python`` code block that calls ``wb.load``."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        if "wb.load(" in block:
            return block
    raise RuntimeError("README.md has no python block calling wb.load")


def command(variant: str, folder: str) -> tuple[list[str], dict]:
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_RECHECK"}
    if variant == "tl_direct":
        return [sys.executable, str(ROOT / "bench" / "tl_direct.py"), folder], env
    if variant == "snippet_recheck":
        env["WORKBENCH_RECHECK"] = "1"
    return [sys.executable, "-c", readme_snippet()], env


def run(variant: str, folder: str) -> float:
    cmd, env = command(variant, folder)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.perf_counter() - start


def measure(repeats: int = 3) -> dict:
    from workbench.models import smollm2_cache

    folder = str(smollm2_cache()[0])
    for variant in VARIANTS:  # warm-up round: page cache, converted model, check cache
        run(variant, folder)
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(repeats):
        for variant in VARIANTS:
            samples[variant].append(run(variant, folder))
    best = {v: min(s) for v, s in samples.items()}
    return {"samples_s": samples, "best_s": best, "repeats": repeats,
            "ratio": best["snippet"] / best["tl_direct"],
            "recheck_ratio": best["snippet_recheck"] / best["tl_direct"]}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``; ``quick``: one repeat."""
    res = measure(1 if quick else 3)
    best = res["best_s"]
    rows = [{"benchmark": "snippet", "measure": "TransformerLens direct (bench/tl_direct.py)",
             "value": best["tl_direct"], "unit": "s", "note": "process: imports, load, task"},
            {"benchmark": "snippet", "measure": "README snippet, checks re-run (before)",
             "value": best["snippet_recheck"], "unit": "s",
             "note": f"{res['recheck_ratio']:.2f}x TransformerLens direct"},
            target_row("snippet", "README snippet / TransformerLens direct", res["ratio"], "x",
                       1.0, "<=", f"snippet {best['snippet']:.1f} s, checks from the cache")]
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(args.repeats)
    for variant in VARIANTS:
        runs = ", ".join(f"{t:.1f}" for t in res["samples_s"][variant])
        print(f"{variant:>16}: best {res['best_s'][variant]:6.1f} s  (runs: {runs})")
    print(f"snippet / TransformerLens direct: {res['ratio']:.2f}x (target <= 1); with the checks "
          f"re-run: {res['recheck_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
