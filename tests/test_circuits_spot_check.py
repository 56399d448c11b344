"""Attribution patching's top heads spot-checked by activation patching: per-head agreement and a
``disagrees`` flag (the linear approximation fails for some heads, EAP-IG 2403.17806's motivation)."""

from __future__ import annotations

import numpy as np
import pytest

from circuits.attribution import attribution_patching
from circuits.discovery import Selection
from circuits.methods import METHODS, DiscoveryOptions
from circuits.patching import activation_patching
from circuits.spot_check import SpotCheck, disagrees, spot_check
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file


@pytest.fixture(scope="module")
def task_path(tmp_path_factory):
    return tiny_ioi_file(tmp_path_factory.mktemp("tasks"), n=6)


def test_disagreement_rule_on_hand_made_scores():
    # the SmolLM2 heads: L0H6 +0.779 vs +0.080, L0H7 -0.490 vs +0.012; and agreeing ones
    got = disagrees(np.array([0.779, -0.490, 0.30, 0.03, -0.2]),
                    np.array([0.080, 0.012, 0.25, -0.01, -0.12]))
    assert got.tolist() == [True, True, False, False, True]


def test_attribution_discovery_spot_checks_its_top_heads(tiny_llama, task_path):
    task = load_task(str(task_path), tiny_llama)
    found = METHODS["attribution"](tiny_llama, task, Selection("top_k", 3),
                                   DiscoveryOptions(spot_check=5))
    check = found.spot_check
    assert isinstance(check, SpotCheck)
    estimate = attribution_patching(tiny_llama, task)
    order = np.argsort(-np.abs(estimate.score).ravel(), kind="stable")[:5]
    want = sorted((int(i // 4), int(i % 4)) for i in order)
    assert check.heads == want
    measured = activation_patching(tiny_llama, task, heads=want)  # independent run
    rows, cols = np.array(want).T
    np.testing.assert_allclose(check.measured, measured.score[rows, cols], atol=1e-6)
    np.testing.assert_allclose(check.estimated, estimate.score[rows, cols], atol=1e-6)
    assert check.disagrees.tolist() == disagrees(check.estimated, check.measured).tolist()
    # the prompt whose estimated effect is furthest from the measured one, per head
    gap = estimate.patched[:, rows, cols] - measured.patched[:, rows, cols]
    worst = np.abs(gap).argmax(0)
    assert check.worst_prompt == [task.prompt_ids[i] for i in worst]
    np.testing.assert_allclose(check.worst_estimated,
                               estimate.patched[worst, rows, cols] - estimate.base[worst],
                               atol=1e-5)
    np.testing.assert_allclose(check.worst_measured,
                               measured.patched[worst, rows, cols] - measured.base[worst],
                               atol=1e-5)
    off = METHODS["attribution"](tiny_llama, task, Selection("top_k", 3),
                                 DiscoveryOptions(spot_check=0))
    assert off.spot_check is None
    direct = spot_check(tiny_llama, task, estimate, k=2)
    assert len(direct.heads) == 2
