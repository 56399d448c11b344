"""Spot-checking attribution patching by activation patching on its top heads.

Attribution patching (EAP, Syed et al. 2023, arXiv 2310.10348) is a first-order estimate; it fails
where the logit difference is far from linear in a head's ``z`` (large activation changes, saturated
softmaxes; the motivation of EAP-IG, Hanna et al. 2024, arXiv 2403.17806). Activation patching of a
few heads is cheap, so :func:`spot_check` measures the ``k`` heads attribution ranks highest (by
``|score|``) and reports, per head, both scores, whether they disagree (:func:`disagrees`) and the
prompt where the estimated effect is furthest from the measured one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from circuits.discovery import Selection, select_heads
from circuits.effects import HeadEffects
from circuits.patching import Progress, activation_patching
from circuits.tasks import Task
from workbench.errors import InputError
from workbench.heads import Head, head_columns
from workbench.records import concat, records, string_column

ATOL, RTOL = 0.05, 0.5  # fractions of the clean - corrupted gap


def disagrees(estimated: np.ndarray, measured: np.ndarray, *, atol: float = ATOL,
              rtol: float = RTOL) -> np.ndarray:
    """``|estimated - measured| > max(atol, rtol * |measured|)`` elementwise (scores as fractions
    of the clean - corrupted gap): off by more than half the measured score and by more than 0.05
    of the gap. Same shape as the inputs, bool."""
    estimated, measured = np.asarray(estimated, float), np.asarray(measured, float)
    return np.abs(estimated - measured) > np.maximum(atol, rtol * np.abs(measured))


@dataclass(frozen=True)
class SpotCheck:
    """Attribution scores of ``heads`` next to activation-patching scores (both ``[k]``, fractions
    of the gap, positive = the head carries the task), with ``disagrees`` ``[k]`` bool. Per head
    also the prompt whose estimated effect is furthest from the measured one and both effects
    there (logits, patched LD minus base LD)."""

    task: str
    heads: list[Head]
    estimated: np.ndarray
    measured: np.ndarray
    disagrees: np.ndarray
    worst_prompt: list[str]
    worst_estimated: np.ndarray
    worst_measured: np.ndarray

    def records(self) -> pa.Table:
        """Rows per head: ``score_attribution``, ``score_activation``, ``disagrees`` (0/1),
        ``worst_effect_attribution`` and ``worst_effect_activation`` (``prompt_id`` = that
        prompt); ``condition`` = ``"spot check"``."""
        layer, head = head_columns(self.heads)
        common = dict(layer=layer, head=head, segment=self.task, condition="spot check")
        worst = string_column(self.worst_prompt, np.arange(len(self.heads)))
        return concat([
            records("score_attribution", self.estimated, **common),
            records("score_activation", self.measured, **common),
            records("disagrees", self.disagrees.astype(float), **common),
            records("worst_effect_attribution", self.worst_estimated, prompt_id=worst, **common),
            records("worst_effect_activation", self.worst_measured, prompt_id=worst, **common)])


def spot_check(model, task: Task, estimate: HeadEffects, *, k: int = 20,
               positions: str | Sequence[str] | None = None, batch_size: int = 16,
               heads_per_forward: int | None = None,
               progress: Progress | None = None) -> SpotCheck:
    """Activation-patch the ``k`` heads with the largest ``|estimate.score|`` (same direction and
    positions as the estimate) and compare per head.

    Raises:
        InputError: ``k`` < 1.
    """
    if k < 1:
        raise InputError(f"--spot-check must be at least 1 to check heads, got {k}")
    heads = select_heads(estimate.score, Selection("top_k", k))
    measured = activation_patching(model, task, direction=estimate.direction, positions=positions,
                                   heads=heads, heads_per_forward=heads_per_forward,
                                   batch_size=batch_size, progress=progress)
    rows, cols = head_columns(heads)
    est_effect = estimate.patched[:, rows, cols] - estimate.base[:, None]  # [prompt, k]
    act_effect = measured.patched[:, rows, cols] - measured.base[:, None]
    worst = np.abs(est_effect - act_effect).argmax(0)
    picks = np.arange(len(heads))
    est, act = estimate.score[rows, cols], measured.score[rows, cols]
    return SpotCheck(task.name, heads, est, act, disagrees(est, act),
                     [task.prompt_ids[i] for i in worst], est_effect[worst, picks],
                     act_effect[worst, picks])
