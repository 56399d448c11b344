"""Which figures say nothing: constant or degenerate data are not drawn, and the reason is kept.

:func:`degenerate` looks at the data a :class:`~workbench.figures.plot.Plot` would draw and returns
why it should not be drawn, or ``None``. The figure sets skip such plots and list them with the
reason under ``skipped`` in ``index.json`` (see ``registry.py``).

Constant means constant up to float noise: values whose range is at most :data:`NOISE_REL` of
their magnitude. The runs' activations are float32 (machine epsilon 1.2e-7), and means of rows
that sum to one differ between heads only by rounding (1 / (mean row length) for every head of a
causal pattern: 0.0408163260 to 0.0408163272), so a colour bar over such a range would magnify
rounding error into a pattern. 1e-6 relative is about 8 float32 ulps.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

NOISE_REL = 1e-6


def is_constant(values) -> bool:
    """True when the finite ``values`` span at most :data:`NOISE_REL` of their largest magnitude
    (or there are fewer than two of them)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return True
    lo, hi = float(v.min()), float(v.max())
    return hi - lo <= NOISE_REL * max(abs(lo), abs(hi), 1e-300)


def _constant_reason(values, what: str = "values") -> str | None:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return f"no finite {what}"
    if v.size == 1:
        return f"a single {what[:-1] if what.endswith('s') else what} ({v[0]:.6g})"
    if is_constant(v):
        return f"constant {what} ({v.min():.6g} to {v.max():.6g}, within float noise)"
    return None


def _by_depth(data: pd.DataFrame, params: dict) -> str | None:
    if len(data) < 2:
        return "one layer only: nothing to compare across depth"
    if (data["n"] <= 1).all() and "head" in params.get("spread_over", ()):
        return ("one value per layer (one head per layer at most): no spread across heads to "
                "draw; see the heatmap")
    if all(is_constant(data[c]) for c in ("mean", "lo", "hi")):
        return (f"the same mean and spread at every layer (mean {data['mean'].iloc[0]:.6g}, "
                "within float noise)")
    return None


def _overlap(data: pd.DataFrame, params: dict) -> str | None:
    off = data[data["task_a"] != data["task_b"]]
    if off.empty:
        return "one task only: no pair to compare"
    return None


def _circuit(data: pd.DataFrame, params: dict) -> str | None:
    if (data["element"] == "node").sum() == 0:
        return "no heads in the circuit"
    return None


def _distribution(data: pd.DataFrame, params: dict) -> str | None:
    if (data["count"] > 0).sum() <= 1:
        return "every value falls in one bin (constant values)"
    return None


_CHECKS = {
    "heatmap": lambda d, p: _constant_reason(d["value"]),
    "pattern": lambda d, p: _constant_reason(d["value"]),
    "position_profile": lambda d, p: _constant_reason(d["value"]),
    "by_depth": _by_depth,
    "dose_response": lambda d, p: _constant_reason(d["mean"], "means"),
    "distribution": _distribution,
    "overlap": _overlap,
    "circuit": _circuit,
    "faithfulness": lambda d, p: None if len(d) else "no faithfulness rows",
}


def degenerate(plot) -> str | None:
    """Why ``plot`` should not be drawn (constant or degenerate data), or ``None`` to draw it."""
    check = _CHECKS.get(plot.kind)
    return check(plot.data, plot.params) if check else None
