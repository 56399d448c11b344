"""A figure as data: :class:`Plot` holds exactly the table a figure draws and its parameters.

A figure function (``head_heatmap``, ``by_depth`` ...) shapes records into a :class:`Plot`; the
drawer registered for its ``kind`` turns ``(data, params)`` into a plotly figure. Because a drawer
sees nothing else, the sidecar files (``<name>.csv`` + ``<name>.json``) are enough to redraw the
figure: :func:`load_plot` reads them back and ``plot.figure()`` gives the same figure.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from workbench.figures.style import Width
from workbench.heads import format_head

Drawer = Callable[[pd.DataFrame, dict, Width], go.Figure]
DRAWERS: dict[str, Drawer] = {}
SIDECAR_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
MAX_NAME = 72  # characters in a file stem; longer ones are cut and end in a hash of the whole


def drawer(kind: str) -> Callable[[Drawer], Drawer]:
    """Register the function that draws plots of ``kind`` (one per kind)."""
    def register(fn: Drawer) -> Drawer:
        if kind in DRAWERS:
            raise ValueError(f"figure kind {kind!r} is registered twice")
        DRAWERS[kind] = fn
        return fn
    return register


def safe_name(*parts: Any) -> str:
    """A short, stable, shell-safe file stem: the non-empty parts joined by ``.``, every
    character other than letters, digits, ``_`` and ``-`` replaced by ``-`` (no ``=``, spaces,
    quotes or slashes), at most :data:`MAX_NAME` characters (a longer stem is cut and ends in 8 hex
    digits of a hash of the full one, so it stays unique and stable). The full description of a
    figure is in its sidecar and ``index.json`` (see :func:`describe`).

    ``safe_name("attention_sink", "heatmap", "sink_head_rate", "IO")`` ->
    ``"attention_sink.heatmap.sink_head_rate.IO"``.
    """
    cleaned = [_UNSAFE.sub("-", str(p).replace(".", "-")).strip("-") for p in parts
               if p not in (None, "")]
    cleaned = [c for i, c in enumerate(cleaned) if c and (i == 0 or c != cleaned[i - 1])]
    stem = ".".join(cleaned)
    if len(stem) > MAX_NAME:
        digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
        stem = f"{stem[:MAX_NAME - 9].rstrip('.-')}.{digest}"
    return stem


def describe(plot: "Plot") -> str:
    """One line saying what a figure shows, for ``index.json`` and the sidecar: kind, metric and
    unit, table, the rows it is restricted to and the head / prompt it is about."""
    p = plot.params
    what = KIND_TITLES.get(plot.kind, plot.kind)
    metric = p.get("label") or p.get("metric")
    unit = f" ({p['unit']})" if p.get("unit") else ""
    parts = [f"{what} of {metric}{unit}" if metric else what]
    if p.get("table"):
        parts.append(f"table {p['table']}")
    where = {k: v for k, v in (p.get("where") or {}).items()}
    if p.get("prompt_id") is not None:
        where = {"prompt_id": p["prompt_id"], **where}
    if p.get("layer") is not None and p.get("head") is not None:
        where = {"head": format_head((p["layer"], p["head"])), **where}
    if where:
        parts.append(", ".join(f"{k}={v}" for k, v in where.items()))
    if p.get("heads_chosen_by"):
        parts.append(f"head chosen by: {p['heads_chosen_by']}")
    if p.get("scale") in ("log", "no-key0"):
        parts.append("log y axis" if p["scale"] == "log" else "key position 0 left out")
    return "; ".join(parts)


KIND_TITLES = {
    "heatmap": "layer x head heatmap", "by_depth": "by layer (mean, spread where there is one)",
    "position_profile": "profile over key positions by layer",
    "pattern": "attention pattern (query_pos x key_pos)", "dose_response": "dose-response",
    "distribution": "histogram", "overlap": "task x task overlap", "circuit": "circuit graph",
    "digraph": "weighted graph", "faithfulness": "circuit faithfulness",
    "edge_curve": "size-faithfulness curve of edge circuits",
    "edge_circuit": "edge circuit graph",
}


@dataclass
class Plot:
    """One figure: ``data`` is exactly what is drawn, ``params`` everything else the drawer uses.

    Attributes:
        kind: the drawer's key in :data:`DRAWERS` (``heatmap``, ``by_depth``, ...).
        name: stable file stem (see :func:`safe_name`), unique within a run's figure set.
        data: the plotted table; written as the CSV sidecar.
        params: JSON-serialisable drawing parameters (metric, label, unit, scale, ...); written
            to the JSON sidecar with the data's column types.
    """

    kind: str
    name: str
    data: pd.DataFrame
    params: dict = field(default_factory=dict)

    def figure(self, width: Width = "single") -> go.Figure:
        """Draw at a column width (``"single"`` 3.5 in or ``"double"`` 7.16 in).

        Raises:
            KeyError: no drawer is registered for ``kind``.
        """
        if self.kind not in DRAWERS:
            raise KeyError(f"no drawer for figure kind {self.kind!r}; known: {sorted(DRAWERS)}")
        return DRAWERS[self.kind](self.data, self.params, width)


def sidecar_csv(plot: Plot) -> bytes:
    """The data sidecar: CSV, floats written with full precision (they read back exactly)."""
    return plot.data.to_csv(index=False, lineterminator="\n").encode()


def sidecar_json(plot: Plot, **extra: Any) -> bytes:
    """The parameter sidecar: kind, name, params, column types, plus ``extra`` (run, width ...)."""
    doc = {"sidecar_version": SIDECAR_VERSION, "kind": plot.kind, "name": plot.name,
           "description": describe(plot),
           "data": f"{plot.name}.csv", "columns": _column_types(plot.data),
           "params": plot.params, **extra}
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _column_types(data: pd.DataFrame) -> list[list[str]]:
    """``[[column, type], ...]`` in column order; type is int, float, bool or str."""
    out = []
    for name, dtype in data.dtypes.items():
        if pd.api.types.is_bool_dtype(dtype):
            kind = "bool"
        elif pd.api.types.is_integer_dtype(dtype):
            kind = "int"
        elif pd.api.types.is_float_dtype(dtype):
            kind = "float"
        else:
            kind = "str"
        out.append([str(name), kind])
    return out


def load_plot(json_path: Path) -> Plot:
    """Read a figure's sidecars (``<name>.json`` and the CSV it names) back into a :class:`Plot`.

    Raises:
        FileNotFoundError: a sidecar is missing. ValueError: the JSON is not a workbench sidecar.
    """
    json_path = Path(json_path)
    doc = json.loads(json_path.read_text())
    if doc.get("sidecar_version") != SIDECAR_VERSION or "kind" not in doc:
        raise ValueError(f"{json_path} is not a workbench figure sidecar (version "
                         f"{doc.get('sidecar_version')!r}, expected {SIDECAR_VERSION})")
    types = dict(doc["columns"])
    strings = [c for c, t in types.items() if t == "str"]
    data = pd.read_csv(json_path.parent / doc["data"], keep_default_na=False,
                       na_values={c: [""] for c, t in types.items() if t != "str"},
                       dtype={c: str for c in strings})
    data = data.astype({c: {"int": "int64", "float": "float64", "bool": "bool"}[t]
                        for c, t in types.items() if t != "str"})
    return Plot(kind=doc["kind"], name=doc["name"], data=data[list(types)], params=doc["params"])
