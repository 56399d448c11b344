"""Benchmark: the same sweep on the local engine and on Ray with 1 and 2 workers.

    python -m bench.sweep [--quick] [--json out.json]

The sweep: SmolLM2-135M x ``data/natural.jsonl`` x ``attention_entropy``, chunks of 8 prompts
(``--quick``: tiny-llama, chunks of 2 over the first prompts of the same file). Each engine writes
into its own temporary runs folder; wall time covers the whole ``run_sweep`` call (for Ray:
starting the local cluster, the actors loading the model, the shards, joining the tables). The
tables of every engine are checked equal to the local engine's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.probe_pass import ROOT

ENGINES = (("local", None), ("ray", 1), ("ray", 2))


def make_spec(quick: bool, folder: Path):
    from sweeps import parse_spec

    prompts = ROOT / "data" / "natural.jsonl"
    if quick:
        lines = prompts.read_text().splitlines()[:6]
        prompts = folder / "natural6.jsonl"
        prompts.write_text("\n".join(lines) + "\n")
    return parse_spec({"name": "bench", "chunk_size": 2 if quick else 8,
                       "models": [{"spec": "tiny-llama" if quick else "smollm2-135m",
                                   "device": "cpu"}],
                       "prompt_sets": [str(prompts)],
                       "jobs": [{"kind": "probes", "probes": ["attention_entropy"]}]}, folder)


def _table(root: Path) -> pd.DataFrame:
    (run,) = [p for p in (root / "bench").iterdir() if p.is_dir()]
    table = pd.read_parquet(run / "attention_entropy.parquet")
    keys = ["metric", "layer", "head", "prompt_id", "query_pos", "segment"]
    return table.sort_values(keys, na_position="first").reset_index(drop=True)


def measure(quick: bool = False) -> dict:
    from sweeps import SweepOptions, run_sweep

    out = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        spec = make_spec(quick, Path(tmp))
        tables = {}
        for engine, workers in ENGINES:
            name = engine if workers is None else f"{engine}_{workers}"
            runs = Path(tmp) / name
            start = time.perf_counter()
            manifest = run_sweep(spec, SweepOptions(runs_dir=runs, engine=engine,
                                                    workers=workers))
            out[name] = {"wall_s": time.perf_counter() - start, "status": manifest["status"],
                         "n_shards": manifest["n_shards"],
                         "shard_compute_s": sum(r["timings"].get("compute_s", 0)
                                                for r in manifest["shards"])}
            tables[name] = _table(runs)
        for name, table in tables.items():
            out[name]["same_tables_as_local"] = bool(table.equals(tables["local"]))
    return out


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``: wall time per engine, speedup of 2 Ray workers over 1."""
    res = measure(quick)
    rows = [{"benchmark": "sweep", "measure": f"{name} ({r['n_shards']} shards)",
             "value": r["wall_s"], "unit": "s",
             "note": f"tables equal to local: {r['same_tables_as_local']}"}
            for name, r in res.items()]
    rows[-1]["note"] += f"; {res['ray_1']['wall_s'] / res['ray_2']['wall_s']:.2f}x ray_1"
    return rows, res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny-llama, 3 shards")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    res = measure(args.quick)
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
