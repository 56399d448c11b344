"""The Atlas page under AppTest on a fixture atlas: the landing page (the atlas of a real model
first), the role grid drawn from atlas.parquet (shaded by score, held heads outlined, the chosen
head marked, nothing faded by a selection), the top heads of a role, one head's evidence on its page
(scores and ranks equal to the atlas) and its stored pattern, the live pattern keeping the atlas
chosen, and two atlases of different models compared by relative depth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.app_fixture import TOP_INDUCTION, make_atlas, make_atlas_runs
from tests.test_app import MAIN, box, charts, no_errors, raw, texts
from workbench.heads import format_head, parse_head


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
    scores = {(int(y), int(x)): float(c[0]) for x, y, c in zip(induction["x"], induction["y"],
                                                                induction["customdata"])}
    expected = heads.set_index(["layer", "head"])["induction_score"].to_dict()
    assert scores == pytest.approx(expected)
    # shaded by the score on the role's own scale (rule "above", scores in [0, 1]: the score
    # itself), not by rank (issue 27 defect 7)
    assert [float(c) for c in induction["marker"]["color"]] == pytest.approx(
        [expected[int(y), int(x)] for x, y in zip(induction["x"], induction["y"])])
    # every panel has head ticks
    assert all(grid["layout"][a]["showticklabels"] for a in grid["layout"]
               if a.startswith("xaxis"))
    # a selection fades nothing (issue 27 defect 4)
    for trace in cells:
        assert trace["selected"]["marker"]["opacity"] == 1
        assert trace["unselected"]["marker"]["opacity"] == 1
    # the top-k table of the default role (induction) and the default head: its top head
    top = at.dataframe[0].value
    assert top.iloc[0]["head"] == format_head(TOP_INDUCTION)
    assert list(top["rank"]) == sorted(top["rank"])
    assert box(at, "Head").value == format_head(TOP_INDUCTION)
    assert chosen(grid) == {(TOP_INDUCTION[1], TOP_INDUCTION[0])}
    assert any("induction heads" in m.value for m in at.markdown)


def chosen(figure: dict) -> set[tuple[int, int]]:
    """(x, y) of the chosen-head outline on every panel."""
    return {(int(t["x"][0]), int(t["y"][0])) for t in figure["data"]
            if t.get("name") == "chosen head"}


def test_the_outline_follows_the_chosen_head(open_atlas):
    """A head chosen in the picker moves the outline (it stayed on the old head, issue 27
    defect 4) on every one of the four panels."""
    at = open_atlas()
    box(at, "Head").set_value(format_head((1, 2))).run()
    no_errors(at)
    grid = charts(at)[0]
    assert chosen(grid) == {(2, 1)}
    assert sum(t.get("name") == "chosen head" for t in grid["data"]) == 4


def test_a_real_model_atlas_opens_first(tmp_path, monkeypatch):
    """The newest atlas is a tiny random test model: the landing page and the sidebar still open
    the real model's atlas (issue 27 defect 6)."""
    runs = make_atlas_runs(tmp_path / "runs")
    make_atlas(runs, "atlas-tiny", model="tiny-llama", n_layers=2, n_heads=2, seed=3,
               created="2026-03-01T00:00:00+00:00")
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60).run()
    assert not at.exception
    assert at.session_state["run"] == "atlas-fixture"
    assert any(c.value == "atlas-fixture" for c in at.code)
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.query_params["run"] = "atlas-tiny"
    at.run()
    assert at.session_state["run"] == "atlas-tiny"  # the one named in ?run= wins
    assert any(c.value == "atlas-tiny" for c in at.code)


def test_head_evidence_and_pattern(open_atlas, atlas_runs):
    at = open_atlas()
    at.query_params["head"] = "L1H2"
    at.switch_page("views/head.py").run()
    assert not at.exception and not at.error
    heads = pd.read_parquet(atlas_runs / "atlas-fixture" / "atlas.parquet")
    row = heads[(heads["layer"] == 1) & (heads["head"] == 2)].iloc[0]
    evidence = at.dataframe[0].value.set_index("role")
    assert float(evidence.loc["sink head", "score"]) == pytest.approx(row["sink_score"],
                                                                      abs=5e-5)
    assert evidence.loc["sink head", "rank"] == f"{row['sink_rank']} of {len(heads)}"
    assert (evidence.loc["induction head", "held"] == "yes") == bool(row["induction"])
    pattern = next(c for c in charts(at) if c["layout"]["yaxis"]["title"]["text"] ==
                   "query (position:token)")
    z = np.array(pattern["data"][0]["z"], dtype=float)
    stored = raw(atlas_runs, "probe_a").query(
        "metric == 'attn' and layer == 1 and head == 2 and prompt_id == 'p0'")
    assert len(stored)
    for rec in stored.itertuples():
        assert z[rec.query_pos, rec.key_pos] == pytest.approx(rec.value, abs=1e-12)
    assert any("part run fixture" in c.replace("\\", "") for c in texts(at, "caption"))


def test_two_atlases_compared_by_relative_depth(open_atlas):
    at = open_atlas(run="atlas-fixture", compare="atlas-deeper")
    assert not at.exception and not at.error
    warnings = " ".join(w.value for w in at.warning).replace("\\", "")
    assert "head indices are not comparable" in warnings and "relative depth" in warnings
    table = at.dataframe[-1].value
    assert set(table["depth"]) == {"early", "middle", "late"}
    assert set(table["role"]) == {"sink", "previous_token", "induction", "low_entropy"}


def test_head_without_stored_patterns_opens_the_live_pattern(open_atlas):
    """An atlas whose part runs store no patterns offers the head's live pattern; the Live
    pattern page opens on that head with the sidebar still on the atlas (it switched to the
    newest run, issue 27 defect 5)."""
    at = open_atlas(run="atlas-deeper")
    at.switch_page("views/head.py").run()
    assert not at.exception
    head = at.query_params["head"]
    assert any("Stored example patterns: not in this atlas" in c for c in texts(at, "caption"))
    at.button(key="head-live").click().run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Live pattern"]
    assert (at.session_state["pattern-layer"], at.session_state["pattern-head"]) == \
        parse_head(head)
    assert at.session_state["run"] == "atlas-deeper"


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
at.switch_page("views/head.py").run()
assert not at.exception and at.title[0].value.startswith("Head L"), at.exception
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
