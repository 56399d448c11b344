"""``workbench app``: the ``streamlit run`` command line that serves the app, with its options
checked (the folder, the port, the host) before anything starts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from workbench.errors import InputError


def app_command(runs_dir: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line that serves the app on ``host:port`` for ``runs_dir``.

    Raises:
        InputError: ``runs_dir`` is not a folder or lies in /proc, /sys or /dev, ``host`` is
            not a host name, ``port`` is out of range, or the app package (``app/main.py``) is
            not installed.
    """
    import importlib.util

    from workbench.inputs import system_tree

    if not runs_dir.is_dir():
        raise InputError(f"--runs-dir {runs_dir}: not a folder (make runs with `workbench run "
                         "--runs-dir ...`)")
    tree = system_tree(Path(os.path.realpath(runs_dir)))
    if tree:
        raise InputError(f"--runs-dir {runs_dir}: inside {tree}, which holds no runs; give the "
                         "folder holding runs")
    if not host or any(c.isspace() or c in "/\\\x00" for c in host) or len(host) > 253:
        raise InputError(f"--host {host[:80]!r}: not a host name or address (127.0.0.1, "
                         "0.0.0.0, a name)")
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: expected 1 to 65535")
    spec = importlib.util.find_spec("app")  # locates the package; runs nothing of it
    main = Path(next(iter(spec.submodule_search_locations)), "main.py") if spec and \
        spec.submodule_search_locations else None
    if main is None or not main.is_file():
        raise InputError("the app package (app/main.py) is not installed with the workbench")
    return [sys.executable, "-m", "streamlit", "run", str(main), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",
            "--", "--runs-dir", str(runs_dir.resolve())]
