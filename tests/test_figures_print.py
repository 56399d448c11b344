"""Print-ready figures (issue 16): PDFs rendered by poppler match their PNG twins and the style's
page size, heatmap cells are vector shapes, degenerate figures are skipped with a reason, names
are shell-safe, colour-bar titles fit, pattern heads follow the headline metric."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from plotly.colors import sample_colorscale

from tests.figure_fixture import N_HEADS, N_LAYERS, fixture_table, make_run, tokens_table
from tests.test_figures import atlas_frame, faithfulness_rows, ioi_like_graph
from tests.test_figures_export import pdf_page_points, png_size
from workbench.figures import (FigureOptions, RunSource, atlas_grid, attention_pattern,
                               by_depth, circuit_graph, distribution, dose_response,
                               export_session, faithfulness_bars, head_heatmap,
                               heatmap_of_means, overlap_matrix, position_profile, render,
                               run_figures)
from workbench.figures.plot import safe_name
from workbench.figures.style import (CHAR_EM, FONT_PT, colorbar_title, pt, width_px)
from workbench.figures.vector import vector_cells

DPI = 150
INK_TOLERANCE_PX = 4  # at 150 dpi: font hinting differs between the PDF and PNG rasterisers


@pytest.fixture(scope="module")
def pdftoppm():
    found = shutil.which("pdftoppm")
    if not found:
        pytest.skip("pdftoppm (Debian's poppler-utils, installed by `make browser`) is missing")
    return found


def every_kind(tmp_path) -> list:
    """One plot of every exported kind, with long units and tokens to stress the margins."""
    records = fixture_table().to_pandas()
    tokens = tokens_table().to_pandas()
    long_unit = "fraction of the clean - corrupted LD gap; positive = the head carries the task"
    square = pd.DataFrame([[np.nan, 0.25], [0.25, np.nan]], index=["ioi", "induction"],
                          columns=["ioi", "induction"])
    return [
        head_heatmap(records, "score", unit=long_unit, n_layers=N_LAYERS, n_heads=N_HEADS,
                     table="t"),
        attention_pattern(records, tokens, "attn", "p1", 2, 1, unit="fraction of attention"),
        by_depth(records, "score", unit="logit"),
        position_profile(records, "sink", unit="fraction of attention", scale="log"),
        dose_response(records, "effect", unit="logit"),
        distribution(records, "score", unit="logit"),
        overlap_matrix(square, zmax=1.0, label="Jaccard index", unit="shared / union"),
        circuit_graph(ioi_like_graph(), unit=long_unit, n_heads=12),
        faithfulness_bars(faithfulness_rows()),
        atlas_grid(atlas_frame(), [{"name": "sink", "label": "sink head"},
                                   {"name": "induction", "label": "induction head"}]),
    ]


def ink_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(gray < 200)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def read_gray(path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"))


def test_pdfs_render_like_their_pngs_at_the_styled_page_size(browser, pdftoppm, tmp_path):
    """kaleido printed PDFs with 0.1 in page margins: the figure shrank by 5.7% and its bottom
    was cut inside a page of the right size ("layer" read "laver"); a page-edge check missed it.
    Every kind: poppler's rendering of the PDF at the PNG's pixel size has the PNG's ink box."""
    with export_session(browser):
        for width in ("single", "double"):
            for plot in every_kind(tmp_path):
                fig = plot.figure(width)
                pdf, png = render(fig, "pdf"), render(fig, "png", dpi=DPI)
                w_pt, h_pt = pdf_page_points(pdf)
                assert w_pt == pytest.approx(width_px(width) * 0.75, abs=0.5), plot.kind
                # Chromium rounds page sizes up to 0.01 in (0.72 pt)
                assert h_pt == pytest.approx(fig.layout.height * 0.75, abs=0.73), plot.kind
                w_px, h_px = png_size(png)
                (tmp_path / "f.pdf").write_bytes(pdf)
                (tmp_path / "f.png").write_bytes(png)
                subprocess.run([pdftoppm, "-png", "-singlefile", "-scale-to-x", str(w_px),
                                "-scale-to-y", str(h_px), str(tmp_path / "f.pdf"),
                                str(tmp_path / "from_pdf")], check=True)
                from_pdf, from_png = read_gray(tmp_path / "from_pdf.png"), read_gray(
                    tmp_path / "f.png")
                assert from_pdf.shape == from_png.shape
                got, want = ink_box(from_pdf), ink_box(from_png)
                assert np.abs(np.subtract(got, want)).max() <= INK_TOLERANCE_PX, (
                    plot.kind, width, got, want)
                # the same shape: ink widths and heights agree (not just shifted boxes)
                assert abs((got[2] - got[0]) - (want[2] - want[0])) <= INK_TOLERANCE_PX
                assert abs((got[3] - got[1]) - (want[3] - want[1])) <= INK_TOLERANCE_PX


