"""Issue 15's defects on the browsing pages, each as what the page shows (AppTest on the fixture
runs folder): the head follows the metric, the headline metric comes first, constant metrics are
not offered, run comparison on one colour range with depth alignment, readable captions."""

from __future__ import annotations

import numpy as np
import pytest

from app.headline import KNOWN
from app.ui import clicked_head
from tests.test_app import box, charts, no_errors, open_app, raw, runs, texts  # noqa: F401


def test_headline_table_equals_the_probe_classes():
    from probes import PROBES

    assert KNOWN == {name: tuple(cls.headline) for name, cls in PROBES.items()}


def test_headline_metric_is_the_default_and_constant_metrics_are_not_offered(open_app):
    """Defects 2 and 3: probe_a declares ``score`` as its headline (alphabetically first is
    ``effect``); ``attn``'s per-head mean is 1 / row length for every head (float noise)."""
    at = open_app("views/heads.py", run="fixture")
    no_errors(at)
    metric = box(at, "Metric")
    assert metric.value == "score"
    assert "attn" not in metric.options
    assert any("attn" in c and "float noise" in c for c in texts(at, "caption"))


def test_selected_head_follows_the_metric(open_app, runs):
    """Defect 1: switching the metric selects the new metric's top head."""
    at = open_app("views/heads.py", run="fixture")
    box(at, "Layer").set_value(0).run()
    box(at, "Head").set_value(0).run()
    for metric in ("seg_mass", "layer_norm", "score"):
        if metric not in box(at, "Metric").options:
            continue
        box(at, "Metric").set_value(metric).run()
        no_errors(at)
        rows = raw(runs, "probe_a").query(f"metric == '{metric}'")
        means = rows.groupby(["layer", "head"]).value.mean()
        if metric == "seg_mass":  # the first variant is chosen
            continue
        assert (box(at, "Layer").value, box(at, "Head").value) == means.idxmax(), metric


def test_a_click_selects_the_head():
    """Defect 1: a click event's point gives (layer, head) in either axis order."""
    event = {"selection": {"points": [{"x": 3, "y": 1, "z": 0.5}]}}
    assert clicked_head(event) == (3, 1)
    assert clicked_head(event, ("head", "layer")) == (1, 3)
    assert clicked_head({"selection": {"points": []}}) is None
    assert clicked_head(None) is None
