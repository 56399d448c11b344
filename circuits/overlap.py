"""Overlap between circuits (head sets) of different tasks, with a random-set baseline.

Merullo et al. (2023, arXiv 2310.08744) report that GPT-2 medium's IOI and Colored Objects circuits
share 78% of their heads. For two circuits ``A`` and ``B`` out of ``N`` heads (the same model, or
models of equal shape) this module gives the Jaccard index ``|A∩B| / |A∪B|``, the overlap coefficient
``|A∩B| / min(|A|, |B|)``, the intersection over each circuit, the shared heads, and the
probability that two random head sets of the same sizes share at least ``|A∩B|`` heads: the
hypergeometric upper tail

    P(X >= k) = sum_{j >= k} C(|A|, j) C(N - |A|, |B| - j) / C(N, |B|)

(``scipy.stats.hypergeom(N, |A|, |B|).sf(k - 1)``), and the expected Jaccard index of such random
sets, ``E[X / (|A| + |B| - X)]`` under the same hypergeometric law (its ``pmf``; the baseline of a
Jaccard matrix).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy.stats import hypergeom

from workbench.errors import InputError
from workbench.heads import Head


def hypergeometric_tail(k: int, n_total: int, n_first: int, n_second: int) -> float:
    """``P(X >= k)`` for ``X`` the size of the intersection of a fixed set of ``n_first`` items and
    a uniformly random set of ``n_second`` items out of ``n_total`` (``scipy.stats.hypergeom``).

    Raises:
        InputError: a set larger than ``n_total``.
    """
    if not (0 <= n_first <= n_total and 0 <= n_second <= n_total):
        raise InputError(f"set sizes {n_first} and {n_second} must be between 0 and {n_total}")
    if k <= 0:
        return 1.0
    return float(min(1.0, hypergeom(n_total, n_first, n_second).sf(k - 1)))


def expected_jaccard(n_total: int, n_first: int, n_second: int) -> float:
    """``E[|A∩B| / |A∪B|]`` for a fixed ``A`` of ``n_first`` heads and a uniformly random ``B`` of
    ``n_second`` heads out of ``n_total`` (sum over ``scipy.stats.hypergeom``'s pmf; 0/0 counts as
    0).

    Raises:
        InputError: a set larger than ``n_total``.
    """
    if not (0 <= n_first <= n_total and 0 <= n_second <= n_total):
        raise InputError(f"set sizes {n_first} and {n_second} must be between 0 and {n_total}")
    j = np.arange(1, min(n_first, n_second) + 1)
    if not j.size:
        return 0.0
    pmf = hypergeom(n_total, n_first, n_second).pmf(j)
    return float(np.sum(pmf * j / (n_first + n_second - j)))


@dataclass(frozen=True)
class Overlap:
    """Overlap of two circuits; ``first``/``second`` name them (task names)."""

    first: str
    second: str
    size_first: int
    size_second: int
    shared: tuple[Head, ...]  # the heads in both, sorted
    n_total: int  # heads in the model
    jaccard: float  # |A∩B| / |A∪B|
    overlap_coefficient: float  # |A∩B| / min(|A|, |B|)
    shared_over_first: float  # |A∩B| / |A|
    shared_over_second: float  # |A∩B| / |B|
    expected_shared: float  # |A| |B| / N for random sets of these sizes
    p_value: float  # P(random sets share >= |A∩B| heads)
    expected_jaccard: float  # E[Jaccard] of random sets of these sizes

    @property
    def n_shared(self) -> int:
        return len(self.shared)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def overlap(first: Iterable[Head], second: Iterable[Head], n_total: int,
            names: tuple[str, str] = ("A", "B")) -> Overlap:
    """Overlap metrics and the random baseline for two head sets out of ``n_total`` heads."""
    a, b = set(map(tuple, first)), set(map(tuple, second))
    shared = tuple(sorted(a & b))
    k = len(shared)
    return Overlap(names[0], names[1], len(a), len(b), shared, n_total,
                   jaccard=_ratio(k, len(a | b)), overlap_coefficient=_ratio(k, min(len(a), len(b))),
                   shared_over_first=_ratio(k, len(a)), shared_over_second=_ratio(k, len(b)),
                   expected_shared=len(a) * len(b) / n_total,
                   p_value=hypergeometric_tail(k, n_total, len(a), len(b)),
                   expected_jaccard=expected_jaccard(n_total, len(a), len(b)))


def overlap_table(circuits: Mapping[str, Iterable[Head]], n_total: int) -> list[Overlap]:
    """:func:`overlap` for every pair of circuits, in the mapping's order.

    Raises:
        InputError: fewer than two circuits.
    """
    if len(circuits) < 2:
        raise InputError(f"overlap needs circuits of at least two tasks, got {len(circuits)}")
    return [overlap(circuits[x], circuits[y], n_total, (x, y)) for x, y in combinations(circuits, 2)]


def shared_by_all(circuits: Mapping[str, Iterable[Head]]) -> list[Head]:
    """The heads every circuit contains."""
    sets = [set(map(tuple, c)) for c in circuits.values()]
    return sorted(set.intersection(*sets)) if sets else []
