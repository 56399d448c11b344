"""Benchmark: how long the app takes to open a run of a million records, and to react after.

    python -m bench.app_load [--run runs/<id>] [--records 1000000] [--repeats 3] [--json out.json]

Without ``--run`` it writes a synthetic run shaped like ``attention_entropy`` on SmolLM2-135M
(30 layers x 9 heads, 60 prompts x 31 query positions, ``entropy`` and ``entropy_norm`` per
(prompt, layer, head, query) plus the per-head means: 1,004,940 records) to a temporary runs folder,
written by the store like a real run (sorted, zstd, 128k-row groups).

Every page run goes through Streamlit's AppTest (the script the server runs, in this process):

* ``open_runs_page_s``: the Runs page with the run chosen (listing, manifest, table footers);
* ``open_heads_page_s``: then the Heads page: scanning the table's metrics, the per-head means of
  the first metric (pyarrow group-by over 500k rows), the chosen head's distribution over prompts,
  its most extreme prompts, the pattern lookup and every metric of that head;
* ``open_total_s``: the two together: opening the app on the run;
* ``change_head_s``, ``change_metric_s``: choosing another head or metric afterwards;
* ``layers_page_s``: the Layers page (two metrics by depth).

"Cold" means the app's caches are empty (``st.cache_data`` / ``st.cache_resource`` cleared); the
operating system's file cache is warm after the first round. Medians over ``repeats`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

N_LAYERS, N_HEADS, N_QUERIES = 30, 9, 31
RUN_ID = "bench-1m"
MAIN = Path(__file__).resolve().parent.parent / "app" / "main.py"


def entropy_like_table(n_records: int, seed: int = 0) -> tuple[pa.Table, list[str]]:
    """``entropy`` and ``entropy_norm`` per (prompt, layer, head, query) plus their per-head means,
    sorted like a finished run; and the prompt ids."""
    from workbench.records import concat, conform, records, string_column

    rng = np.random.default_rng(seed)
    n_prompts = max(1, round(n_records / (2 * N_LAYERS * N_HEADS * N_QUERIES)))
    ids = [f"prompt-{i:04d}" for i in range(n_prompts)]
    prompt, layer, head, query = (a.ravel() for a in np.meshgrid(
        np.arange(n_prompts), np.arange(N_LAYERS), np.arange(N_HEADS),
        np.arange(1, N_QUERIES + 1), indexing="ij"))
    entropy = rng.gamma(2.0, 0.7, prompt.size)
    cols = dict(layer=layer, head=head, query_pos=query, prompt_id=string_column(ids, prompt))
    parts = []
    lay, hd = np.divmod(np.arange(N_LAYERS * N_HEADS), N_HEADS)
    for metric, values in (("entropy", entropy), ("entropy_norm", entropy / np.log(query + 1))):
        parts.append(records(metric, values, **cols))
        means = values.reshape(n_prompts, N_LAYERS, N_HEADS, N_QUERIES).mean(axis=(0, 3))
        parts.append(records(f"mean_{metric}", means.ravel(), layer=lay, head=hd))
    table = conform(concat(parts), run_id=RUN_ID, probe="attention_entropy")
    return table.sort_by([("metric", "ascending"), ("layer", "ascending"),
                          ("head", "ascending")]), ids


def synthetic_run(runs_dir: Path, n_records: int) -> str:
    """Write the synthetic run (manifest, record table, prompts, tokens); returns its id."""
    from workbench.records import PROMPTS_SCHEMA, TOKENS_SCHEMA
    from workbench.store import RunDir

    table, ids = entropy_like_table(n_records)
    n = len(ids)
    manifest = {"run_id": RUN_ID, "kind": "probes", "status": "complete",
                "created": "2026-01-01T00:00:00+00:00",
                "model": {"name": "synthetic-smollm2-shape", "n_layers": N_LAYERS,
                          "n_heads": N_HEADS},
                "prompts": {"name": "synthetic", "n_prompts": n},
                "probes": [{"name": "attention_entropy", "params": {}}],
                "units": {"entropy": "nats", "entropy_norm": "fraction of ln(visible keys)"},
                "tables": {"attention_entropy": {"rows": table.num_rows, "metrics": sorted(
                    set(table["metric"].to_pylist()))}}}
    run, _ = RunDir.create(runs_dir, RUN_ID, manifest, resume=False, overwrite=True,
                           same_config=lambda m: None)
    run.write_table("attention_entropy", table)
    empty = [None] * n
    run.write_table("prompts", pa.table({
        "prompt_id": ids, "text": [f"synthetic prompt {i}" for i in range(n)],
        "n_tokens": [N_QUERIES + 1] * n, "task": empty, "answer": empty, "distractor": empty,
        "corrupted_text": empty, "segments": empty, "source": empty}, schema=PROMPTS_SCHEMA))
    pos = np.tile(np.arange(N_QUERIES + 1), n)
    run.write_table("tokens", pa.table({
        "prompt_id": np.repeat(ids, N_QUERIES + 1), "pos": pos, "token_id": pos,
        "token": [f"t{p}" for p in pos], "char_start": pos, "char_end": pos + 1},
        schema=TOKENS_SCHEMA))
    return RUN_ID


def timed(action) -> float:
    start = time.perf_counter()
    at = action()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"the page failed: {at.exception}")
    return seconds


def one_round(run_id: str) -> dict[str, float]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    st.cache_data.clear()
    st.cache_resource.clear()
    at = AppTest.from_file(str(MAIN), default_timeout=300)
    at.query_params["run"] = run_id
    out = {"open_runs_page_s": timed(at.run)}
    out["open_heads_page_s"] = timed(lambda: at.switch_page("views/heads.py").run())
    boxes = {s.label: s for s in at.selectbox}
    if "Layer" not in boxes:
        shown = [e.value for kind in ("error", "warning", "info") for e in at.get(kind)]
        raise RuntimeError(f"the Heads page shows no head picker: {list(boxes)}, {shown}")
    out["open_total_s"] = out["open_runs_page_s"] + out["open_heads_page_s"]
    layer = boxes["Layer"]
    other = next(v for v in layer.options if str(v) != str(layer.value))
    out["change_head_s"] = timed(lambda: layer.set_value(int(other)).run())
    metric = next(s for s in at.selectbox if s.label == "Metric")
    other = next((v for v in metric.options if v != metric.value), None)
    if other is not None:
        out["change_metric_s"] = timed(lambda: metric.set_value(other).run())
    out["layers_page_s"] = timed(lambda: at.switch_page("views/layers.py").run())
    return out


def measure(records: int = 1_000_000, repeats: int = 3, run: Path | None = None) -> dict:
    """Medians (s) of :func:`one_round` over ``repeats`` rounds, on ``run`` or a synthetic run."""
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp:
        if run:
            runs_dir, run_id = run.resolve().parent, run.name
        else:
            start = time.perf_counter()
            runs_dir, run_id = Path(tmp), synthetic_run(Path(tmp), records)
            print(f"wrote the synthetic run in {time.perf_counter() - start:.1f} s")
        os.environ["WORKBENCH_RUNS_DIR"] = str(runs_dir)
        from app.data import RunsRoot

        root = RunsRoot(runs_dir)
        rows = sum(int(t.get("rows", 0)) for t in (root.manifest(run_id).get("tables") or {})
                   .values())
        rounds = [one_round(run_id) for _ in range(repeats)]
        for i, r in enumerate(rounds):
            print(f"round {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    return {"run": run_id, "records": rows, "repeats": repeats,
            **{k: statistics.median(r[k] for r in rounds) for k in rounds[0]}}


def suite(quick: bool = False) -> tuple[list[dict], dict]:
    """Rows for ``python -m bench``; ``quick``: 20,000 records, one round."""
    res = measure(20_000, 1) if quick else measure()
    rows = [{"benchmark": "app_load", "measure": f"{key} ({res['records']:,} records)",
             "value": res[key], "unit": "s", "note": "cold caches"}
            for key in ("open_total_s", "change_head_s", "change_metric_s")]
    return rows, res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing run directory (default: write a "
                                                 "synthetic one)")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20,000 records, one round")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = measure(20_000, 1) if args.quick else measure(args.records, args.repeats, args.run)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()},
                     indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
