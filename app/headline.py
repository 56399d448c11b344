"""Which metric a page shows first: the probe's headline metric (declared once, on the probe
class as ``headline``), never the alphabetically first one, and never one whose values are
constant by construction.

Runs record each probe's ``headline`` in their manifest (``probes[].headline``); runs made before
that fall back to :data:`KNOWN`, a torch-free copy of the classes' declarations that a test keeps
equal to them (the app must not import ``probes``, which imports torch).
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from workbench.figures.checks import is_constant

# probe name -> headline metrics (first = default); equal to probes.PROBES[name].headline
# (tests/test_app_atlas.py::test_headline_table_equals_the_probe_classes).
KNOWN: dict[str, tuple[str, ...]] = {
    "attention_entropy": ("mean_entropy_norm", "mean_entropy"),
    "attention_pattern": (),
    "attention_sink": ("mean_sink_share_first", "sink_head_rate"),
    "head_divergence": ("mean_vhd", "mean_vhd_rel"),
    "head_types": ("mean_induction_mul", "mean_previous_token_mul", "mean_duplicate_token_mul"),
    "massive_activations": ("mean_max_abs", "token0_massive_frac"),
    "position_bias": ("mean_first_token_mass", "mean_primacy_index"),
}


def headline(manifest: dict, table: str) -> tuple[str, ...]:
    """The headline metrics of the probe that wrote ``table``: from the run's manifest, else
    from :data:`KNOWN`; ``()`` when neither knows the table."""
    for probe in manifest.get("probes") or []:
        if isinstance(probe, dict) and probe.get("name") == table and "headline" in probe:
            return tuple(str(m) for m in probe.get("headline") or ())
    return KNOWN.get(table, ())


def order(metrics: list[str], first: tuple[str, ...]) -> list[str]:
    """``metrics`` with the headline ones first (in their declared order), the rest after."""
    lead = [m for m in first if m in metrics]
    return lead + [m for m in metrics if m not in lead]


def offered(metrics: list[str], values: Callable[[str], pd.Series]) -> tuple[list[str], list[str]]:
    """(metrics to offer, metrics left out because their values are constant up to float
    noise), ``values(metric)`` giving a metric's per-head means."""
    keep, constant = [], []
    for metric in metrics:
        (constant if is_constant(values(metric)) else keep).append(metric)
    return keep, constant
