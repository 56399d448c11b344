"""Spread over prompts: bootstrap intervals of head scores and faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from circuits.discovery import Faithfulness, faithfulness
from circuits.effects import HeadEffects
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file


def bootstrap(samples, statistic):
    """Reference: scipy's percentile bootstrap called directly (seed 0, 2000 resamples)."""
    return stats.bootstrap(samples, statistic, paired=True, vectorized=True, n_resamples=2000,
                           method="percentile", rng=np.random.default_rng(0)).confidence_interval


def test_head_score_intervals_are_paired_bootstraps_over_prompts():
    rng = np.random.default_rng(3)
    clean, corrupted = rng.normal(4, 1, 12), rng.normal(-1, 1, 12)
    patched = clean[:, None, None] - rng.normal(1, 0.5, (12, 2, 3))
    patched[:, 1, 2] = np.nan  # not scored
    effects = HeadEffects("activation_patching", "t", "corrupted_into_clean", patched, clean,
                          corrupted, [f"p{i}" for i in range(12)])
    lo, hi = effects.score_intervals()
    assert np.isnan(lo[1, 2]) and np.isnan(hi[1, 2])
    want = bootstrap((patched[:, 0, 1], clean, clean, corrupted),
                     lambda p, b, c, x, axis: -(p.mean(axis) - b.mean(axis))
                     / (c.mean(axis) - x.mean(axis)))
    assert (lo[0, 1], hi[0, 1]) == pytest.approx((want.low, want.high))
    assert np.all(lo[~np.isnan(lo)] <= effects.score[~np.isnan(lo)])
    assert np.all(effects.score[~np.isnan(hi)] <= hi[~np.isnan(hi)])
    table = effects.records().to_pandas()
    row = table[(table.metric == "score_hi") & (table.layer == 0) & (table["head"] == 1)]
    assert row.value.item() == pytest.approx(want.high)


def test_faithfulness_intervals_over_prompts(tiny_llama, tmp_path):
    task = load_task(str(tiny_ioi_file(tmp_path, n=6)), tiny_llama)
    faith = faithfulness(tiny_llama, task, [(0, 1), (2, 3), (3, 0)])
    assert len(faith.model_ld) == len(faith.circuit_ld) == len(faith.empty_ld) == 6
    assert faith.model == pytest.approx(np.mean(faith.model_ld))
    m, c, e = (np.array(x) for x in (faith.model_ld, faith.circuit_ld, faith.empty_ld))
    want = bootstrap((c, m), lambda c, m, axis: c.mean(axis) / m.mean(axis))
    assert faith.interval("faithfulness") == pytest.approx((want.low, want.high))
    want = bootstrap((c, m, e), lambda c, m, e, axis: (c.mean(axis) - e.mean(axis))
                     / (m.mean(axis) - e.mean(axis)))
    assert faith.interval("faithfulness_normalised") == pytest.approx((want.low, want.high))
    assert Faithfulness(1.0, 0.5, 0.0, 1.0).interval("faithfulness") == (0.5, 0.5)  # no prompts


def test_both_directions_side_by_side_flag_heads_that_matter_in_one(tiny_llama, tmp_path):
    from circuits.directions import compare_directions, one_direction_only
    from circuits.patching import activation_patching

    assert one_direction_only([0.3, 0.3, 0.01, -0.2], [0.2, 0.02, 0.01, 0.06]).tolist() == \
        [False, True, False, False]
    task = load_task(str(tiny_ioi_file(tmp_path, n=4)), tiny_llama)
    heads = [(3, 1), (0, 2), (2, 0)]
    both = compare_directions(tiny_llama, task, heads, batch_size=2)
    assert both.heads == sorted(heads)
    for name, direction in (("noising", "corrupted_into_clean"),
                            ("denoising", "clean_into_corrupted")):
        ref = activation_patching(tiny_llama, task, direction=direction, heads=[(0, 2)])
        assert getattr(both, name)[0] == pytest.approx(ref.score[0, 2], abs=1e-5)
    rows = both.records().to_pandas()
    assert rows[rows.metric == "one_direction_only"].value.tolist() == \
        both.flagged.astype(float).tolist()
