"""Issue 27's defects of the Heads and Circuits pages under AppTest: a heatmap answers clicks (an
invisible marker per cell carries its hover and its click), ``?head=`` chooses the head and the
chart outlines it, a metric with one value per head opens on a tab that has something to show and
its hover has no "prompts: 0", the toolbar has room above the plot, and the DLA picker offers only
variants that have heads."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app.clicks import OVERLAY_NAME
from tests.figure_fixture import N_HEADS, N_LAYERS, make_run
from tests.test_app import MAIN, box, charts, no_errors
from workbench.records import concat, conform, records


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    runs = tmp_path_factory.mktemp("clicks") / "runs"
    make_run(runs, "fixture")
    means = make_run(runs, "means")  # a table of per-head means only (no prompt ids)
    layer, head = np.divmod(np.arange(N_LAYERS * N_HEADS), N_HEADS)
    table = conform(concat([records("mean_score", np.linspace(0, 1, layer.size), layer=layer,
                                    head=head)]), run_id="means", probe="probe_a")
    means.write_table("probe_a", table)
    dla = make_run(runs, "dla")
    parts = [records("dla", np.arange(layer.size, dtype=float), layer=layer, head=head,
                     segment="ioi", condition="head", prompt_id="p0")]
    parts += [records("dla", 0.5, segment="ioi", condition=c, prompt_id="p0")
              for c in ("attn_bias", "constant", "embed")]
    dla.write_table("direct_logit_attribution",
                    conform(concat(parts), run_id="dla", probe="direct_logit_attribution"))
    return runs


def page(runs, monkeypatch, path: str, **query) -> AppTest:
    monkeypatch.setenv("WORKBENCH_RUNS_DIR", str(runs))
    at = AppTest.from_file(MAIN, default_timeout=60)
    for key, value in query.items():
        at.query_params[key] = value
    at.run()
    return at.switch_page(path).run()


def test_heatmap_cells_are_clickable_points(runs, monkeypatch):
    at = page(runs, monkeypatch, "views/heads.py", run="fixture")
    box(at, "Metric").set_value("score").run()
    no_errors(at)
    fig = charts(at)[0]
    heatmap = next(t for t in fig["data"] if t["type"] == "heatmap")
    overlay = next(t for t in fig["data"] if t.get("name") == OVERLAY_NAME)
    z = np.array(heatmap["z"], dtype=float)
    cells = {(int(x), int(y)): float(c[0]) for x, y, c in zip(overlay["x"], overlay["y"],
                                                               overlay["customdata"])}
    assert cells == {(x, y): pytest.approx(z[y, x]) for y in range(z.shape[0])
                     for x in range(z.shape[1]) if np.isfinite(z[y, x])}
    assert len(cells) == N_LAYERS * N_HEADS
    assert heatmap["hoverinfo"] == "skip"  # the markers answer the hover, with its text
    assert overlay["hovertemplate"].startswith("L%{x}H%{y}<br>")
    assert "%{customdata[0]" in overlay["hovertemplate"]
    assert fig["layout"]["margin"]["t"] >= 28  # room for the toolbar above the colour bar
    # the markers do not widen the axes past the cells
    assert fig["layout"]["xaxis"]["range"] == [-0.5, N_LAYERS - 0.5]
    assert fig["layout"]["yaxis"]["range"] == [-0.5, N_HEADS - 0.5]


def test_head_in_the_address_is_chosen_and_outlined(runs, monkeypatch):
    at = page(runs, monkeypatch, "views/heads.py", run="fixture", head="L1H2")
    no_errors(at)
    assert (box(at, "Layer").value, box(at, "Head").value) == (1, 2)
    outline = [t for t in charts(at)[0]["data"] if t.get("name") == "chosen head"]
    assert [(t["x"][0], t["y"][0]) for t in outline] == [(1, 2)]


def test_per_head_means_open_on_a_tab_with_content(runs, monkeypatch):
    at = page(runs, monkeypatch, "views/heads.py", run="means")
    no_errors(at)
    assert [t.label for t in at.tabs][0] == "Every metric"
    heatmap = next(t for t in charts(at)[0]["data"] if t.get("name") == OVERLAY_NAME)
    assert "prompts" not in heatmap["hovertemplate"]


def test_dla_offers_only_variants_with_heads(runs, monkeypatch):
    at = page(runs, monkeypatch, "views/circuits.py", run="dla")
    effect = box(at, "Effect")
    effect.select_index(next(i for i, o in enumerate(effect.options)
                             if "direct_logit_attribution" in o))
    at.run()
    assert not at.exception
    assert not [e.value for e in at.error]
    variant = [b for b in at.selectbox if b.label == "Segment / condition"]
    assert not variant or all("attn_bias" not in str(o) for o in variant[0].options)
    effect = next(c for c in charts(at) if any(t["type"] == "heatmap" for t in c["data"]))
    z = np.array(next(t for t in effect["data"] if t["type"] == "heatmap")["z"], dtype=float)
    assert z[2, 1] == pytest.approx(1 * N_HEADS + 2)  # dla of L1H2 (z is head x layer)
