"""scipy-backed statistics against hand-computed values and independent resampling loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.stats import bootstrap_interval, spearman


def test_spearman_hand_case_ties_and_nan():
    # d = (0, 1, 1, 0): rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    a = np.array([[0.3, np.nan, 0.1], [0.1, 0.5, 0.5]])
    b = np.array([[2.0, 1.0, 0.0], [np.inf, 3.0, 1.0]])
    ok = np.isfinite(a) & np.isfinite(b)  # reference: Pearson of pandas average ranks
    ra, rb = (pd.Series(x[ok]).rank().to_numpy() for x in (a, b))
    assert spearman(a, b) == pytest.approx(np.corrcoef(ra, rb)[0, 1])
    assert np.isnan(spearman([1.0, 1.0], [1.0, 2.0]))
    with pytest.raises(ValueError, match="equal size"):
        spearman([1, 2], [1, 2, 3])


def test_bootstrap_interval_matches_an_independent_resampling_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 60)
    y = x + rng.normal(0.5, 0.3, 60)
    lo, hi = bootstrap_interval([x, y], lambda a, b, axis: b.mean(axis) / a.mean(axis),
                                n_resamples=4000)
    loop = np.random.default_rng(7)  # a plain loop, another seed: same law, not the same draws
    draws = [y[i].mean() / x[i].mean() for i in loop.integers(0, 60, (4000, 60))]
    want_lo, want_hi = np.quantile(draws, [0.025, 0.975])
    width = want_hi - want_lo
    assert lo == pytest.approx(want_lo, abs=0.1 * width)
    assert hi == pytest.approx(want_hi, abs=0.1 * width)
    assert lo < y.mean() / x.mean() < hi
    # the mean of a normal sample: close to mean +/- 1.96 standard errors
    lo, hi = bootstrap_interval([x], np.mean)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_interval([x], np.mean) == (lo, hi)  # fixed seed: reproducible
    assert bootstrap_interval([np.array([3.0])], np.mean) == (3.0, 3.0)
    with pytest.raises(ValueError, match="paired non-empty"):
        bootstrap_interval([x, y[:5]], np.mean)
