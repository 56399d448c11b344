"""The example notebooks (``examples/*.ipynb``) run top to bottom on SmolLM2-135M, so they never
rot: each is executed with nbclient in a fresh kernel, and their own asserts check the findings
they state."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "examples").glob("*.ipynb"))


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"quickstart"}


@pytest.mark.real_model
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path):
    import nbformat
    from nbclient import NotebookClient

    book = nbformat.read(path, as_version=4)
    before = sorted(path.parent.iterdir())
    start = time.perf_counter()
    NotebookClient(book, timeout=300, kernel_name="python3",  # in examples/, as a reader runs it
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert sorted(path.parent.iterdir()) == before  # in memory: the notebooks write nothing
    print(f"{path.name}: {seconds:.1f} s")
