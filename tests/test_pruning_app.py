"""The Head pruning page and the pruning figures on tiny-model `workbench heads` runs: the drawn
curves and frontier equal the stored records (read with pandas)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT, write_jsonl
from tests.test_app import charts, no_errors
from workbench_cli.cli import main

TEXTS = ["Then, Mary and John went to the store. John gave a drink to",
         "When Alice and Bob got a ring at the garden, Bob decided to give it to",
         "The quick brown fox jumps over the lazy dog.",
         "Many heads put most of their attention on the first token."]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("pruning-app")
    prompts = write_jsonl(base / "p.jsonl", [{"id": f"p{i}", "text": t}
                                             for i, t in enumerate(TEXTS)])
    common = ["--model", "tiny-llama", "--prompts", str(prompts), "--runs-dir",
              str(base / "runs"), "--no-progress"]
    main(["heads", "prune", "--run-id", "prune", "--seeds", "2", *common])
    main(["heads", "learn-gates", "--run-id", "gates", "--lambda", "0", "--lambda", "1",
          "--steps", "5", "--batch-size", "2", *common])
    return base / "runs"


def _page(runs, monkeypatch, run_id):
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=60)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("views/heads_pruning.py").run()
    return at


def test_page_draws_the_stored_pruning_curve(runs, monkeypatch):
    at = _page(runs, monkeypatch, "prune")
    no_errors(at)
    stored = pq.read_table(runs / "prune" / "pruning_curve.parquet").to_pandas()
    means = stored[stored.metric == "mean_lm_loss"]
    curve = next(c for c in charts(at) if any(t.get("name") == "importance order"
                                               for t in c["data"]))
    line = next(t for t in curve["data"] if t["name"] == "importance order")
    want = means[means.segment == "importance"].assign(
        x=lambda d: d.condition.str.removeprefix("pruned=").astype(float)).sort_values("x")
    assert line["x"] == pytest.approx(want.x.tolist())
    assert line["y"] == pytest.approx(want.value.tolist())
    band = next(t for t in curve["data"] if t.get("fill") == "toself")
    rand = means[means.segment.str.startswith("random-")]
    assert max(band["y"]) == pytest.approx(rand.value.max())
    shown = at.dataframe[0].value
    assert set(shown.order) >= {"importance", "random"}


def test_page_draws_the_frontier_and_gates(runs, monkeypatch):
    at = _page(runs, monkeypatch, "gates")
    no_errors(at)
    stored = pq.read_table(runs / "gates" / "learned_gates.parquet").to_pandas()
    frontier = next(c for c in charts(at) if any(t.get("name") == "learned gates (held-out)"
                                                 for t in c["data"]))
    trace = next(t for t in frontier["data"] if t["name"] == "learned gates (held-out)")
    summary = stored[stored.layer.isna() & stored.prompt_id.isna()]
    wide = summary.pivot_table(index="condition", columns="metric", values="value")
    wide = wide.drop(index="baseline").sort_values("open_gates")
    assert trace["x"] == pytest.approx(wide.open_gates.tolist())
    assert trace["y"] == pytest.approx(wide.mean_lm_loss.tolist())
    assert len(charts(at)) == 2  # frontier and the chosen lambda's gate map

