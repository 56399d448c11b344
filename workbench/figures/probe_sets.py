"""Standard figure sets of the probes' tables (torch-free, so the app can draw them too).

Add a probe's set here with :func:`~workbench.figures.registry.register_figure_set`; metrics a set
does not list in ``covers`` still get the generic figures of their shape.
"""

from __future__ import annotations

from workbench.figures.grid import head_heatmap
from workbench.figures.lines import by_depth, distribution
from workbench.figures.plot import Plot
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set

ENTROPY_LABELS = {"entropy_norm": "normalised entropy", "entropy": "entropy"}


@register_figure_set("attention_entropy",
                     covers=("entropy", "entropy_norm", "mean_entropy", "mean_entropy_norm"))
def attention_entropy_figures(source: RunSource, table: str, options: FigureOptions
                              ) -> list[Plot]:
    """Attention entropy (CARVE, arXiv 2509.06461): for the normalised and the raw entropy, a
    layer x head heatmap of the mean over prompts and queries (equal to the probe's
    ``mean_entropy*`` summaries), entropy by depth (spread across heads x prompts), and the
    distribution of the per-head means. The probe stores no attention patterns.
    """
    plots = []
    for metric in ("entropy_norm", "entropy"):
        present = metric if metric in source.metrics(table) else f"mean_{metric}"
        if present not in source.metrics(table):
            continue
        df = source.records(table, present)
        common = source.labels(table, present, ENTROPY_LABELS[metric])
        plots += [head_heatmap(df, present, **source.grid(), **common),
                  by_depth(df, present, **common),
                  distribution(df, present, over="heads", **common)]
    return plots
