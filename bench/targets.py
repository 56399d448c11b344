"""Rows of the benchmark table that carry a target (``python -m bench`` shows it and ✓ / ✗)."""

from __future__ import annotations


def target_row(benchmark: str, measure: str, value: float, unit: str, target: float,
               better: str, note: str = "") -> dict:
    """A row with a target: ``better`` is ``"<="`` (at most ``target``) or ``">="``."""
    ok = value <= target if better == "<=" else value >= target
    return {"benchmark": benchmark, "measure": measure, "value": value, "unit": unit,
            "target": f"{better} {target:g}", "ok": bool(ok), "note": note}
