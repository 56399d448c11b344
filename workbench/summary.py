"""Human-readable summaries of a run (``workbench runs show``). Reads parquet only; no torch."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from workbench.heads import format_head
from workbench.store import META_TABLES, RunDir, parquet_columns

KEY_COLUMNS = ("segment", "condition", "query_pos", "key_pos", "dim")  # besides layer and head


def describe_run(run: RunDir, console: Console, top: int = 3) -> None:
    """Print the manifest essentials, each table's metrics, and for every (layer, head) summary
    metric the ``top`` highest and lowest heads."""
    m = run.read_manifest()
    model, prompts = m.get("model") or {}, m.get("prompts") or {}
    parity = model.get("parity") or {}
    diff = parity.get("max_abs_diff")
    console.print(f"[bold]{m.get('run_id')}[/]  status: [bold]{run.live_status(m)}[/]  "
                  f"created {m.get('created')}  finished {m.get('finished')}")
    console.print(f"model: {model.get('name')} ({model.get('source')}, {model.get('architecture')},"
                  f" {model.get('n_layers')} layers x {model.get('n_heads')} heads, "
                  f"{model.get('dtype')} on {model.get('device')}); parity max |diff| "
                  f"{diff if diff is None else format(diff, '.2e')} "
                  f"({'ok' if parity.get('ok') else 'FAILED'})")
    files = ", ".join(f"{f.get('path')} (sha256 {str(f.get('sha256'))[:12]}, "
                      f"{f.get('n_prompts')} prompts)" for f in prompts.get("files") or []
                      if isinstance(f, dict))
    console.print(f"prompts: {files}; {prompts.get('n_tokens')} tokens; "
                  f"BOS prepended: {prompts.get('prepend_bos')}")
    for p in m.get("probes", []):
        console.print(f"probe {p['name']}: {p.get('params')}")
    if m.get("attention_mask"):
        console.print(f"attention mask: {m['attention_mask']['spec']} (applied to every forward)")
    console.print(f"timings (s): {m.get('timings')}")
    if m.get("error"):
        console.print(f"[red]error[/]: {m['error']}")
    for warning in m.get("warnings", []):
        console.print(f"[yellow]warning[/]: {warning}")
    units = m.get("units", {})
    for name, meta in m.get("tables", {}).items():
        if name in META_TABLES:
            continue
        present = set(parquet_columns(run.table_path(name)))  # older runs may lack some
        table = run.read_table(name, columns=["metric", "layer", "head", "prompt_id", "value",
                                              *[c for c in KEY_COLUMNS if c in present]])
        console.print(f"\n[bold]{name}[/]: {meta.get('rows', 0):,} records")
        summary = Table("metric", "unit", "rows", "mean", "min", "max")
        for metric in meta.get("metrics", []):
            vals = table.filter(pc.equal(table["metric"], metric))["value"]
            summary.add_row(metric, units.get(metric, ""), f"{len(vals):,}",
                            f"{pc.mean(vals).as_py():.4g}", f"{pc.min(vals).as_py():.4g}",
                            f"{pc.max(vals).as_py():.4g}")
        console.print(summary)
        for metric in meta.get("metrics", []):
            line = head_extremes(table, metric, top)
            if line:
                console.print(line)


def head_extremes(table: pa.Table, metric: str, top: int = 3) -> str | None:
    """``"metric: highest L9H6=0.912, ...; lowest ..."`` over the rows of ``metric`` that are
    per head and aggregated over prompts (``prompt_id`` null); ``None`` when fewer than two.

    Each head is listed once per distinct key: when the rows also vary by a key column
    (``segment``, ``condition``, ``query_pos``, ``key_pos``, ``dim``) the label names it,
    ``L18H8 (segment=passage)=0.912``; rows that share head and key are averaged.
    """
    rows = table.filter(pc.and_(pc.equal(table["metric"], metric), pc.is_null(table["prompt_id"])))
    rows = rows.filter(pc.is_valid(rows["head"]))
    if rows.num_rows < 2:
        return None
    keys = [c for c in KEY_COLUMNS if c in rows.column_names
            and len(pc.unique(rows[c]).drop_null()) > 1]
    frame = rows.select(["layer", "head", *keys, "value"]).to_pandas()
    frame = frame.groupby(["layer", "head", *keys], dropna=False, sort=False)["value"].mean()
    ordered = frame.reset_index().sort_values("value", ascending=False, kind="stable")
    if len(ordered) < 2:
        return None

    def label(r) -> str:
        key = ", ".join(f"{k}={r[k]:g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                        for k in keys if not pd.isna(r[k]))
        head = format_head((r["layer"], r["head"]))
        return f"{head}{f' ({key})' if key else ''}={r['value']:.3f}"

    records = ordered.to_dict("records")
    return (f"{metric}: highest {', '.join(map(label, records[:top]))}; "
            f"lowest {', '.join(map(label, records[-top:][::-1]))}")
