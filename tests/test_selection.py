"""VHR head selection and top-k heads on hand-built head-divergence summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from workbench.errors import InputError
from workbench.records import records
from workbench.selection import head_summary, select_per_layer, top_heads, vhr_heads


def summary_table(vhd: list[list[float]], norm: list[list[float]], condition="removal=drop"):
    """A head_divergence-like table: mean_vhd and mean_norm_without per (layer, head)."""
    vhd_a, norm_a = np.asarray(vhd, float), np.asarray(norm, float)
    layer, head = np.meshgrid(np.arange(vhd_a.shape[0]), np.arange(vhd_a.shape[1]), indexing="ij")
    cols = dict(layer=layer.ravel(), head=head.ravel(), segment="passage", condition=condition)
    parts = [records("mean_vhd", vhd_a.ravel(), **cols),
             records("mean_norm_without", norm_a.ravel(), **cols),
             # per-prompt rows must be ignored
             records("vhd", np.full(vhd_a.size, 99.0), prompt_id="p0", **cols)]
    return pd.concat([p.to_pandas() for p in parts], ignore_index=True)


# Layer 0: head 3 has a huge VHD and a huge norm (outlier, dropped); median of [1, 2, 3, 10] is
#          2.5, so of the rest only head 2 (VHD 3) is kept.
# Layer 1: head 0 has a huge VHD but an ordinary norm (not an outlier: kept); median 2.5 -> heads
#          0 (VHD 10) and 3 (VHD 4).
# Layer 2: head 1 has a huge norm but an ordinary VHD (not an outlier); median 2 -> heads 1, 3.
VHD = [[1, 2, 3, 10], [10, 1, 2, 4], [1, 3, 1, 5]]
NORM = [[1, 1, 1, 10], [1, 1, 1, 1], [1, 50, 1, 1]]


def test_select_per_layer_hand_case():
    keep = select_per_layer(np.asarray(VHD, float), np.asarray(NORM, float))
    assert keep.tolist() == [[False, False, True, False], [True, False, False, True],
                             [False, True, False, True]]


def test_vhr_heads_and_last_layers():
    table = summary_table(VHD, NORM)
    assert vhr_heads(table) == [(0, 2), (1, 0), (1, 3), (2, 1), (2, 3)]
    assert vhr_heads(table, last_n_layers=2) == [(1, 0), (1, 3), (2, 1), (2, 3)]
    assert vhr_heads(table, last_n_layers=1) == [(2, 1), (2, 3)]
    with pytest.raises(InputError, match="last_n_layers"):
        vhr_heads(table, last_n_layers=0)


def test_outlier_rule_uses_population_std():
    # [0, 0, 4, 4.65]: mean 2.1625; population std 2.175 -> threshold 4.34 (4.65 is above: an
    # outlier, dropped); the sample std 2.511 -> 4.67 would keep it. Median 2 -> head 2 stays.
    values = np.asarray([[0, 0, 4, 4.65]])
    assert select_per_layer(values, values).tolist() == [[False, False, True, False]]


def test_summary_over_chosen_prompts():
    """Per-prompt records: each prompt's mean over queries, then the mean over the prompts."""
    rows = [records("vhd", [1.0, 3.0], layer=0, head=0, prompt_id="p0", query_pos=[4, 5]),
            records("vhd", [6.0], layer=0, head=0, prompt_id="p1", query_pos=5),
            records("vhd", [100.0], layer=0, head=0, prompt_id="p2", query_pos=5),
            records("vhd", [0.5, 0.5, 0.5], layer=0, head=1, prompt_id=["p0", "p1", "p2"])]
    table = pd.concat([r.to_pandas() for r in rows], ignore_index=True)
    summary = head_summary(table, "vhd", prompt_ids=["p0", "p1"])
    assert summary.loc[0, 0] == 4.0 and summary.loc[0, 1] == 0.5  # (2 + 6) / 2
    assert top_heads(table, 1, prompt_ids=["p0", "p1"]) == [((0, 0), 4.0)]
    with pytest.raises(InputError, match="no 'vhd' records"):
        head_summary(table, "vhd", prompt_ids=["nope"])


def test_top_heads_and_mixed_records():
    table = summary_table(VHD, NORM)
    assert top_heads(table, 3) == [((0, 3), 10.0), ((1, 0), 10.0), ((2, 3), 5.0)]
    assert head_summary(table, "norm_without").loc[2, 1] == 50.0
    mixed = pd.concat([table, summary_table(VHD, NORM, condition="removal=filler")])
    with pytest.raises(InputError, match="mix several conditions"):
        vhr_heads(mixed)
    with pytest.raises(InputError, match="mean_vhd_rel"):
        vhr_heads(table, metric="vhd_rel")
