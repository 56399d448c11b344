"""Issue 15's defects on the browsing pages, each as what the page shows (AppTest on the fixture
runs folder): the head follows the metric, the headline metric comes first, constant metrics are
not offered, run comparison on one colour range with depth alignment, readable captions."""

from __future__ import annotations

import numpy as np
import pytest

from app.headline import KNOWN
from app.ui import clicked_head
from tests.test_app import box, charts, no_errors, open_app, raw, runs, texts  # noqa: F401


def test_headline_table_equals_the_probe_classes():
    from probes import PROBES

    assert KNOWN == {name: tuple(cls.headline) for name, cls in PROBES.items()}


def test_headline_metric_is_the_default_and_constant_metrics_are_not_offered(open_app):
    """Defects 2 and 3: probe_a declares ``score`` as its headline (alphabetically first is
    ``effect``); ``attn``'s per-head mean is 1 / row length for every head (float noise)."""
    at = open_app("views/heads.py", run="fixture")
    no_errors(at)
    metric = box(at, "Metric")
    assert metric.value == "score"
    assert "attn" not in metric.options
    assert any("attn" in c and "float noise" in c for c in texts(at, "caption"))


def test_selected_head_follows_the_metric(open_app, runs):
    """Defect 1: switching the metric selects the new metric's top head."""
    at = open_app("views/heads.py", run="fixture")
    box(at, "Layer").set_value(0).run()
    box(at, "Head").set_value(0).run()
    for metric in ("seg_mass", "layer_norm", "score"):
        if metric not in box(at, "Metric").options:
            continue
        box(at, "Metric").set_value(metric).run()
        no_errors(at)
        rows = raw(runs, "probe_a").query(f"metric == '{metric}'")
        means = rows.groupby(["layer", "head"]).value.mean()
        if metric == "seg_mass":  # the first variant is chosen
            continue
        assert (box(at, "Layer").value, box(at, "Head").value) == means.idxmax(), metric


def test_a_click_selects_the_head():
    """Defect 1: a click event's point gives (layer, head) in either axis order."""
    event = {"selection": {"points": [{"x": 3, "y": 1, "z": 0.5}]}}
    assert clicked_head(event) == (3, 1)
    assert clicked_head(event, ("head", "layer")) == (1, 3)
    assert clicked_head({"selection": {"points": []}}) is None
    assert clicked_head(None) is None


def test_kill_of_the_app_command_stops_the_server(tmp_path):
    """Defect 9: ``kill <pid of workbench app>`` (SIGTERM to that one process) stops the server."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import ROOT

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "app", "--runs-dir",
                             str(tmp_path), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                            timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # the pid the shell shows, not its group
        proc.wait(timeout=30)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"
    finally:
        import os

        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group we started
        except ProcessLookupError:
            pass