def grid_30x9() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    layer, head = np.meshgrid(np.arange(30), np.arange(9), indexing="ij")
    return pd.DataFrame({"layer": layer.ravel(), "head": head.ravel(),
                         "value": rng.uniform(0, 1, 270), "n_rows": 5, "n_prompts": 5})


def test_heatmap_cells_are_vector_rectangles(browser, tmp_path):
    """A 30 x 9 grid is 270 filled rectangles in the SVG and the PDF has no image."""
    plot = heatmap_of_means(grid_30x9(), "score", unit="nats", n_layers=30, n_heads=9)
    with export_session(browser):
        svg, pdf = render(plot, "svg"), render(plot, "pdf")
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert not list(root.iter(f"{ns}image"))  # no bitmap
    cells = [p for g in root.iter(f"{ns}g") if "shapelayer" in (g.get("class") or "")
             for p in g.iter(f"{ns}path")]
    assert len(cells) == 270
    assert b"/Subtype /Image" not in pdf


def test_vector_cells_carry_the_sidecar_values():
    """Each rectangle's fill is the colour scale at the cell's value in the CSV sidecar data."""
    data = grid_30x9()
    plot = heatmap_of_means(data, "score", n_layers=30, n_heads=9)
    fig = plot.figure()
    shapes = vector_cells(fig).layout.shapes
    assert len(shapes) == 270
    lo, hi = fig.data[0].zmin, fig.data[0].zmax
    scale = [[float(a), c] for a, c in fig.data[0].colorscale]
    by_cell = {(round((s.x0 + s.x1) / 2), round((s.y0 + s.y1) / 2)): s.fillcolor for s in shapes}
    for row in plot.data.itertuples():
        want = sample_colorscale(scale, [(row.value - lo) / (hi - lo)])[0]
        assert by_cell[(row.layer, row.head)] == want
    # the colour bar survives as a marker trace with the same range
    [bar] = [t for t in vector_cells(fig).data if t.marker and t.marker.showscale]
    assert (bar.marker.cmin, bar.marker.cmax) == (lo, hi)


def test_long_units_wrap_to_the_colour_bar():
    """A unit longer than the bar is shortened to its first clause and wrapped, never clipped."""
    unit = "fraction of the clean - corrupted LD gap; positive = the head carries the task"
    title = colorbar_title("head score", unit, room_px=110)
    lines = title.split("<br>")
    assert 2 <= len(lines) <= 4 and "positive" not in title
    assert all(len(line) * pt(FONT_PT) * CHAR_EM <= 110 for line in lines)
    assert "".join(lines).replace(" ", "").startswith("headscore(fractionofthe")
    records = fixture_table().to_pandas()
    fig = head_heatmap(records, "score", unit=unit, n_layers=N_LAYERS, n_heads=N_HEADS).figure()
    room = fig.layout.height - 50
    for line in fig.data[0].colorbar.title.text.split("<br>"):
        assert len(line) * pt(FONT_PT) * CHAR_EM <= room


def test_names_are_short_and_shell_safe(tmp_path):
    source = RunSource(make_run(tmp_path / "runs"))
    names = [p.name for p in run_figures(source)] + [s["name"] for s in source.skipped]
    assert names and all(re.fullmatch(r"[A-Za-z0-9_.-]{1,72}", n) for n in names), names
    assert "probe_a.heatmap.effect.clean" in names and not any("=" in n for n in names)
    long = safe_name("table", "heatmap", "metric_" * 20, "condition=receiver=L9.6")
    assert len(long) == 72 and re.fullmatch(r"[A-Za-z0-9_.-]+", long)
    assert long == safe_name("table", "heatmap", "metric_" * 20, "condition=receiver=L9.6")
    assert safe_name("attention_pattern", "pattern", "pattern", "p 1") == \
        "attention_pattern.pattern.p-1"


def headline_run(tmp_path):
    """The fixture run plus a table ``probe_b`` whose headline metric ranks heads: L3H2 first."""
    from workbench.records import concat, conform, records

    run = make_run(tmp_path / "runs")
    heads = [(layer, head) for layer in range(N_LAYERS) for head in range(N_HEADS)]
    values = {h: 0.1 * i for i, h in enumerate(heads)}
    values[(1, 0)] = 99.0
    rank = concat([records("rank_me", v, layer=h[0], head=h[1]) for h, v in values.items()]
                  + [records("other", 1.0 + h[0], layer=h[0], head=h[1]) for h in heads])
    run.write_table("probe_b", conform(rank, run_id="fixture", probe="probe_b"))
    return run


