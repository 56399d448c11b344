"""Which tables and metrics the Circuits and Interventions pages read: the one place to adjust when
the circuit and intervention tables settle their names.

A :class:`Role` names the tables to look in first and the metrics that identify it. When none of
the named tables has one of its metrics, every record table that has one is used instead, so a
renamed table still shows up as long as its records have the expected shape. Pages for probes
(Heads, Layers, Position bias) need no mapping: they go by the coordinates the records carry.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.data import TableInfo


@dataclass(frozen=True)
class Role:
    """Tables to prefer (in order) and the metrics that make a table fit (any of them)."""

    tables: tuple[str, ...]
    metrics: tuple[str, ...]


# Circuits (``workbench circuits``): ``segment`` holds the task; circuit heads are ``member`` rows
# (layer, head; value = score), path-patching edges are ``edge`` rows whose layer/head is the
# sender and whose condition names the receiver (``receiver=9.6`` or ``receiver=logits``).
TASK_COLUMN = "segment"
CIRCUIT_MEMBERS = Role(("circuits",), ("member",))
CIRCUIT_EDGES = Role(("circuits",), ("edge",))
RECEIVER_PREFIX = "receiver="
# Per-head effects: patching scores, and direct logit attribution (``--dla``: ``dla`` per prompt;
# its head rows have a head, its MLP rows none, so the (layer x head) map shows the heads).
HEAD_EFFECTS = Role(("head_effects", "direct_logit_attribution"), ("score", "effect", "dla"))
PATCHING_GRID = "patching_grid"  # --grids: score per (layer, query_pos = position from the end)
FAITHFULNESS = Role(("faithfulness",), ("faithfulness", "faithfulness_normalised",
                                        "faithfulness_random", "circuit_accuracy"))
TASK_METRICS = Role(("task_metrics",), ("mean_logit_diff", "accuracy"))
# Overlap between two tasks' circuits: rows per pair with ``segment`` = "taskA|taskB"; the first
# matrix metric found is drawn, the first baseline metric found is the matrix's random baseline;
# ``shared`` rows name the shared heads by layer/head.
PAIR_SEPARATOR = "|"
OVERLAP = Role(("overlap",), ("jaccard", "overlap_coefficient"))
OVERLAP_BASELINE = ("jaccard_random", "random_jaccard", "expected_jaccard")
SHARED_HEADS = Role(("overlap",), ("shared",))
# Interventions (``workbench intervene`` and the live page): any metric; sweeps are conditions of
# the form name=number (``alpha=0.5``) in any table.
INTERVENTIONS = Role(("interventions", "intervention", "sweeps", "live_intervention"), ())
LIVE_TABLE = "live_intervention"


def find(role: Role, infos: dict[str, TableInfo]) -> list[tuple[str, list[str]]]:
    """``[(table, metrics of the role it has)]``: the role's named tables that fit, else every
    table that fits. A role without metrics fits its named tables with all their metrics."""
    def fitting(table: str) -> list[str]:
        have = infos[table].metrics
        return [m for m in role.metrics if m in have] if role.metrics else list(have)

    named = [(t, fitting(t)) for t in role.tables if t in infos and fitting(t)]
    if named or not role.metrics:
        return named
    return [(t, fitting(t)) for t in sorted(infos) if fitting(t)]
