"""Noising and denoising side by side (Heimersheim & Nanda 2024, arXiv 2404.15255).

A head can matter when its clean activation is removed from the clean run (noising,
``corrupted_into_clean``) and not when it alone is put into the corrupted run (denoising,
``clean_into_corrupted``), or the reverse: noising finds heads that are necessary, denoising heads
that are sufficient, and redundant (backup) heads show up only in denoising. :func:`compare_directions`
activation-patches the given heads in both directions and flags the heads that matter in one only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from circuits.patching import Progress, activation_patching
from circuits.tasks import Task
from workbench.heads import Head, head_columns
from workbench.records import concat, records

MATTERS = 0.05  # |score| at least this fraction of the clean - corrupted gap: the head matters


def one_direction_only(noising: np.ndarray, denoising: np.ndarray, *,
                       matters: float = MATTERS) -> np.ndarray:
    """Elementwise bool: ``|score| >= matters`` in exactly one of the two directions (scores as
    fractions of the gap, positive = the head carries the task)."""
    return (np.abs(np.asarray(noising, float)) >= matters) != \
        (np.abs(np.asarray(denoising, float)) >= matters)


@dataclass(frozen=True)
class DirectionScores:
    """Activation-patching scores of ``heads`` in both directions, ``[k]`` each (fractions of the
    gap, positive = the head carries the task), and ``flagged`` ``[k]`` (matters in one only)."""

    task: str
    heads: list[Head]
    noising: np.ndarray
    denoising: np.ndarray

    @property
    def flagged(self) -> np.ndarray:
        return one_direction_only(self.noising, self.denoising)

    def records(self) -> pa.Table:
        """Rows per head: ``score_noising``, ``score_denoising``, ``one_direction_only`` (0/1)."""
        layer, head = head_columns(self.heads)
        common = dict(layer=layer, head=head, segment=self.task, condition="both directions")
        return concat([records("score_noising", self.noising, **common),
                       records("score_denoising", self.denoising, **common),
                       records("one_direction_only", self.flagged.astype(float), **common)])


def compare_directions(model, task: Task, heads: Sequence[Head], *,
                       positions: str | Sequence[str] | None = None, batch_size: int = 16,
                       heads_per_forward: int | None = None,
                       progress: Progress | None = None) -> DirectionScores:
    """Activation-patch ``heads`` noising (``corrupted_into_clean``) and denoising
    (``clean_into_corrupted``); costs two runs of ``len(heads)`` heads per batch.

    Raises:
        InputError: a bad head or segment, before any forward pass.
    """
    heads = sorted(set(map(tuple, heads)))
    scores = []
    for direction in ("corrupted_into_clean", "clean_into_corrupted"):
        effects = activation_patching(model, task, direction=direction, positions=positions,
                                      heads=heads, heads_per_forward=heads_per_forward,
                                      batch_size=batch_size, progress=progress)
        scores.append(np.array([effects.score[h] for h in heads]))
    return DirectionScores(task.name, heads, *scores)
