"""The core package ``workbench`` never imports the layers above it (DESIGN.md: dependencies point
one way). Every ``import``/``from`` statement anywhere in ``workbench/**/*.py`` is checked, lazy
ones inside functions included, and so are ``importlib.import_module("...")`` calls with a literal
name. The plug-ins reach the core through entry points instead (``workbench.probes``,
``workbench.jobs`` in pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UPPER = {"probes", "circuits", "sweeps", "atlas", "pruning", "app", "workbench_cli"}


def upward_imports(path: Path) -> list[str]:
    """``file:line module`` for each import of an upper layer in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        found += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names
                  if n.split(".")[0] in UPPER]
    return found


def test_core_package_never_imports_upper_layers():
    files = sorted((ROOT / "workbench").rglob("*.py"))
    assert len(files) > 40  # the walk found the package
    bad = [hit for f in files for hit in upward_imports(f)]
    assert bad == [], "the core imports layers above it:\n" + "\n".join(bad)


def test_the_checker_sees_lazy_and_dynamic_imports(tmp_path):
    probe = ROOT / "workbench" / "_layering_probe_tmp.py"
    text = ("def f():\n    from probes import PROBES\n    import circuits.run\n"
            "    import importlib\n    importlib.import_module('atlas.build')\n")
    probe.write_text(text)
    try:
        hits = upward_imports(probe)
    finally:
        probe.unlink()
    assert [h.split()[-1] for h in hits] == ["probes", "circuits.run", "atlas.build"]


def test_import_workbench_is_light():
    """``import workbench`` (and its records and figures modules, which the app reads runs with)
    imports neither torch nor any upper layer; the API's names load on first use."""
    code = ("import sys, workbench, workbench.records\n"
            "heavy = sorted(m for m in ('torch', 'transformer_lens', 'probes', 'circuits', "
            "'atlas', 'sweeps', 'pruning') if m in sys.modules)\nprint(heavy)\n"
            "print(sorted(workbench.__all__))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    heavy, names = done.stdout.splitlines()
    assert heavy == "[]"
    assert "run" in names and "load" in names
