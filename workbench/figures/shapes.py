"""Shaping records (the long-format schema of ``workbench.records``) into the tables figures draw.

Every function takes a pandas frame (or pyarrow table) with record columns and returns a new frame;
nothing here draws. Aggregates are plain means over rows unless stated, so a heatmap cell over
per-query rows equals the mean over every recorded (prompt, query), as the probes' ``mean_*``
summaries are defined.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from workbench.stats import bootstrap_interval

# interval name -> what it spans (see spread)
INTERVALS: dict[str, str] = {
    "q10-q90": "10th to 90th percentile",
    "iqr": "25th to 75th percentile",
    "ci95": "95% percentile-bootstrap interval of the mean (scipy.stats.bootstrap, seed 0)",
    "sd": "mean +/- one standard deviation",
    "minmax": "minimum to maximum",
}
INTERVAL_LABELS: dict[str, str] = {"q10-q90": "10-90th pct.", "iqr": "25-75th pct.",
                                   "ci95": "95% CI", "sd": "\u00b11 s.d.", "minmax": "range"}
_SWEEP = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


def as_frame(records: pd.DataFrame | pa.Table) -> pd.DataFrame:
    """A pandas view of a record table (pyarrow tables are converted)."""
    return records.to_pandas() if isinstance(records, pa.Table) else records


def select(records: pd.DataFrame | pa.Table, metric: str, where: dict | None = None,
           need: tuple[str, ...] = ()) -> pd.DataFrame:
    """Rows of ``metric`` matching ``where`` (column -> value; ``None`` matches null) whose
    ``need`` columns are all non-null.

    Raises:
        ValueError: a ``where``/``need`` column is absent, or no row matches.
    """
    df = as_frame(records)
    missing = [c for c in ("metric", "value", *(where or {}), *need) if c not in df.columns]
    if missing:
        raise ValueError(f"records lack column(s) {missing}; have {list(df.columns)}")
    mask = np.array(df["metric"] == metric, dtype=bool)
    for column, value in (where or {}).items():
        mask &= np.array(df[column].isna() if value is None else df[column] == value, dtype=bool)
    for column in need:
        mask &= np.array(df[column].notna(), dtype=bool)
    out = df[mask]
    if out.empty:
        cond = f" where {where}" if where else ""
        needs = f" with {', '.join(need)} set" if need else ""
        raise ValueError(f"no records of metric {metric!r}{cond}{needs}")
    return out


def qualifier(where: dict | None) -> str:
    """The values of ``where`` for a file name, in key order: ``{"segment": "IO"}`` -> ``"IO"``,
    ``{"condition": "alpha=2", "segment": "IO"}`` -> ``"alpha-2.IO"``; ``""`` when empty. The keys
    are in the sidecar (``params.where``)."""
    values = [re.sub(r"[^A-Za-z0-9_-]+", "-", "none" if v is None else str(v)).strip("-")
              for _, v in sorted((where or {}).items())]
    return ".".join(values)


def group_mean(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean ``value`` per ``keys`` with ``n_rows`` and ``n_prompts`` (distinct non-null ids)."""
    grouped = df.groupby(keys, sort=True, dropna=False)
    out = grouped["value"].agg(value="mean", n_rows="size")
    if "prompt_id" in df.columns:
        out["n_prompts"] = grouped["prompt_id"].nunique()
    else:
        out["n_prompts"] = 0
    out = out.reset_index()
    return out.astype({"n_rows": "int64", "n_prompts": "int64"})


def unit_means(df: pd.DataFrame, units: list[str]) -> pd.DataFrame:
    """One value per unit of spread (e.g. per (layer, head, prompt)): the mean over other rows.

    Null coordinates (aggregate rows without a prompt) form their own unit.
    """
    keys = [u for u in units if u in df.columns]
    return df.groupby(keys, sort=True, dropna=False)["value"].mean().reset_index()


def spread(df: pd.DataFrame, by: list[str], interval: str) -> pd.DataFrame:
    """Per ``by`` group: ``mean``, the interval ``lo``/``hi`` and ``n`` values.

    Raises:
        ValueError: an unknown ``interval`` (see :data:`INTERVALS`).
    """
    if interval not in INTERVALS:
        raise ValueError(f"interval {interval!r} is not one of {sorted(INTERVALS)}")
    rows = []
    for key, values in df.groupby(by, sort=True)["value"]:
        v = values.to_numpy(dtype=float)
        lo, hi = _bounds(v, interval)
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), "mean": float(v.mean()), "lo": lo, "hi": hi,
                     "n": len(v)})
    return pd.DataFrame(rows, columns=[*by, "mean", "lo", "hi", "n"]).astype({"n": "int64"})


def _bounds(v: np.ndarray, interval: str) -> tuple[float, float]:
    mean = float(v.mean())
    if interval == "ci95":  # sorted: the same values give the same interval in any row order
        return bootstrap_interval([np.sort(v)], np.mean)
    if interval == "sd":
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        return mean - sd, mean + sd
    q = {"q10-q90": (0.1, 0.9), "iqr": (0.25, 0.75), "minmax": (0.0, 1.0)}[interval]
    lo, hi = np.quantile(v, q)
    return float(lo), float(hi)


def parse_sweep(condition: Any) -> tuple[str, float] | None:
    """``"alpha=2"`` -> ``("alpha", 2.0)``; ``None`` for anything else (``"clean"``, null)."""
    if not isinstance(condition, str):
        return None
    match = _SWEEP.match(condition)
    return (match.group(1), float(match.group(2))) if match else None


def histogram(values: np.ndarray, bins: int | None = None) -> pd.DataFrame:
    """Counts in equal-width bins: ``bin_start``, ``bin_end``, ``count``.

    ``bins`` defaults to round(sqrt(n)) clipped to [8, 40]; the edges span the data's range.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite values to histogram")
    n_bins = bins or int(np.clip(round(np.sqrt(v.size)), 8, 40))
    counts, edges = np.histogram(v, bins=n_bins)
    return pd.DataFrame({"bin_start": edges[:-1], "bin_end": edges[1:],
                         "count": counts.astype("int64")})


def token_label(token: str) -> str:
    """A token drawn as an axis label: whitespace trimmed, newlines as a return arrow,
    a pure-space token as an open box."""
    text = str(token).replace("\n", "\u21b5").strip()
    return text if text else "\u2423"
