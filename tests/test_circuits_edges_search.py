"""Edge circuits sized by faithfulness: the search on hand-built tables, rankings, the random band,
the Riemann rule of EAP-IG and the bounds checked before the model loads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from circuits.edges.search import (faithfulness, random_circuits, ranking, search,
                                   task_sign)
from workbench.errors import InputError


def table_search(f_table, target, grid):
    """Run :func:`search` on a table: prefix k has faithfulness ``f_table[k]`` (one prompt, model
    1, empty 0); counts the circuits the search asks for."""
    asked = []

    def evaluate(circuits):
        asked.extend(len(c) for c in circuits)
        return np.array([[f_table[len(c)]] for c in circuits])

    res = search(lambda k: np.arange(k), target, grid, evaluate, np.array([1.0]),
                 np.array([0.0]))
    return res, asked


def brute_smallest(f_table, target):
    return next((k for k in range(1, len(f_table)) if f_table[k] >= target), None)


@pytest.mark.parametrize("seed", range(5))
def test_search_finds_the_smallest_prefix_of_a_monotone_table(seed):
    rng = np.random.default_rng(seed)
    n = 1000
    f_table = np.concatenate([[0.0], np.cumsum(rng.exponential(size=n))])
    f_table /= f_table[-1]
    grid = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    for target in (0.05, 0.5, 0.8, 0.999, 1.0):
        res, asked = table_search(f_table, target, grid)
        want = brute_smallest(f_table, target)
        assert res.reached and int(res.k[res.chosen]) == want
        assert res.f[res.chosen] >= target and f_table[want - 1] < target
        i = next(j for j, k in enumerate(grid) if k >= want)  # the bracket's upper grid size
        bracket = grid[i] - (grid[i - 1] if i else 0)
        assert len(asked) <= len(grid) + math.ceil(math.log2(max(bracket, 1)))
        assert len(set(asked)) == len(asked)  # no prefix measured twice


def test_search_on_a_non_monotone_table_takes_the_first_crossing_after_the_grid():
    f_table = np.zeros(101)
    f_table[1:] = np.linspace(0, 1, 100)
    f_table[3] = 0.9  # an excursion above the target between grid sizes 2 and 5 ...
    f_table[10] = -0.2  # ... and a dip below it at a grid size
    grid = [2, 5, 10, 20, 50, 100]
    res, _ = table_search(f_table, 0.8, grid)
    # grid: f(2)=0.01, f(5)=0.04, f(10)=-0.2, f(20)=0.19, f(50)=0.49, f(100)=1 -> bracket (50, 100]
    assert int(res.k[res.chosen]) == brute_smallest(np.where(np.arange(101) > 50, f_table, 0),
                                                    0.8)
    assert res.reached
    measured = dict(zip(res.k.tolist(), res.f.tolist()))
    assert set(grid) <= set(measured) and measured[10] == pytest.approx(-0.2)


def test_search_keeps_the_best_and_says_so_when_no_size_reaches_the_target():
    f_table = np.concatenate([[0.0], np.linspace(0.1, 0.6, 50)])
    f_table[30] = 0.7
    res, asked = table_search(f_table, 0.8, [10, 30, 50])
    assert not res.reached and int(res.k[res.chosen]) == 30
    assert asked == [10, 30, 50]
    line = res.message(cap=50)
    assert "\n" not in line and "0.8" in line and "0.700" in line and "50 edges" in line


def test_search_measures_a_repeated_circuit_once():
    # prefixes 5..8 prune to the same circuit: the bisection must not measure it again
    f_table = np.concatenate([[0.0], np.linspace(0.05, 1, 16)])

    def circuit_of(k):
        return np.arange(min(k, 4) if k < 9 else k)

    asked = []

    def evaluate(circuits):
        asked.extend(len(c) for c in circuits)
        return np.array([[f_table[len(c)]] for c in circuits])

    res = search(circuit_of, 0.5, [4, 8, 16], evaluate, np.array([1.0]), np.array([0.0]))
    assert sorted(asked) == sorted(set(asked))
    assert int(res.kept[res.chosen]) == brute_smallest(f_table, 0.5)


@pytest.mark.parametrize("target", [float("nan"), float("inf")])
def test_search_refuses_a_non_finite_target(target):
    with pytest.raises(InputError, match="finite"):
        table_search(np.linspace(0, 1, 11), target, [5, 10])


def test_rankings_put_the_task_carrying_edges_first():
    scores = np.array([0.3, -0.5, 0.1, -0.2, 0.0])
    assert ranking(scores, "absolute", "logit_diff").tolist() == [1, 0, 3, 2, 4]
    assert ranking(scores, "signed", "logit_diff").tolist() == [1, 3, 4, 2, 0]
    assert ranking(scores, "signed", "kl").tolist() == [0, 2, 4, 3, 1]
    assert task_sign("prob") == -1.0
    with pytest.raises(InputError, match="ranking"):
        ranking(scores, "random", "logit_diff")


def test_faithfulness_of_means_by_hand():
    values = np.array([[1.0, 3.0], [2.0, 2.0]])
    assert faithfulness(values, np.array([4.0, 4.0]), np.array([0.0, 2.0])).tolist() == \
        [(2 - 1) / (4 - 1), (2 - 1) / (4 - 1)]


def test_random_circuits_are_seeded_sets_of_the_asked_sizes():
    a = random_circuits(100, [3, 10], 4, seed=1)
    b = random_circuits(100, [3, 10], 4, seed=1)
    assert [len(x) for x in a] == [4, 4]
    assert all(len(c) == s and len(set(c)) == s for row, s in zip(a, [3, 10]) for c in row)
    assert all((x == y).all() for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_target_sizes_are_monotone_even_when_the_curve_is_not():
    from circuits.edges.sized import target_sizes
    kept = np.array([10, 20, 40, 80, 160])
    f = np.array([0.6, 0.3, 0.85, 0.7, 1.0])
    got = target_sizes(kept, f, (0.5, 0.8, 0.9, 1.0, 1.1))
    assert got[0.5] == 10 and got[0.8] == 40 and got[0.9] == 160 and got[1.0] == 160
    assert np.isnan(got[1.1])
    values = [v for v in got.values() if not np.isnan(v)]
    assert values == sorted(values)
