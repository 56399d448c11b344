"""Which metric a page shows first: the probe's headline metric (declared once, on the probe
class as ``headline``), never the alphabetically first one, and never one whose values are
constant by construction.

Runs record each probe's ``headline`` in their manifest (``probes[].headline``); runs made before
that fall back to :data:`KNOWN`, a torch-free copy of the classes' declarations that a test keeps
equal to them (the app must not import ``probes``, which imports torch).
"""

from __future__ import annotations

import pyarrow.compute as pc
import streamlit as st

from app.data import TableRef, frame, scan
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


def offered(metrics: list[str], constant: frozenset[str]) -> tuple[list[str], list[str]]:
    """(metrics to offer, metrics left out because ``constant`` names them)."""
    return ([m for m in metrics if m not in constant], [m for m in metrics if m in constant])


@st.cache_data(max_entries=64, show_spinner=False)
def constant_metrics(ref: TableRef) -> frozenset[str]:
    """The metrics of a table whose per-head means (over every row of the head) are the same for
    every head up to float noise (:func:`workbench.figures.checks.is_constant`): one scan and
    one group-by for all metrics together."""
    table = scan(ref, ("metric", "layer", "head", "value"))
    table = table.filter(pc.and_(pc.is_valid(table["layer"]), pc.is_valid(table["head"])))
    means = frame(table.group_by(["metric", "layer", "head"]).aggregate([("value", "mean")]))
    return frozenset(str(m) for m, rows in means.groupby("metric", observed=True)["value_mean"]
                     if is_constant(rows.to_numpy()))
