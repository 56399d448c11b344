"""Tiny IOI prompts carrying the IOI positions (segments IO, S1, S2) for the head-class tests."""

from __future__ import annotations

from pathlib import Path

from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import write_jsonl


def tiny_ioi_class_rows(n: int, seed: int = 0) -> list[dict]:
    """:func:`tests.circuit_tasks.tiny_ioi_rows` with the segments ``IO``, ``S1`` and ``S2``
    (character spans of the indirect object and of both mentions of the subject)."""
    rows = tiny_ioi_rows(n, seed)
    for row in rows:
        text, io, s = row["text"], row["answer"].strip(), row["distractor"].strip()
        first = text.index(s)
        second = text.index(s, first + len(s))
        row["segments"] = {"IO": row["segments"]["IO"], "S1": [first, first + len(s)],
                           "S2": [second, second + len(s)]}
    return rows


def tiny_ioi_class_file(folder: Path, n: int = 6, seed: int = 0) -> Path:
    return write_jsonl(folder / "tiny_ioi_classes.jsonl", tiny_ioi_class_rows(n, seed))
