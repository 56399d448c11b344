"""Standard figure sets of the probes' tables (torch-free, so the app can draw them too).

Add a probe's set here with :func:`~workbench.figures.registry.register_figure_set`; metrics a set
does not list in ``covers`` still get the generic figures of their shape.
"""

from __future__ import annotations

from workbench.figures.grid import head_heatmap
from workbench.figures.lines import by_depth, distribution, position_profile
from workbench.figures.plot import Plot
from workbench.figures.registry import (FigureOptions, RunSource, metric_shape, pattern_figures,
                                        register_figure_set)

# per-(prompt, query) metric -> label; each also has a mean_<metric> summary per (layer, head)
ENTROPY_LABELS = {"entropy_norm": "normalised entropy", "entropy": "entropy",
                  "segment_entropy_norm": "normalised segment entropy",
                  "segment_entropy": "segment entropy", "segment_mass": "attention on segment"}


@register_figure_set("attention_entropy", patterns=True,
                     covers=tuple(ENTROPY_LABELS) + tuple(f"mean_{m}" for m in ENTROPY_LABELS))
def attention_entropy_figures(source: RunSource, table: str, options: FigureOptions
                              ) -> list[Plot]:
    """Attention entropy (CARVE, arXiv 2509.06461), for each metric the run has (normalised and
    raw entropy, and the segment metrics when the probe ran with ``segment=``): a layer x head
    heatmap of the mean over prompts and queries (equal to the probe's ``mean_*`` summary), the
    metric by depth (spread across heads x prompts), and the distribution of the per-head means.
    Attention patterns when the table has them (this probe stores none: the command notes it).
    """
    have = set(source.metrics(table))
    plots = []
    for metric, label in ENTROPY_LABELS.items():
        present = metric if metric in have else f"mean_{metric}"
        if present not in have:
            continue
        df = source.records(table, present)
        common = source.labels(table, present, label)
        plots += [head_heatmap(df, present, **source.grid(), **common),
                  by_depth(df, present, **common),
                  distribution(df, present, over="heads", **common)]
    return plots


@register_figure_set("attention_pattern", covers=("pattern",), patterns=True)
def attention_pattern_figures(source: RunSource, table: str, options: FigureOptions
                              ) -> list[Plot]:
    """The stored attention patterns over the tokens of the chosen prompts and heads (default:
    the first prompt and the first 4 heads stored). No heatmap: the mean of a causal pattern's
    entries is 1 / (mean row length) for every head, so it says nothing about the head."""
    return pattern_figures(source, table, "pattern", options)


@register_figure_set("position_bias", covers=("last_token_profile",))
def position_bias_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Position bias of composed attention (Wu et al. 2025, arXiv 2502.01951): the last token's
    profile over key positions by depth, one figure per convention (``condition`` product /
    rollout), on the ``--profile`` scale (``log`` or ``no-key0`` keep the first token from
    flattening the rest). The headline metrics (first-token mass, primacy index by depth) are
    drawn by the headline figures."""
    if "last_token_profile" not in source.metrics(table):
        return []
    df = source.records(table, "last_token_profile")
    common = source.labels(table, "last_token_profile", "attention from the last token")
    return [position_profile(df, "last_token_profile", where=where, n_layers=source.n_layers,
                             scale=options.profile, **common)
            for where in metric_shape(df).variants[:options.max_variants]]
