"""Hand-made ``workbench heads`` records and the pruning figures drawn from them (shared by the
figure tests, which need one plot of every registered kind)."""

from __future__ import annotations

import pandas as pd


def curve_records() -> pd.DataFrame:
    """``mean_lm_loss`` of an importance order and two random orders at 0, 50% and 100%."""
    rows = []
    for order, values in (("importance", [2.0, 2.5, 6.0]), ("random-0", [2.0, 4.0, 6.0]),
                          ("random-1", [2.0, 5.0, 6.0])):
        rows += [{"metric": "mean_lm_loss", "segment": order, "condition": f"pruned={f:g}",
                  "layer": None, "head": None, "prompt_id": None, "value": v}
                 for f, v in zip((0, 0.5, 1), values)]
    return pd.DataFrame(rows)


def gate_records() -> pd.DataFrame:
    """Two lambdas' gates on a 2 x 2 grid, their open counts and held-out losses."""
    rows = [{"metric": "mean_lm_loss", "condition": "baseline", "value": 2.0}]
    for lam, gates, loss in (("0.01", [1, 1, 0.5, 0], 2.1), ("0.1", [1, 0, 0, 0], 3.0)):
        rows += [{"metric": "gate", "condition": f"lambda={lam}", "layer": i // 2,
                  "head": i % 2, "value": g} for i, g in enumerate(gates)]
        rows += [{"metric": "open_gates", "condition": f"lambda={lam}",
                  "value": sum(g > 0 for g in gates)},
                 {"metric": "mean_lm_loss", "condition": f"lambda={lam}", "value": loss}]
    frame = pd.DataFrame(rows)
    for column in ("layer", "head", "prompt_id", "segment"):
        if column not in frame:
            frame[column] = None
    return frame


def pruning_plots() -> list:
    from workbench.figures.pruning import gate_frontier, pruning_curve

    return [pruning_curve(curve_records(), "mean_lm_loss"),
            gate_frontier(gate_records(), "mean_lm_loss")]
