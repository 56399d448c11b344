"""The Atlas page under AppTest on a fixture atlas: the landing page, the role grid drawn from
atlas.parquet, the top heads of a role, one head's evidence (scores and ranks equal to the atlas)
and its stored pattern, and two atlases of different models compared by relative depth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixture import TOP_INDUCTION, make_atlas_runs
from tests.test_app import MAIN, box, charts, no_errors, raw, texts


@pytest.fixture(scope="module")
def atlas_runs(tmp_path_factory):
    return make_atlas_runs(tmp_path_factory.mktemp("atlas") / "runs")


@pytest.fixture
def open_atlas(atlas_runs, monkeypatch):
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(atlas_runs))

    def start(**query) -> AppTest:
        at = AppTest.from_file(MAIN, default_timeout=60)
        for key, value in query.items():
            at.query_params[key] = value
        return at.run()
    return start


def test_atlas_is_the_landing_page(open_atlas, atlas_runs):
    at = open_atlas()
    no_errors(at)
    assert [t.value for t in at.title] == ["Atlas"]
    heads = pd.read_parquet(atlas_runs / "atlas-fixture" / "atlas.parquet")
    grid = charts(at)[0]
    cells = [t for t in grid["data"] if t.get("customdata") is not None]
    assert len(cells) == 4  # one panel per role
    induction = cells[2]
    scores = {(int(y), int(x)): c[0] for x, y, c in zip(induction["x"], induction["y"],
                                                         induction["customdata"])}
    expected = heads.set_index(["layer", "head"])["induction_score"].to_dict()
    assert scores == pytest.approx(expected)
    # the top-k table of the default role (induction) and the default head: its top head
    top = at.dataframe[0].value
    assert top.iloc[0]["head"] == "L%dH%d" % TOP_INDUCTION
    assert list(top["rank"]) == sorted(top["rank"])
    assert box(at, "Head").value == "L%dH%d" % TOP_INDUCTION
    assert any("induction heads" in m.value for m in at.markdown)


def test_head_evidence_and_pattern(open_atlas, atlas_runs):
    at = open_atlas()
    box(at, "Head").set_value("L1H2").run()
    no_errors(at)
    heads = pd.read_parquet(atlas_runs / "atlas-fixture" / "atlas.parquet")
    row = heads[(heads["layer"] == 1) & (heads["head"] == 2)].iloc[0]
    evidence = at.dataframe[1].value.set_index("role")
    assert evidence.loc["sink head", "score"] == pytest.approx(round(row["sink_score"], 4))
    assert evidence.loc["sink head", "rank"] == f"{row['sink_rank']} of {len(heads)}"
    assert bool(evidence.loc["induction head", "held"]) == bool(row["induction"])
    pattern = next(c for c in charts(at) if c["layout"]["yaxis"]["title"]["text"] ==
                   "query (position:token)")
    z = np.array(pattern["data"][0]["z"], dtype=float)
    stored = raw(atlas_runs, "probe_a").query(
        "metric == 'attn' and layer == 1 and head == 2 and prompt_id == 'p0'")
    assert len(stored)
    for rec in stored.itertuples():
        assert z[rec.query_pos, rec.key_pos] == pytest.approx(rec.value, abs=1e-12)
    assert any("part run fixture" in c for c in texts(at, "caption"))


def test_two_atlases_compared_by_relative_depth(open_atlas):
    at = open_atlas(run="atlas-fixture", compare="atlas-deeper")
    assert not at.exception and not at.error
    warnings = " ".join(w.value for w in at.warning).replace("\\", "")
    assert "head indices are not comparable" in warnings and "relative depth" in warnings
    table = at.dataframe[-1].value
    assert set(table["depth"]) == {"early", "middle", "late"}
    assert set(table["role"]) == {"sink", "previous_token", "induction", "low_entropy"}


def test_head_without_stored_patterns_opens_the_live_pattern(open_atlas):
    """An atlas whose part runs store no patterns offers the head's live pattern instead."""
    at = open_atlas(run="atlas-deeper")
    assert not at.exception
    head = box(at, "Head").value
    assert any("computed live" in i.value for i in at.info)
    at.button(key="atlas-live").click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Live pattern"]
    layer, h = (int(v) for v in head.removeprefix("L").split("H"))
    assert (at.session_state["pattern-layer"], at.session_state["pattern-head"]) == (layer, h)


def test_the_atlas_page_does_not_import_torch(atlas_runs):
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = f"""
import os, sys
os.environ["WORKBENCH_RUNS_DIR"] = {str(atlas_runs)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({MAIN!r}, default_timeout=60)
at.query_params["compare"] = "atlas-deeper"
at.run()
assert not at.exception and at.title[0].value == "Atlas", at.exception
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
