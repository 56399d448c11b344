"""Figure export through kaleido + Chromium: valid PDF/SVG/PNG files at print size, identical bytes
when regenerated, the `workbench figures` command, and clear errors without a browser."""

from __future__ import annotations

import json
import re
import struct
import xml.etree.ElementTree as ET

import pytest

from tests.figure_fixture import make_run
from tests.test_run import cli
from workbench.figures import RunSource, export_session, find_browser, head_heatmap, render
from workbench.figures import export as export_module
from workbench.figures.export import BrowserNotFound
from workbench.heads import format_head


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def pdf_page_points(data: bytes) -> tuple[float, float]:
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type /Page(?!s)", data)) == 1  # one page
    box = re.search(rb"/MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)
    return float(box.group(1)), float(box.group(2))


def test_export_pdf_svg_png_valid_and_deterministic(browser, tmp_path):
    run = make_run(tmp_path / "runs")
    records = RunSource(run).records("probe_a", "score")
    plot = head_heatmap(records, "score", unit="logit", table="probe_a")
    fig = plot.figure("single")
    height = fig.layout.height
    with export_session(browser):
        files = {fmt: render(fig, fmt) for fmt in ("pdf", "svg", "png")}
        again = {fmt: render(plot, fmt, width="single") for fmt in ("pdf", "svg", "png")}
        double = render(plot, "svg", width="double")
    assert files == again  # regenerating gives the same bytes
    width_pt, height_pt = pdf_page_points(files["pdf"])
    assert width_pt == pytest.approx(3.5 * 72, abs=1) and height_pt == pytest.approx(
        height * 0.75, abs=1)
    svg = ET.fromstring(files["svg"])
    assert svg.tag.endswith("svg") and svg.get("width") == "336"
    texts = "".join(svg.itertext())
    assert "layer" in texts and "head" in texts and "(logit)" in texts
    assert png_size(files["png"]) == (1050, round(height * 300 / 96))  # 300 dpi at 3.5 in
    assert ET.fromstring(double).get("width") == "687"
    assert png_size(render(fig, "png", dpi=96, browser=browser)) == (336, height)  # one-shot


def test_app_keeps_one_browser_open(browser):
    """The app's download path: open the browser once, render any figure to bytes, close."""
    import plotly.graph_objects as go

    from workbench.figures import close_browser, open_browser

    open_browser(browser)
    try:
        open_browser(browser)  # idempotent
        with export_session():  # reuses the open browser
            screen = go.Figure(go.Scatter(x=[0, 1], y=[1, 0]))  # no size set: 700 x 500
            assert png_size(render(screen, "png", dpi=96)) == (700, 500)
        assert export_module._server["running"]
    finally:
        close_browser()
    assert not export_module._server["running"]


def test_figures_command_writes_every_figure_with_sidecars(browser, tmp_path, capsys):
    run = make_run(tmp_path / "runs", metrics=("score", "effect"))
    out = tmp_path / "figs"
    args = ["figures", "--run", str(run.path), "--out", str(out), "--format", "svg",
            "--no-progress"]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    index = json.loads((out / "index.json").read_text())
    names = [f["name"] for f in index["figures"]]
    assert names == ["probe_a.heatmap.effect.clean",
                     "probe_a.depth.effect.clean",
                     "probe_a.dose.effect", "probe_a.heatmap.score",
                     "probe_a.depth.score"]
    assert index["run"]["run_id"] == "fixture" and index["width"] == "single"
    for name in names:
        for suffix in (".svg", ".csv", ".json"):
            assert (out / f"{name}{suffix}").is_file()
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["name"] == name and sidecar["run"]["model"] == "synthetic"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli(capsys, *args)[0] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert f"wrote 5 figures (15 files) to {out}" in stdout


def test_default_output_is_the_runs_figures_folder(browser, tmp_path, capsys):
    run = make_run(tmp_path / "runs", metrics=("attn",))
    code, _, err = cli(capsys, "figures", "--run", str(run.path), "--format", "png",
                       "--tables", "probe_a", "--heads", "3.1", "--prompt", "p2", "--dpi", "50",
                       "--width", "double", "--no-progress")
    assert code == 0, err
    written = sorted(p.name for p in (run.path / "figures").glob("*.png"))
    assert written == ["probe_a.pattern.attn.p2.L3H1.png", "probe_a.profile.attn.png"]
    index = json.loads((run.path / "figures" / "index.json").read_text())
    assert [s["name"] for s in index["skipped"]] == ["probe_a.heatmap.attn", "probe_a.depth.attn"]
    pattern = run.path / "figures" / "probe_a.pattern.attn.p2.L3H1.png"
    assert abs(png_size(pattern.read_bytes())[0] - 687 * 50 / 96) < 1


def test_missing_browser_is_named(tmp_path, capsys, monkeypatch):
    run = make_run(tmp_path / "runs")
    monkeypatch.setenv("WORKBENCH_BROWSER", str(tmp_path / "no-chromium"))
    with pytest.raises(BrowserNotFound, match="apt-get install -y chromium"):
        find_browser()
    code, out, err = cli(capsys, "figures", "--run", str(run.path), "--no-progress")
    assert code == 1 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("error: WORKBENCH_BROWSER=") and "no-chromium" in line
    assert "install Debian's chromium" in line
    assert not (run.path / "figures").exists()
    # nothing configured and nothing installed: the default lookup names what it looked for
    monkeypatch.delenv("WORKBENCH_BROWSER")
    monkeypatch.delenv("BROWSER_PATH", raising=False)
    monkeypatch.setattr(export_module, "DEFAULT_BROWSER", tmp_path / "usr-bin-chromium")
    monkeypatch.setenv("PATH", str(tmp_path))
    from choreographer.browsers.chromium import Chromium

    monkeypatch.setattr(Chromium, "find_browser", classmethod(lambda cls, **kw: None))
    with pytest.raises(BrowserNotFound, match="none was found .*usr-bin-chromium.*apt-get"):
        find_browser()


@pytest.mark.parametrize("extra, message", [
    (["--format", "eps"], "--format 'eps': expected a comma-separated subset of pdf, svg, png"),
    (["--width", "triple"], "--width 'triple': expected one of single, double"),
    (["--dpi", "0"], "--dpi 0: expected an integer in [10, 2400]"),
    (["--tables", "nope"], "--tables: run 'fixture' has no table(s) ['nope']; it has probe_a"),
    (["--prompt", "zz"], "--prompt: run 'fixture' has no prompt(s) ['zz']"),
    (["--heads", "9.0"],
     f"--heads: head {format_head((9, 0))} is outside the model's 4 layers x 3 heads"),
    (["--heads", "x"], "head 'x' is not of the form L9H6"),
])
def test_bad_options_fail_before_writing(tmp_path, capsys, extra, message):
    run = make_run(tmp_path / "runs")
    code, _, err = cli(capsys, "figures", "--run", str(run.path), "--no-progress", *extra)
    assert code == 2 and message in err, err
    assert not (run.path / "figures").exists()
    code, _, err = cli(capsys, "figures", "--run", str(tmp_path), "--no-progress")
    assert code == 2 and "is not a run directory" in err
