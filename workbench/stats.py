"""Statistics shared by the figures and the circuits: rank correlation and bootstrap intervals,
both from ``scipy.stats`` (no hand-written versions).

* :func:`spearman`: Spearman's rank correlation over the pairs finite in both arrays
  (``scipy.stats.spearmanr``; ties get their average rank).
* :func:`bootstrap_interval`: a percentile bootstrap confidence interval of any statistic of one or
  more paired samples (``scipy.stats.bootstrap``, Efron & Tibshirani 1993), with a fixed seed so a
  figure or a table is reproducible.
* :func:`bootstrap_mean_ci`: the same interval for the mean of many columns at once (one matrix
  product per chunk of columns: 70,651 edge scores, or every head's DLA), where a scipy call per
  column would be slow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

N_RESAMPLES = 2000
SEED = 0


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman rank correlation of two arrays of equal size (flattened) over the entries finite in
    both; NaN when fewer than two such pairs remain or one side is constant.

    Raises:
        ValueError: the arrays differ in size.
    """
    a, b = np.asarray(first, float).ravel(), np.asarray(second, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"spearman needs arrays of equal size, got {a.size} and {b.size}")
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(stats.spearmanr(a[ok], b[ok]).statistic)


def bootstrap_interval(samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], *,
                       confidence: float = 0.95, n_resamples: int = N_RESAMPLES,
                       seed: int = SEED) -> tuple[float, float]:
    """``(lo, hi)`` percentile-bootstrap interval of ``statistic(*samples)``.

    ``samples`` are paired along axis 0 (resampled with the same indices: e.g. per-prompt values
    of several quantities); ``statistic(*resampled, axis=-1)`` must reduce the last axis (numpy
    style, vectorised). With fewer than two observations, constant samples or a non-finite
    statistic, the interval is the statistic itself.

    Raises:
        ValueError: samples of unequal length, or an empty sample.
    """
    arrays = [np.asarray(s, float) for s in samples]
    n = {len(a) for a in arrays}
    if len(n) != 1 or 0 in n:
        raise ValueError(f"bootstrap needs paired non-empty samples, got lengths "
                         f"{[len(a) for a in arrays]}")
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(*arrays, axis=-1))
        if n == {1} or all(np.ptp(a) == 0 for a in arrays) or not np.isfinite(point):
            return point, point
        result = stats.bootstrap(tuple(arrays), statistic, paired=True, vectorized=True,
                                 confidence_level=confidence, n_resamples=n_resamples,
                                 method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` prompt indices drawn with replacement."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean_ci(per_prompt: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over prompts, per column.

    Args:
        per_prompt: ``[n_prompts, n_items]`` (e.g. edge scores).

    Returns:
        ``(low, high)``, ``[n_items]`` each.
    """
    n = per_prompt.shape[0]
    counts = np.stack([np.bincount(row, minlength=n) for row in
                       bootstrap_indices(n, n_boot, seed)]).astype(float) / n  # [n_boot, n]
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    low, high = np.empty(per_prompt.shape[1]), np.empty(per_prompt.shape[1])
    for start in range(0, per_prompt.shape[1], chunk):
        means = counts @ per_prompt[:, start:start + chunk]
        low[start:start + chunk], high[start:start + chunk] = np.percentile(means, q, axis=0)
    return low, high