def test_default_pattern_heads_are_the_headline_top(tmp_path):
    """The default pattern heads were L0H0-L0H3; now the top of the first headline metric."""
    source = RunSource(headline_run(tmp_path))
    options = FigureOptions(headline={"probe_b": ("rank_me",)})
    plots = run_figures(source, options)
    patterns = [p for p in plots if p.kind == "pattern"]
    assert [(p.params["layer"], p.params["head"]) for p in patterns] == [
        (1, 0), (3, 2), (3, 1), (3, 0)]
    assert patterns[0].params["heads_chosen_by"] == "top 4 by probe_b.rank_me"
    # a table with a headline draws its headline metrics only ("other" is not drawn)
    assert {p.params["metric"] for p in plots if p.params["table"] == "probe_b"} == {"rank_me"}
    chosen = run_figures(RunSource(source.run), FigureOptions(
        headline={"probe_b": ("rank_me",)}, heads=((2, 2),)))
    assert [p.name for p in chosen if p.kind == "pattern"] == ["probe_a.pattern.attn.p0.L2H2"]


def test_figures_command_lists_skipped_figures_with_reasons(browser, tmp_path, capsys):
    from tests.test_run import cli

    run = make_run(tmp_path / "runs", metrics=("attn", "score"))
    out = tmp_path / "figs"
    code, stdout, err = cli(capsys, "figures", "--run", str(run.path), "--out", str(out),
                            "--format", "svg", "--no-progress")
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    skipped = {s["name"]: s for s in index["skipped"]}
    assert set(skipped) == {"probe_a.heatmap.attn", "probe_a.depth.attn"}
    assert skipped["probe_a.heatmap.attn"]["reason"].startswith("constant values")
    assert not (out / "probe_a.heatmap.attn.svg").exists()
    entry = next(f for f in index["figures"] if f["name"] == "probe_a.heatmap.score")
    assert entry["description"] == "layer x head heatmap of score (logit); table probe_a"
    sidecar = json.loads((out / "probe_a.heatmap.score.json").read_text())
    assert sidecar["description"] == entry["description"]
    assert "2 not drawn (degenerate data, see index.json)" in stdout


def test_position_profile_without_key0_or_on_a_log_scale():
    records = fixture_table().to_pandas()
    plain = position_profile(records, "sink")
    no_key0 = position_profile(records, "sink", scale="no-key0")
    assert 0 in set(plain.data["key_pos"]) and 0 not in set(no_key0.data["key_pos"])
    pd.testing.assert_frame_equal(no_key0.data.reset_index(drop=True),
                                  plain.data[plain.data["key_pos"] != 0].reset_index(drop=True))
    assert no_key0.name.endswith(".no-key0")
    assert position_profile(records, "sink", scale="log").figure().layout.yaxis.type == "log"
    with pytest.raises(ValueError, match="profile scale 'cubic'"):
        position_profile(records, "sink", scale="cubic")


def test_large_grids_share_one_path_per_colour():
    """Above MAX_CELL_SHAPES cells, each 8-bit colour is one path of its cells' rectangles: every
    cell is still there, in its colour."""
    from plotly.colors import unlabel_rgb

    from workbench.figures.vector import MAX_CELL_SHAPES

    n = 64
    q, k = np.tril_indices(n)
    records = pd.DataFrame({"metric": "pattern", "prompt_id": "p", "layer": 0, "head": 0,
                            "query_pos": q, "key_pos": k, "segment": None, "condition": None,
                            "value": np.random.default_rng(0).random(len(q))})
    tokens = pd.DataFrame({"prompt_id": "p", "pos": np.arange(n),
                           "token": [f"t{i}" for i in range(n)]})
    fig = attention_pattern(records, tokens, "pattern", "p", 0, 0).figure()
    assert len(q) > MAX_CELL_SHAPES
    shapes = vector_cells(fig).layout.shapes
    assert all(s.type == "path" for s in shapes) and len(shapes) < len(q)
    cells = {}
    for s in shapes:
        for x0, y0, x1, y1 in re.findall(r"M([-\d.e]+),([-\d.e]+)H([-\d.e]+)V([-\d.e]+)H", s.path):
            cells[(round((float(x0) + float(x1)) / 2), round((float(y0) + float(y1)) / 2))] = \
                s.fillcolor
    assert len(cells) == len(q)
    trace = fig.data[0]
    scale = [[float(a), c] for a, c in trace.colorscale]
    for qp, kp, v in zip(q[::97], k[::97], records["value"].to_numpy()[::97]):
        want = sample_colorscale(scale, [(v - trace.zmin) / (trace.zmax - trace.zmin)])[0]
        rgb = "rgb({}, {}, {})".format(*(round(float(c)) for c in unlabel_rgb(want)[:3]))
        assert cells[(kp, qp)] == rgb
