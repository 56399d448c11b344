"""The head page (``/head?run=<atlas>&head=L2H1``) under AppTest: every part of the atlas
contract read back cell by cell from a hand-made atlas (tests/head_fixture.py), "not in this
atlas" for an atlas without them, heads typed in any style, bad heads reported."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from app import head_data
from app.atlas_data import load_atlas
from app.data import RunsRoot
from tests.head_fixture import (CAUSAL, CIRCUIT, COMPOSITION, DLA, HEAD, HEAD_EFFECT, OV_COPYING,
                                PATTERN_TOKENS, make_evidence_atlas)
from tests.test_app import MAIN, texts
from workbench.heads import format_head

NAME = format_head(HEAD)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from tests.app_fixture import make_atlas

    runs = tmp_path_factory.mktemp("head") / "runs"
    make_evidence_atlas(runs)
    make_atlas(runs, "atlas-bare", created="2026-01-20T00:00:00+00:00")
    return runs


def head_page(runs, monkeypatch, **query) -> AppTest:
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60)
    at.run()
    for key, value in query.items():
        at.query_params[key] = value
    return at.switch_page("views/head.py").run()


def frames(at: AppTest) -> list[pd.DataFrame]:
    return [d.value for d in at.dataframe]


def test_readers_return_the_contract_values(runs):
    root = RunsRoot(runs)
    atlas = load_atlas(root, "atlas-evidence")
    roles = head_data.roles(atlas, *HEAD).set_index("role")
    test = CAUSAL["induction"]
    assert roles.loc["induction head", "role's causal test"] == (
        f"{test['metric']} 1.25 {test['unit']} [0.9, 1.6] ablating the 3 held heads vs 0.1 ± "
        f"0.05 for random heads (20 draws), p = 0.0476")
    assert roles.loc["induction head", "this head ablated"] == f"{HEAD_EFFECT:.3g}"
    assert roles.loc["induction head", "rank"] == "1 of 12"
    assert roles.loc["low-entropy head", "role's causal test"].startswith("descriptive role")
    assert roles.loc["sink head", "role's causal test"] == "no held heads"
    assert roles.loc["previous-token head", "role's causal test"] == head_data.NOT_IN_ATLAS
    assert head_data.ioi_class(atlas, *HEAD)[0] == "name_mover"
    assert head_data.ioi_class(atlas, 0, 0) == ("none", "the head meets no IOI class's criterion")
    circuits = head_data.circuits(atlas, *HEAD).set_index("task")
    assert circuits.loc["ioi", "member"] == "yes" and circuits.loc["ioi", "size"] == CIRCUIT["size"]
    assert circuits.loc["ioi", "faithfulness"] == "0.83 [0.75, 0.9]"
    assert head_data.circuits(atlas, 0, 0).loc[0, "member"] == "no"
    found = head_data.composition(root, atlas, *HEAD)
    senders = {(r.metric, r.sender): r.value for r in found["senders"].itertuples()}
    assert senders == {(m, format_head(s)): v for s, r, m, v in COMPOSITION if r == HEAD}
    receivers = {(r.metric, r.receiver): r.value for r in found["receivers"].itertuples()}
    assert receivers == {(m, format_head(r)): v for s, r, m, v in COMPOSITION if s == HEAD}
    assert found["own"].set_index("metric")["value"].to_dict() == {"ov_copying": OV_COPYING}
    dla = head_data.dla(root, atlas, *HEAD).set_index("task")
    for task, (mean, lo, hi) in DLA.items():
        assert dla.loc[task, ["dla_mean", "dla_lo", "dla_hi"]].tolist() == pytest.approx(
            [mean, lo, hi])


def test_an_atlas_without_the_parts_says_so(runs):
    root = RunsRoot(runs)
    atlas = load_atlas(root, "atlas-bare")
    assert head_data.ioi_class(atlas, 0, 0) is None
    assert head_data.circuits(atlas, 0, 0) is None
    assert head_data.composition(root, atlas, 0, 0) is None
    assert head_data.dla(root, atlas, 0, 0) is None
    assert set(head_data.roles(atlas, 0, 0)["role's causal test"]) == {head_data.NOT_IN_ATLAS}
    with pytest.raises(Exception, match=f"no head {format_head((9, 0))}"):
        head_data.roles(atlas, 9, 0)


def test_head_page_shows_the_evidence(runs, monkeypatch):
    at = head_page(runs, monkeypatch, run="atlas-evidence", head=NAME)
    assert not at.exception, at.exception
    assert texts(at, "title") == [f"Head {NAME}"] and not at.error
    roles = frames(at)[0].set_index("role")
    assert roles.loc["induction head", "held"] == "yes"
    assert roles.loc["induction head", "this head ablated"] == f"{HEAD_EFFECT:.3g}"
    assert any("name_mover" in c.replace("\\", "") for c in texts(at, "caption"))
    senders = frames(at)[2]
    assert set(senders["sender"]) == {format_head(s) for s, r, *_ in COMPOSITION if r == HEAD}
    dla = frames(at)[-1].set_index("task")
    assert dla.loc["ioi", "dla_mean"] == pytest.approx(DLA["ioi"][0])
    # the stored example pattern comes from the atlas's own head_patterns table
    assert any("Stored by the atlas" in c for c in texts(at, "caption"))
    assert at.query_params["head"] == NAME and at.query_params["run"] == "atlas-evidence"


def test_head_page_of_an_atlas_without_the_parts(runs, monkeypatch):
    at = head_page(runs, monkeypatch, run="atlas-bare", head="1.2")  # the older style parses
    assert not at.exception, at.exception
    assert texts(at, "title") == [f"Head {format_head((1, 2))}"]
    captions = " ".join(texts(at, "caption"))
    for part in ("IOI class", "Faithful circuits", "Composition scores",
                 "Direct logit attribution"):
        assert f"{part}" in captions
    assert captions.count(head_data.NOT_IN_ATLAS) >= 4


@pytest.mark.parametrize("head, message", [("L9H0", "no head"), ("nine", "not of the form")])
def test_bad_heads_in_the_address_are_reported(runs, monkeypatch, head, message):
    at = head_page(runs, monkeypatch, run="atlas-evidence", head=head)
    assert not at.exception
    assert any(message in e.replace("\\", "") for e in texts(at, "error"))
    assert texts(at, "title") == [f"Head {NAME}"]  # the atlas's default head instead


def test_typed_head_opens_its_page(runs, monkeypatch):
    at = head_page(runs, monkeypatch, run="atlas-evidence", head=NAME)
    at.text_input(key="head-goto").set_value("3:1").run()
    assert not at.exception, at.exception
    assert texts(at, "title") == [f"Head {format_head((3, 1))}"]
    at.text_input(key="head-goto").set_value("L3").run()
    assert any("not of the form" in e for e in texts(at, "error"))


def test_stored_pattern_matrix_for_the_token_view():
    from app.patterns import pattern_matrix

    p = np.array([[1.0, 0], [0.25, 0.75]])
    rows = pd.DataFrame({"query_pos": [0, 1, 1], "key_pos": [0, 0, 1], "value": [1, 0.25, 0.75]})
    tokens = pd.DataFrame({"prompt_id": "x", "pos": [1, 0], "token": ["b", "a"]})
    matrix, labels = pattern_matrix(rows, tokens, "x")
    assert labels == ["a", "b"] and np.array_equal(matrix, p)
    assert pattern_matrix(rows.assign(value=[2.0, 0, 1]), tokens, "x") == (None, [])
    assert len(PATTERN_TOKENS) == 4


def test_circuit_roles_rank_by_magnitude(tmp_path):
    """A circuit member with a large negative score (a negative name mover) ranks near the top
    by |score|, not "263 of 270" by signed score (issue 27 item 9)."""
    import json

    from tests.app_fixture import make_atlas

    folder = make_atlas(tmp_path, "atlas-circuit")
    heads = pd.read_parquet(folder / "atlas.parquet")
    scores = np.linspace(-0.2, 0.1, len(heads))
    scores[0] = -0.9  # L0H0: the strongest effect, negative
    heads["ioi_circuit_score"] = scores
    heads["ioi_circuit_rank"] = pd.Series(-scores).rank(method="first").astype("Int64")
    heads["ioi_circuit"] = np.arange(len(heads)) == 0
    heads.to_parquet(folder / "atlas.parquet", index=False)
    doc = json.loads((folder / "atlas.json").read_text())
    doc["roles"].append({"name": "ioi_circuit", "label": "IOI circuit head", "rule": "member",
                         "threshold": 20, "source": "circuits", "table": "head_effects",
                         "metric": "score"})
    (folder / "atlas.json").write_text(json.dumps(doc))
    atlas = load_atlas(RunsRoot(tmp_path), "atlas-circuit")
    row = head_data.roles(atlas, 0, 0).set_index("role").loc["IOI circuit head"]
    assert row["rank"] == f"1 of {len(heads)} by |score|" and row["held"] == "yes"
    assert row["rule"] == "in top-20 circuit"  # read as the CLI's atlas table reads it, not "member 20"
    assert int(heads.loc[0, "ioi_circuit_rank"]) == len(heads)  # its signed rank: the last
