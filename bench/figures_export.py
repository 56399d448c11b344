"""Benchmark: `workbench figures` stages on one run.

    python -m bench.figures_export --run runs/smollm2-natural [--repeats 5] [--json out.json]

Times reading and shaping every figure of the run (``run_figures``), the first render (starting the
headless browser and plotly.js), and rendering each figure to PDF, SVG and PNG (300 dpi, single column) in one browser session
(median per format over ``repeats`` rounds of all figures).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from workbench.figures import RunSource, export_session, find_browser, render, run_figures
from workbench.figures.export import FORMATS
from workbench.store import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    start = time.perf_counter()
    plots = run_figures(RunSource(RunDir.open(args.run)))
    result = {"figures": len(plots), "shape_s": time.perf_counter() - start}
    figures = [p.figure("single") for p in plots]
    browser = find_browser()
    start = time.perf_counter()
    with export_session(browser):
        render(figures[0], "svg")  # the browser and plotly.js start on the first render
        result["first_render_s"] = time.perf_counter() - start
        times: dict[str, list[float]] = {fmt: [] for fmt in FORMATS}
        for _ in range(args.repeats):
            for fmt in FORMATS:
                for fig in figures:
                    t = time.perf_counter()
                    render(fig, fmt)
                    times[fmt].append(time.perf_counter() - t)
    for fmt, values in times.items():
        result[f"render_{fmt}_median_s"] = statistics.median(values)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()},
                     indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
