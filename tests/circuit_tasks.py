"""Small tasks for circuit tests: IOI-style prompts whose names are single tokens for the tiny test
tokenizer (Mary, John, Alice, Bob, Sarah, Tom), with a p_ABC corruption of equal token length."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from tests.conftest import write_jsonl

NAMES = ["Mary", "John", "Alice", "Bob", "Sarah", "Tom"]
TEMPLATES = ["Then, {S} and {IO} went to the store. {S} gave a drink to",
             "When {IO} and {S} got a ring at the garden, {S} decided to give it to",
             "While {S} and {IO} were working at the school, {S} gave a computer to"]


def tiny_ioi_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pairs = list(itertools.permutations(NAMES, 2))
    rows = []
    for i in range(n):
        io, s = rng.choice(pairs)
        template = TEMPLATES[i % len(TEMPLATES)]
        a, b, c = rng.sample([x for x in NAMES if x not in (io, s)], 3)
        text = template.format(S=s, IO=io)
        first, second = (a, b) if template.index("{S}") < template.index("{IO}") else (b, a)
        corrupted = template.replace("{S}", first, 1).replace("{IO}", second).replace("{S}", c)
        io_at = text.index(io)
        rows.append({"id": f"tiny-ioi-{i}", "text": text, "answer": " " + io,
                     "distractor": " " + s, "corrupted_text": corrupted, "task": "tiny_ioi",
                     "segments": {"IO": [io_at, io_at + len(io)]}})
    return rows


def tiny_ioi_file(folder: Path, n: int = 6, seed: int = 0) -> Path:
    return write_jsonl(folder / "tiny_ioi.jsonl", tiny_ioi_rows(n, seed))
