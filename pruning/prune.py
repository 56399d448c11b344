"""The pruning curve: remove heads in increasing importance and watch the metric
(Michel et al., arXiv 1905.10650, section 4.2; METHODS.md section 9).

Heads are removed in increasing order of their layer-normalised importance
(:attr:`pruning.importance.Importance.normalised`; ties broken by (layer, head)), in steps of
``step`` (default 10%) of all heads: after step ``i`` the first ``round(i * step * n_heads)`` heads
of the order are removed. The importance is estimated once on the unpruned model and not
re-estimated after each step. The control removes heads in random orders (one permutation per
seed). Removal is

* ``zero``: the head's ``hook_z`` is set to 0 (gate 0);
* ``mean``: the head's ``hook_z`` is replaced by its mean over every real token of the evaluated
  prompts, ``[head_index, d_head]`` per layer, position-independent (as ``ablate_head`` mode
  ``mean`` of the intervention spec does).

At each step the metric (``lm_loss`` or ``logit_diff``, :mod:`pruning.objectives`) is averaged over
the prompts. The fraction removable (:func:`removable_fraction`) is the largest step fraction ``f``
such that every step up to ``f`` degrades the metric by at most ``tolerance`` (default 5%)
relative to the unpruned model (:func:`pruning.objectives.degradation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pruning.gates import Z_HOOK, gate_hooks
from pruning.objectives import PromptData, degradation, metric_values
from workbench.errors import InputError
from workbench.heads import Head, all_heads

MODES = ("zero", "mean")


def check_mode(mode: str) -> str:
    """Raises :class:`InputError` for a removal mode other than ``zero`` / ``mean``."""
    if mode not in MODES:
        raise InputError(f"--ablation {mode!r}: choose one of {', '.join(MODES)}")
    return mode


def removal_counts(n_total: int, step: float = 0.1) -> list[int]:
    """Heads removed at each step: ``round(i * step * n_total)`` for ``i = 0 .. 1/step``.

    Raises:
        InputError: ``step`` not in (0, 1].
    """
    if not 0 < step <= 1:
        raise InputError(f"--step must be in (0, 1], got {step}")
    n_steps = int(round(1 / step))
    return sorted({min(n_total, int(round(i * step * n_total))) for i in range(n_steps + 1)})


def importance_order(scores: np.ndarray) -> list[Head]:
    """Heads by increasing ``scores`` ``[n_layers, n_heads]`` (stable: ties by layer, head)."""
    n_heads = scores.shape[1]
    return [(int(i // n_heads), int(i % n_heads))
            for i in np.argsort(scores.ravel(), kind="stable")]


def random_order(n_layers: int, n_heads: int, seed: int) -> list[Head]:
    """A random permutation of every head (numpy ``default_rng(seed)``)."""
    heads = all_heads(n_layers, n_heads)
    return [heads[i] for i in np.random.default_rng(seed).permutation(len(heads))]


def head_means(model, data: PromptData, batch_size: int = 8) -> torch.Tensor:
    """``[n_layers, n_heads, d_head]`` float32 mean of ``hook_z`` over every real token of
    ``data``."""
    info = model.info
    sums = torch.zeros(info.n_layers, info.n_heads, info.d_head)
    count = 0

    def keep(layer: int, valid):
        def hook(z, hook):
            sums[layer] += z[valid].float().sum(0).cpu()
        return hook

    for batch in data.batches(batch_size):
        batch = batch.to(model.device)
        valid = batch.valid()
        hooks = [(Z_HOOK.format(layer=layer), keep(layer, valid))
                 for layer in range(info.n_layers)]
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            model.bridge(batch.input_ids, **batch.model_kwargs())
        count += int(valid.sum())
    return sums / count


def removal_hooks(gates: torch.Tensor, means: torch.Tensor | None) -> list:
    """Hooks keeping ``g * z + (1 - g) * mean`` per head (``means`` None: zero ablation, ``g z``).

    ``gates`` ``[n_layers, n_heads]``; ``means`` ``[n_layers, n_heads, d_head]``.
    """
    if means is None:
        return gate_hooks(gates)

    def make(layer: int):
        g = gates[layer]
        fill = ((1 - g)[:, None] * means[layer])

        def hook(z, hook):
            gz = g.to(z.device, z.dtype)[None, None, :, None]
            return z * gz + fill.to(z.device, z.dtype)[None, None]
        return hook
    return [(Z_HOOK.format(layer=layer), make(layer)) for layer in range(gates.shape[0])]


def evaluate(model, data: PromptData, gates: torch.Tensor, means: torch.Tensor | None = None,
             batch_size: int = 8) -> np.ndarray:
    """``[n_prompts]`` metric of every prompt (in ``data`` order) with the gates applied."""
    index = {pid: i for i, pid in enumerate(data.ids)}
    out = np.zeros(len(index))
    hooks = removal_hooks(gates, means)
    for batch in data.batches(batch_size):
        batch = batch.to(model.device)
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(batch.input_ids, **batch.model_kwargs())
        out[[index[p] for p in batch.prompt_ids]] = metric_values(data, logits, batch).cpu().numpy()
    return out


@dataclass(frozen=True)
class Curve:
    """One removal order's curve: ``values[i]`` ``[n_prompts]`` after removing ``counts[i]``."""

    order_name: str  # "importance" or "random-<seed>"
    counts: list[int]
    values: np.ndarray  # [n_steps, n_prompts]

    def means(self) -> np.ndarray:
        return self.values.mean(1)


def pruning_curve(model, data: PromptData, order: list[Head], counts: list[int], name: str, *,
                  means: torch.Tensor | None = None, batch_size: int = 8,
                  progress: Callable[[int], None] | None = None) -> Curve:
    """Evaluate ``data`` after removing the first ``counts[i]`` heads of ``order``, every ``i``."""
    info = model.info
    rows = []
    for count in counts:
        gates = torch.ones(info.n_layers, info.n_heads)
        for layer, head in order[:count]:
            gates[layer, head] = 0.0
        rows.append(evaluate(model, data, gates, means, batch_size))
        if progress:
            progress(1)
    return Curve(name, list(counts), np.stack(rows))


def removable_fraction(counts: list[int], metric: np.ndarray, base: float, objective,
                       n_total: int, tolerance: float = 0.05) -> float:
    """The largest ``counts[i] / n_total`` with every step up to ``i`` degraded by at most
    ``tolerance`` (relative, :func:`pruning.objectives.degradation`) from ``base``; 0 when the
    first removal step already exceeds it."""
    best = 0.0
    for count, value in zip(counts, metric):
        if degradation(objective, base, float(value)) > tolerance:
            break
        best = count / n_total
    return best
