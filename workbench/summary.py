"""Human-readable summaries of a run (``workbench runs show``). Reads parquet only; no torch."""

from __future__ import annotations

import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from workbench.store import META_TABLES, RunDir


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
        table = run.read_table(name, columns=["metric", "layer", "head", "prompt_id", "value"])
        console.print(f"\n[bold]{name}[/]: {meta.get('rows', 0):,} records")
        summary = Table("metric", "unit", "rows", "mean", "min", "max")
        for metric in meta.get("metrics", []):
            vals = table.filter(pc.equal(table["metric"], metric))["value"]
            summary.add_row(metric, units.get(metric, ""), f"{len(vals):,}",
                            f"{pc.mean(vals).as_py():.4g}", f"{pc.min(vals).as_py():.4g}",
                            f"{pc.max(vals).as_py():.4g}")
        console.print(summary)
        for metric in meta.get("metrics", []):
            rows = table.filter(pc.and_(pc.equal(table["metric"], metric),
                                        pc.is_null(table["prompt_id"])))
            rows = rows.filter(pc.is_valid(rows["head"]))
            if rows.num_rows < 2:
                continue
            ordered = rows.sort_by([("value", "descending")]).to_pylist()
            fmt = lambda r: f"L{r['layer']}H{r['head']}={r['value']:.3f}"  # noqa: E731
            console.print(f"{metric}: highest {', '.join(map(fmt, ordered[:top]))}; "
                          f"lowest {', '.join(map(fmt, ordered[-top:][::-1]))}")
