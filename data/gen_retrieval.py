"""Lost-in-the-middle key-value retrieval set (``data/retrieval.jsonl``).

Each prompt lists ``N_PAIRS`` people with a secret word each, one ``Name: word`` line per person,
then asks for one person's word; the prompt ends ``Answer: Name:`` so the next token is the word.
The target line (the *needle*) sits at a controlled depth of the list: line index ``i`` of
``N_PAIRS`` gives ``meta.depth_fraction = i / (N_PAIRS - 1)`` and ``meta.depth`` by thirds of it
(``beginning`` < 1/3 <= ``middle`` <= 2/3 < ``end``). Segments (character spans; other probes
rely on these names): ``passage`` (all key-value lines), ``needle`` (the target line) and
``question`` (from ``Question:`` to the end). ``answer`` is the needle's word and ``distractor``
another word of the same passage, both single SmolLM2 tokens with a leading space, so the logit
difference compares two candidates the passage offers.

Format chosen by measurement on SmolLM2-135M (12 pairs, about 75 tokens); the shorter format
without the header and question line was near or below chance at the beginning. On this file the
answer beats the distractor in 1.00 / 0.75 / 0.81 / 0.50 / 0.62 / 0.81 of the 16 prompts at the
six depth fractions 0 / .18 / .36 / .64 / .82 / 1 (chance 0.5): ``python -m
experiments.lost_in_the_middle`` prints the table.
"""

from __future__ import annotations

import random

N_PAIRS = 12
NEEDLE_LINES = (0, 2, 4, 7, 9, 11)  # needle line indices: two per depth third
PER_DEPTH = 16
HEADER = "Each person has a secret word.\n"
QUESTION = "\n\nQuestion: What is {key}'s secret word?\nAnswer: {key}:"
WORDS = """apple river stone cloud house horse paper bread glass table chair music light water
green money plant phone heart story queen tiger snake lemon piano train beach ocean dream sugar spoon
candle rabbit tomato pencil garden window bottle carpet jacket rocket""".split()


def depth_label(fraction: float) -> str:
    return "beginning" if fraction < 1 / 3 else ("middle" if fraction <= 2 / 3 else "end")


def _single(tok, text: str) -> bool:
    return len(tok(text, add_special_tokens=False).input_ids) == 1


def build_prompt(keys: list[str], values: list[str], needle: int, distractor: int) -> dict:
    """One prompt (without id/meta) from the passage's keys and values and the two indices."""
    lines = [f"{k}: {v}" for k, v in zip(keys, values)]
    start = len(HEADER)
    passage = "\n".join(lines)
    needle_start = start + sum(len(line) + 1 for line in lines[:needle])
    question_start = start + len(passage) + 2
    text = HEADER + passage + QUESTION.format(key=keys[needle])
    return {
        "text": text,
        "segments": {"passage": [start, start + len(passage)],
                     "needle": [needle_start, needle_start + len(lines[needle])],
                     "question": [question_start, len(text)]},
        "answer": " " + values[needle], "distractor": " " + values[distractor],
    }


def gen_retrieval(tok, seed: int = 0) -> list[dict]:
    from generate import NAMES

    rng = random.Random(seed)
    keys_pool = [n for n in NAMES if _single(tok, n) and _single(tok, " " + n)]
    words = [w for w in WORDS if _single(tok, " " + w)]
    rows = []
    for rep in range(PER_DEPTH):
        for needle in NEEDLE_LINES:
            keys, values = rng.sample(keys_pool, N_PAIRS), rng.sample(words, N_PAIRS)
            distractor = rng.choice([i for i in range(N_PAIRS) if i != needle])
            fraction = round(needle / (N_PAIRS - 1), 4)
            row = {"id": f"retrieval-{len(rows):04d}", **build_prompt(keys, values, needle,
                                                                       distractor),
                   "task": "kv_retrieval",
                   "meta": {"depth": depth_label(fraction), "depth_fraction": fraction,
                            "needle_index": needle, "distractor_index": distractor,
                            "n_pairs": N_PAIRS, "key": keys[needle]}}
            rows.append(row)
    return rows
