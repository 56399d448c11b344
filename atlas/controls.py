"""Random-head controls for a role ablation, and what an effect is measured against.

A role's effect is compared with the effects of ``n_draws`` random head sets of the same size
drawn from the same layers (METHODS.md section 10; Olsson et al. 2022, arXiv 2209.11895; Wang et
al. 2022, arXiv 2211.00593 compare with random circuits the same way):

* **layer-matched draws** (:func:`control_draws`): each draw takes, in every layer the role holds
  heads in, as many heads as the role holds there, uniformly at random (seeded) among that layer's
  heads that do not hold the role; where a layer has fewer such heads than needed, the draw also
  takes role heads of that layer (at random) to reach the count, so a draw always has the role's
  size and layer profile. A role that holds every head of its layers has controls equal to itself
  (its p-value is then 1: nothing distinguishes it from random heads of its layers).
* **empirical p-value** (:func:`empirical_p`): ``(1 + #draws at least as extreme) / (1 +
  #draws)``, "as extreme" meaning an effect of at least the same magnitude ``|effect|``
  (two-sided: a role whose removal helps the metric is as notable as one whose removal hurts).
* the interval is a percentile bootstrap over prompts of the mean per-prompt effect
  (:func:`workbench.stats.bootstrap_interval`, seed 0).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np

from workbench.bounds import BOUNDS
from workbench.errors import InputError
from workbench.heads import Head
from workbench.stats import bootstrap_interval

MAX_DRAWS = int(BOUNDS["atlas --causal-draws"].high)  # each draw is a forward copy per batch


def role_seed(seed: int, role: str) -> int:
    """The seed of a role's draws: ``seed`` mixed with a stable hash of the role's name (so two
    roles of the same size and layers get different draws, and a role's draws do not change when
    other roles are added)."""
    return (int(seed) * 1_000_003 + zlib.crc32(role.encode())) % (2**32)


def control_draws(heads: Sequence[Head], n_heads: int, n_draws: int, seed: int
                  ) -> list[list[Head]]:
    """``n_draws`` layer-matched random head sets (module docstring), each sorted.

    Args:
        heads: the role's heads ``(layer, head)``.
        n_heads: heads per layer of the model.

    Raises:
        InputError: ``n_draws`` outside 1..:data:`MAX_DRAWS`, or a head index outside the layer.
    """
    if not 1 <= n_draws <= MAX_DRAWS:
        raise InputError(f"--causal-draws must be in 1..{MAX_DRAWS}, got {n_draws}")
    role = sorted(set(map(tuple, heads)))
    if any(not 0 <= h < n_heads for _, h in role):
        raise InputError(f"a role head is outside the {n_heads} heads of its layer: {role}")
    counts = Counter(layer for layer, _ in role)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_draws):
        draw: list[Head] = []
        for layer in sorted(counts):
            held = [h for lay, h in role if lay == layer]
            others = [h for h in range(n_heads) if h not in held]
            need = counts[layer]
            if len(others) >= need:
                picked = list(rng.choice(others, need, replace=False))
            else:
                picked = others + list(rng.choice(held, need - len(others), replace=False))
            draw += [(layer, int(h)) for h in picked]
        draws.append(sorted(draw))
    return draws


def empirical_p(effect: float, draws: Sequence[float]) -> float:
    """``(1 + #{|d| >= |effect|}) / (1 + n)`` over the draws' effects (NaN draws ignored); NaN
    when the effect is NaN or there are no draws."""
    d = np.asarray(draws, float)
    d = d[np.isfinite(d)]
    if not np.isfinite(effect) or d.size == 0:
        return float("nan")
    return float((1 + np.sum(np.abs(d) >= abs(effect) - 1e-12 * max(1.0, abs(effect))))
                 / (1 + d.size))


def summarize(per_prompt_effect: np.ndarray, draw_effects: np.ndarray) -> dict:
    """``effect`` (mean over prompts), ``effect_lo`` / ``effect_hi`` (95% bootstrap interval over
    prompts), ``control_mean`` / ``control_sd`` (over draws, ddof 1), ``p_value``,
    ``n_prompts``, ``n_draws``.

    Args:
        per_prompt_effect: ``[n_prompts]`` ablated minus unablated metric, per prompt.
        draw_effects: ``[n_draws]`` each control draw's mean effect.
    """
    per_prompt_effect = np.asarray(per_prompt_effect, float)
    draws = np.asarray(draw_effects, float)
    effect = float(per_prompt_effect.mean())
    lo, hi = bootstrap_interval([per_prompt_effect], lambda x, axis: x.mean(axis))
    return {"effect": effect, "effect_lo": lo, "effect_hi": hi,
            "control_mean": float(draws.mean()) if draws.size else float("nan"),
            "control_sd": float(draws.std(ddof=1)) if draws.size > 1 else float("nan"),
            "p_value": empirical_p(effect, draws), "n_prompts": int(per_prompt_effect.size),
            "n_draws": int(draws.size)}
