"""Hand-made ``workbench heads`` records and the pruning figures drawn from them (shared by the
figure tests, which need one plot of every registered kind), and the small prompt file the
pruning tests run on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tests.conftest import write_jsonl

TEXTS = ["Then, Mary and John went to the store. John gave a drink to",
         "When Alice and Bob got a ring at the garden, Bob decided to give it to",
         "While Sarah and Tom were working at the school, Tom gave a computer to",
         "The quick brown fox jumps over the lazy dog.",
         "Attention heads read from the residual stream and write back into it.",
         "Many heads put most of their attention on the first token."]


def lm_prompt_file(path: Path) -> Path:
    """The six :data:`TEXTS` as a prompt file (answer " Mary", distractor " John")."""
    return write_jsonl(path, [{"id": f"p{i}", "text": t, "answer": " Mary",
                               "distractor": " John"} for i, t in enumerate(TEXTS)])


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
