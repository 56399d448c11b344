"""Resolve an operation's ``heads`` (explicit list or selector) to ``(layer, head)`` pairs.

Selectors read a stored run's parquet tables (no torch): VHR heads of a ``head_divergence`` run
(:func:`workbench.selection.vhr_heads`), the top-k heads by any metric of any table, VAR's
image-centric heads from an ``attention_sink`` run, or random heads (a control). See
:class:`workbench.interventions.spec.Selector`.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from workbench.errors import InputError
from workbench.heads import Head, all_heads, check_heads, parse_heads
from workbench.selection import vhr_heads
from workbench.interventions.spec import Selector


def _table(sel: Selector, default: str, where: str) -> pd.DataFrame:
    if not sel.run:
        raise InputError(f"{where}: selector {sel.select!r} needs 'run' (a run directory)")
    path = Path(sel.run) / f"{sel.table or default}.parquet"
    if not path.exists():
        raise InputError(f"{where}: {path} does not exist (selector {sel.select!r} reads the "
                         f"{sel.table or default!r} table of a run)")
    return pq.read_table(path).to_pandas()


def top_k_heads(frame: pd.DataFrame, metric: str, k: int, *, segment: str | None = None,
                condition: str | None = None) -> list[Head]:
    """The ``k`` heads with the largest mean ``metric`` over their rows (rows with a head;
    filtered to ``segment``/``condition`` when given); ties keep (layer, head) order.

    Raises:
        InputError: no such rows.
    """
    rows = frame[(frame["metric"] == metric) & frame["head"].notna()]
    for column, value in (("segment", segment), ("condition", condition)):
        if value is not None:
            rows = rows[rows[column] == value]
    if rows.empty:
        raise InputError(f"no per-head {metric!r} records (segment={segment}, "
                         f"condition={condition})")
    means = rows.groupby(["layer", "head"])["value"].mean()
    top = means.sort_values(ascending=False, kind="stable").head(k)
    return sorted((int(layer), int(head)) for layer, head in top.index)


def image_centric_heads(frame: pd.DataFrame, segment: str, min_mass: float, rho: float
                        ) -> list[Head]:
    """VAR's segment-centric heads (arXiv 2503.03321): mean ``segment_mass`` >= ``min_mass`` and
    mean ``segment_nonsink_share`` >= ``rho`` per (layer, head), from an ``attention_sink``
    table."""
    rows = frame[(frame["segment"] == segment) & frame["prompt_id"].isna()]
    wide = rows.pivot_table(index=["layer", "head"], columns="metric", values="value")
    need = ("mean_segment_mass", "mean_segment_nonsink_share")
    if wide.empty or any(m not in wide for m in need):
        raise InputError(f"no {' / '.join(need)} summaries for segment {segment!r}: pass a "
                         "attention_sink run made with that segment")
    keep = wide[(wide[need[0]] >= min_mass) & (wide[need[1]] >= rho)]
    return sorted((int(layer), int(head)) for layer, head in keep.index)


def resolve_heads(heads, n_layers: int, n_heads: int, where: str) -> list[Head]:
    """Explicit ``["L.H", ...]`` or a :class:`Selector` -> sorted heads, checked against the
    model's shape.

    Raises:
        InputError: a bad head string, a head out of range, a selector missing its fields or its
            run's table; ``where`` (e.g. ``"operation 1 (scale_head): field 'heads'"``) prefixes
            the message.
    """
    if not isinstance(heads, Selector):
        try:
            found = parse_heads(heads)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
    else:
        found = _select(heads, n_layers, n_heads, where)
    check_heads(found, n_layers, n_heads, where=where)
    if not found:
        raise InputError(f"{where}: no heads (the selector matched none)")
    return found


def _select(sel: Selector, n_layers: int, n_heads: int, where: str) -> list[Head]:
    if sel.select == "all":
        return all_heads(n_layers, n_heads)
    if sel.select == "random":
        if sel.k is None:
            raise InputError(f"{where}: selector 'random' needs 'k'")
        pool = all_heads(n_layers - 1 if sel.exclude_last_layer else n_layers, n_heads)
        return sorted(random.Random(sel.seed).sample(pool, min(sel.k, len(pool))))
    try:
        if sel.select == "vhr":
            return vhr_heads(_table(sel, "head_divergence", where), sel.last_n_layers,
                             sel.metric or "vhd")
        if sel.select == "image_centric":
            return image_centric_heads(_table(sel, "attention_sink", where),
                                       sel.segment or "image", sel.min_mass, sel.rho)
        if sel.k is None or sel.metric is None or sel.table is None:
            raise InputError("selector 'top_k' needs 'run', 'table', 'metric' and 'k'")
        return top_k_heads(_table(sel, sel.table, where), sel.metric, sel.k,
                           segment=sel.segment, condition=sel.condition)
    except InputError as err:
        if str(err).startswith(where):
            raise
        raise InputError(f"{where}: {err}") from None
