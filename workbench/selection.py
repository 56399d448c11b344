"""Head selection from a head-divergence run's records (VHR, He et al. 2024, arXiv 2412.13949).

The divergence probe (``probes/head_divergence.py``) writes per (layer, head) summaries
``mean_vhd`` (mean divergence over prompts) and ``mean_norm_without`` (mean norm of the head's
output without the segment). VHR reinforces, per layer, the heads that read the segment most:

1. drop *outlier* heads: ``VHD > mean + std`` of the layer AND ``norm_without > mean + std`` of the
   layer (a head whose output is large anyway diverges a lot without reading the segment);
2. keep the remaining heads whose VHD is above the layer median;
3. only in the last ``last_n_layers`` layers (14 for LLaVA-1.5 in a re-implementation; unverified).

Conventions (the paper's wording leaves them open; recorded here): the standard deviation is the
population one (ddof = 0); the median is over all heads of the layer, outliers included; "above"
is strict. This module reads records only (no torch), so interventions can use it.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.errors import InputError
from workbench.heads import Head

DIVERGENCE_METRIC = "vhd"  # per (prompt, layer, head, query) records of the divergence probe
NORM_WITHOUT_METRIC = "norm_without"


def head_summary(table: pa.Table | pd.DataFrame, metric: str,
                 prompt_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """``mean_<metric>`` per (layer, head) from a divergence table, as a ``layer x head`` frame.

    With ``prompt_ids``, the mean is recomputed from the per-prompt ``<metric>`` records of those
    prompts only (each prompt's mean over its query positions, then the mean over prompts, as the
    probe's summaries do), e.g. to choose heads on one half of a prompt set.

    Raises:
        InputError: the table has no such rows, or mixes several segments or conditions (filter
            it to one run's setting first).
    """
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    if prompt_ids is None:
        rows = frame[(frame["metric"] == f"mean_{metric}") & frame["prompt_id"].isna()
                     & frame["head"].notna()]
    else:
        rows = frame[(frame["metric"] == metric) & frame["prompt_id"].isin(list(prompt_ids))]
    if rows.empty:
        raise InputError(f"no {metric!r} records (or their 'mean_{metric}' summaries) for the "
                         "prompts asked: pass the head_divergence table of a run")
    for column in ("segment", "condition"):
        if column in rows and rows[column].nunique(dropna=False) > 1:
            raise InputError(f"the records mix several {column}s "
                             f"({', '.join(map(str, rows[column].unique()))}); filter to one")
    if prompt_ids is not None:
        rows = rows.groupby(["prompt_id", "layer", "head"], as_index=False)["value"].mean()
    out = rows.pivot_table(index="layer", columns="head", values="value", aggfunc="mean")
    out.index, out.columns = out.index.astype(int), out.columns.astype(int)
    return out.sort_index().sort_index(axis=1)


def vhr_heads(table: pa.Table | pd.DataFrame, last_n_layers: int | None = None,
              metric: str = DIVERGENCE_METRIC) -> list[Head]:
    """VHR's head set from a head-divergence run's records: see the module docstring.

    Args:
        table: the ``head_divergence`` table (or a frame of it) of one run, with its summaries.
        last_n_layers: keep heads of the last N layers only (``None``: every layer).
        metric: the divergence metric whose ``mean_`` summary ranks heads (``vhd`` or
            ``vhd_rel``).

    Returns:
        Sorted ``(layer, head)`` pairs.

    Raises:
        InputError: missing or mixed records, or ``last_n_layers`` < 1.
    """
    if last_n_layers is not None and last_n_layers < 1:
        raise InputError(f"last_n_layers must be at least 1, got {last_n_layers}")
    vhd = head_summary(table, metric)
    norm = head_summary(table, NORM_WITHOUT_METRIC).reindex_like(vhd)
    keep = select_per_layer(vhd.to_numpy(), norm.to_numpy())
    layers = vhd.index.to_numpy()
    if last_n_layers is not None:
        keep &= (layers >= layers.max() - last_n_layers + 1)[:, None]
    rows, cols = np.nonzero(keep)
    return sorted((int(layers[r]), int(vhd.columns[c])) for r, c in zip(rows, cols))


def select_per_layer(vhd: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """``[layer, head]`` bool: not an outlier (both ``vhd`` and ``norm`` above their layer's
    mean + std) and ``vhd`` strictly above the layer median. NaN heads are never kept."""
    def above_mean_std(x: np.ndarray) -> np.ndarray:
        return x > (np.nanmean(x, axis=1, keepdims=True) + np.nanstd(x, axis=1, keepdims=True))

    outlier = above_mean_std(vhd) & above_mean_std(norm)
    return ~outlier & (vhd > np.nanmedian(vhd, axis=1, keepdims=True))


def top_heads(table: pa.Table | pd.DataFrame, k: int, metric: str = DIVERGENCE_METRIC,
              prompt_ids: Iterable[str] | None = None) -> list[tuple[Head, float]]:
    """The ``k`` heads with the largest ``mean_<metric>`` (over ``prompt_ids`` only, if given;
    see :func:`head_summary`), largest first, with their values; ties keep (layer, head) order."""
    summary = head_summary(table, metric, prompt_ids).stack()
    ordered = summary.sort_values(ascending=False, kind="stable").head(k)
    return [((int(layer), int(head)), float(value)) for (layer, head), value in ordered.items()]
