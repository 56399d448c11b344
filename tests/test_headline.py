"""Each probe declares its headline metrics in one place (its class); they are metrics it writes."""

import pytest

from probes import PROBES


@pytest.mark.parametrize("name", sorted(PROBES))
def test_headline_metrics_are_summaries_the_probe_writes(name):
    cls = PROBES[name]
    assert isinstance(cls.headline, tuple)
    for metric in cls.headline:
        assert metric in cls.units, f"{name}: headline {metric!r} is not one of its metrics"
        assert metric.startswith("mean_") or metric in ("sink_head_rate", "token0_massive_frac")


def test_ranked_probes_have_a_headline():
    ranked = [n for n in PROBES if n != "attention_pattern"]
    assert all(PROBES[n].headline for n in ranked)
    assert PROBES["head_types"].headline[0] == "mean_induction_mul"
    assert PROBES["attention_entropy"].headline[0] == "mean_entropy_norm"
