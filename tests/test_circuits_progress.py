"""Progress bars of ``workbench circuits``: totals (percentage, time left), clocks that stop when a
phase ends, and a bar for the ablation-means and faithfulness phase."""

from __future__ import annotations

import io

from rich.console import Console

from circuits.discovery import Selection
from circuits.methods import DiscoveryOptions
from circuits.progress import CircuitsProgress, plan
from circuits.options import CircuitsOptions
from circuits.run import execute_circuits
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_file


def test_a_finished_phase_stops_its_clock_and_reads_100_percent():
    clock = [0.0]
    console = Console(file=io.StringIO(), width=150, force_terminal=False)
    with CircuitsProgress(console=console, get_time=lambda: clock[0]) as bars:
        with bars.phase("first", "heads x batches") as phase:
            plan(phase, 10)
            clock[0] += 3
            phase(4)
            assert bars.bar.tasks[0].percentage == 40.0
            plan(phase, 2)
            phase(8)
            clock[0] += 2
        clock[0] += 100  # later phases take long: the first bar must not keep counting
        with bars.phase("second", "batches") as phase:
            plan(phase, 4)
            phase(1)
            assert bars.bar.tasks[1].percentage == 25.0
    out = console.file.getvalue()
    first, second = out.splitlines()
    assert "12/12" in first and "100%" in first and "0:00:05" in first
    assert "1/1" in second and "100%" in second


def test_every_phase_of_a_run_has_a_total_and_ends_at_100_percent(tiny_llama, tmp_path):
    task = load_task(str(tiny_ioi_file(tmp_path, n=5)), tiny_llama)
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    options = CircuitsOptions(["attribution", "path"], Selection("top_k", 2),
                              DiscoveryOptions(batch_size=2, spot_check=3), n_random=1,
                              runs_dir=tmp_path / "runs", console=console)
    execute_circuits(tiny_llama, [task], options)
    lines = console.file.getvalue().splitlines()
    names = [line.split(" ")[0] + " " + line.split(" ")[1] for line in lines]
    assert names == ["attribution tiny_ioi", "path tiny_ioi", "faithfulness tiny_ioi"]
    n_batches = 3
    # attribution: 16 heads per batch, then the spot check's 3 heads per batch
    assert f"{(16 + 3) * n_batches}/{(16 + 3) * n_batches} heads x batches" in lines[0]
    # faithfulness: means (3 batches) + per method (model, circuit, empty, 1 random) x 3 batches
    assert f"{n_batches + 2 * 4 * n_batches}/{n_batches + 2 * 4 * n_batches} batches" in lines[2]
    assert all("100%" in line for line in lines)
