"""``workbench circuits --grids ... --dla``: patching grids per layer x position
(:mod:`circuits.grids`) and direct logit attribution per head and MLP (:mod:`circuits.dla`) of
each task, as two more tables of the circuits run, and their lines in the report.

Tables (record schema; ``segment`` = task):

* ``patching_grid``: ``logit_diff`` per (prompt, layer, position); ``effect``, ``score``,
  ``score_lo`` and ``score_hi`` per (layer, position); ``query_pos`` = the position counted from
  the last token (``-1`` = last), ``condition`` = ``"<component>; <direction>"``.
* ``direct_logit_attribution``: ``dla`` per (prompt, component), ``dla_mean`` / ``dla_lo`` /
  ``dla_hi`` per component, ``condition`` = ``head`` / ``mlp`` / ``attn_bias`` / ``embed`` /
  ``constant``; ``logit_diff`` per prompt (the model's; the components sum to it).
"""

from __future__ import annotations

import time

import pyarrow as pa

from circuits.dla import direct_logit_attribution
from circuits.grids import check_layers, grid_offsets, patching_grid
from circuits.progress import plan
from workbench.heads import format_head
from workbench.records import concat, conform

UNITS = {
    "dla": "logits",  # a component's direct contribution to the LD, final norm's scale frozen
    "dla_mean": "logits (mean over prompts)",
    "dla_lo": "logits (2.5th bootstrap percentile of dla_mean)",
    "dla_hi": "logits (97.5th bootstrap percentile of dla_mean)",
}
GRID_PROBE, DLA_PROBE = "patching_grid", "direct_logit_attribution"


def component_tables(model, tasks, options, run_id: str, bars, timings: dict
                     ) -> dict[str, pa.Table]:
    """The ``patching_grid`` and ``direct_logit_attribution`` tables of every task (empty dict
    when neither ``options.grids`` nor ``options.dla`` asks for them)."""
    d = options.discovery
    grids, dla = [], []
    for task in tasks:
        for component in options.grids:
            with bars.phase(f"grid {component} {task.name}", "cells x batches") as phase:
                layers = check_layers(model, options.grid_layers)
                plan(phase, len(layers) * len(grid_offsets(task)) * len(task.batches(d.batch_size)))
                start = time.perf_counter()
                grid = patching_grid(model, task, component, direction=d.direction,
                                     layers=layers, batch_size=d.batch_size, progress=phase)
                timings[f"grid.{component}.{task.name}_s"] = round(time.perf_counter() - start, 3)
            grids.append(conform(grid.records(), run_id=run_id, probe=GRID_PROBE))
        if options.dla:
            start = time.perf_counter()
            result = direct_logit_attribution(model, task, batch_size=d.batch_size)
            timings[f"dla.{task.name}_s"] = round(time.perf_counter() - start, 3)
            dla.append(conform(result.records(), run_id=run_id, probe=DLA_PROBE))
    tables = {}
    if grids:
        tables["patching_grid"] = concat(grids)
    if dla:
        tables["direct_logit_attribution"] = concat(dla)
    return tables


def report_lines(grid, dla, top: int = 8) -> list[str]:
    """Report lines: per task and component the ``top`` grid cells by |score|, and the ``top``
    heads and MLPs by |mean DLA| (``grid`` / ``dla``: the tables as pandas frames, or None)."""
    lines = []
    if grid is not None:
        lines.append("patching grids (layer @ position from the end: score as a fraction of the "
                     "gap [95% interval])")
        cells = grid[grid.metric.isin(["score", "score_lo", "score_hi"])]
        for (task, condition), rows in cells.groupby(["segment", "condition"], sort=False):
            wide = rows.pivot_table(index=["layer", "query_pos"], columns="metric",
                                    values="value")
            wide = wide.reindex(wide.score.abs().sort_values(ascending=False).index)[:top]
            lines.append(f"  {task} {condition.split(';')[0]}: " + ", ".join(
                f"L{int(layer)}@{int(pos)} {r.score:+.3f} [{r.score_lo:+.3f}, {r.score_hi:+.3f}]"
                for (layer, pos), r in wide.iterrows()))
    if dla is not None:
        lines.append("direct logit attribution (mean over prompts, logits [95% interval]; "
                     "components sum to the model's logit difference)")
        means = dla[dla.metric.isin(["dla_mean", "dla_lo", "dla_hi"])
                    & dla.condition.isin(["head", "mlp"])]
        for task, rows in means.groupby("segment", sort=False):
            rows = rows.fillna({"head": -1})
            wide = rows.pivot_table(index=["condition", "layer", "head"], columns="metric",
                                    values="value")
            wide = wide.reindex(wide.dla_mean.abs().sort_values(ascending=False).index)[:top]
            ld = dla[(dla.metric == "logit_diff") & (dla.segment == task)].value.mean()
            lines.append(f"  {task} (mean LD {ld:.3f}): " + ", ".join(
                (format_head((layer, head)) if kind == "head" else f"MLP{int(layer)}")
                + f" {r.dla_mean:+.3f} [{r.dla_lo:+.3f}, {r.dla_hi:+.3f}]"
                for (kind, layer, head), r in wide.iterrows()))
    return lines
