"""Per-head patching results, their sign convention, and the positions a patch touches.

Directions (Heimersheim & Nanda's "denoising" / "noising"):

* ``clean_into_corrupted``: run the corrupted prompt, put in the clean activation; the *base* run is
  the corrupted one and a head matters if it restores the clean logit difference.
* ``corrupted_into_clean`` (the default, as in Wang et al.'s path patching and Syed et al.'s EAP):
  run the clean prompt, put in the corrupted activation; the base run is the clean one and a head
  matters if it destroys the clean logit difference.

Every method returns :class:`HeadEffects` with the same convention: ``patched[p, l, h]`` is the
logit difference of prompt ``p`` with head ``(l, h)`` patched (measured, or estimated by attribution
patching), ``effect = mean(patched) - mean(base)`` in logits, and ``score`` the effect as a fraction
of the clean - corrupted gap, signed so that **positive means the head carries the task**: the
fraction of the gap recovered (clean into corrupted) or lost (corrupted into clean).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.records import concat, records, string_column
from workbench.stats import bootstrap_interval
from workbench.stats import spearman as stats_spearman

Direction = Literal["clean_into_corrupted", "corrupted_into_clean"]
DIRECTIONS: tuple[str, ...] = ("clean_into_corrupted", "corrupted_into_clean")


def check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise InputError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")


@dataclass
class HeadEffects:
    """One method's per-head results on one task.

    Attributes:
        method: ``activation_patching``, ``attribution_patching`` or ``path_patching``.
        task: task name.
        direction: one of :data:`DIRECTIONS`.
        patched: ``[n_prompts, n_layers, n_heads]`` logit difference with the head patched; NaN for
            heads that were not patched.
        clean, corrupted: ``[n_prompts]`` unpatched logit differences.
        prompt_ids: the prompts, in row order.
        condition: free text recorded with the rows (e.g. a path-patching stage).
    """

    method: str
    task: str
    direction: str
    patched: np.ndarray
    clean: np.ndarray
    corrupted: np.ndarray
    prompt_ids: list[str]
    condition: str | None = None

    @property
    def base(self) -> np.ndarray:
        return self.clean if self.direction == "corrupted_into_clean" else self.corrupted

    @property
    def effect(self) -> np.ndarray:
        """``[n_layers, n_heads]`` mean patched LD minus mean base LD, in logits."""
        return self.patched.mean(0) - self.base.mean()

    @property
    def score(self) -> np.ndarray:
        """``[n_layers, n_heads]`` effect / (mean clean LD - mean corrupted LD), positive = the
        head carries the task (gap recovered when denoising, gap lost when noising)."""
        sign = 1.0 if self.direction == "clean_into_corrupted" else -1.0
        return sign * self.effect / (self.clean.mean() - self.corrupted.mean())

    def score_intervals(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """``([n_layers, n_heads], [n_layers, n_heads])`` lower and upper bounds of a percentile
        bootstrap interval of :attr:`score` over prompts (prompts resampled with their patched,
        clean and corrupted LD together; :func:`workbench.stats.bootstrap_interval`, seed 0);
        NaN for heads not scored."""
        sign = 1.0 if self.direction == "clean_into_corrupted" else -1.0

        def score(patched, base, clean, corrupted, axis):
            return sign * (patched.mean(axis) - base.mean(axis)) / (clean.mean(axis)
                                                                     - corrupted.mean(axis))
        lo = np.full(self.patched.shape[1:], np.nan)
        hi = lo.copy()
        for layer, head in zip(*np.nonzero(~np.isnan(self.patched[0]))):
            lo[layer, head], hi[layer, head] = bootstrap_interval(
                [self.patched[:, layer, head], self.base, self.clean, self.corrupted], score,
                confidence=confidence)
        return lo, hi

    def records(self) -> pa.Table:
        """Rows: ``logit_diff`` per (prompt, layer, head); ``effect``, ``score`` and the bounds of
        its 95% bootstrap interval over prompts ``score_lo`` / ``score_hi`` per (layer, head);
        ``segment`` = task, ``condition`` = direction (plus :attr:`condition`)."""
        n, n_layers, n_heads = self.patched.shape
        ok = ~np.isnan(self.patched[0])
        layer, head = np.nonzero(ok)
        cond = self.direction if self.condition is None else f"{self.direction}; {self.condition}"
        common = dict(segment=self.task, condition=cond)
        per_prompt = records(
            "logit_diff", self.patched[:, layer, head].reshape(-1),
            layer=np.tile(layer, n), head=np.tile(head, n),
            prompt_id=string_column(self.prompt_ids, np.repeat(np.arange(n), len(layer))), **common)
        lo, hi = self.score_intervals()
        per_head = [records(metric, values[layer, head], layer=layer, head=head, **common)
                    for metric, values in (("effect", self.effect), ("score", self.score),
                                           ("score_lo", lo), ("score_hi", hi))]
        return concat([per_prompt, *per_head])


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two score arrays over the entries finite in both
    (:func:`workbench.stats.spearman`, i.e. ``scipy.stats.spearmanr``; ties get their average
    rank)."""
    return stats_spearman(first, second)


def position_mask(batch, positions: str | Sequence[str] | None) -> Tensor:
    """``[batch, pos]`` bool: where a patch applies.

    ``None`` or ``"all"``: every position; ``"last"``: each prompt's last real token; otherwise one
    or more segment names (comma-separated or a list), possibly with ``"last"``: the union of their
    token positions in the clean prompt (the corrupted prompt has the same length).

    Raises:
        InputError: a prompt lacks a named segment.
    """
    names = parse_positions(positions)
    if not names:
        return torch.ones(batch.size, batch.seq_len, dtype=torch.bool)
    mask = torch.zeros(batch.size, batch.seq_len, dtype=torch.bool)
    for name in names:
        if name == "last":
            mask[torch.arange(batch.size), batch.last_pos().cpu()] = True
        else:
            mask |= batch.segment_mask(name).cpu()
    return mask


def parse_positions(positions: str | Sequence[str] | None) -> list[str]:
    """``None``/``"all"`` -> ``[]`` (everywhere); ``"IO,last"`` -> ``["IO", "last"]``."""
    if positions is None:
        return []
    if isinstance(positions, str):
        positions = [p.strip() for p in positions.split(",") if p.strip()]
    names = list(positions)
    return [] if names in ([], ["all"]) else names


def check_positions(task, positions: str | Sequence[str] | None) -> None:
    """Raise :class:`InputError` before any forward pass if a prompt lacks a named segment."""
    for name in parse_positions(positions):
        if name == "all":
            raise InputError("positions: 'all' cannot be combined with other positions")
        if name == "last":
            continue
        for tok in task.clean:
            if name not in tok.segments:
                raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment {name!r} "
                                 f"(patching positions)")
