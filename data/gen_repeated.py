"""``repeated_tokens.jsonl``: random SmolLM2 token sequences, each repeated twice.

The standard input for duplicate-token and induction heads (Olsson et al. 2022, arXiv 2209.11895;
TransformerLens ``head_detector.py``): on the second copy an induction head at token ``t`` attends
to the token that followed the earlier occurrence of ``t``.

A prompt file stores text, not ids, so the tokens are drawn from those that survive a round trip:
single lower-case words with a leading space (``" the"``, ``" pro"``) whose text tokenises back to
exactly that one id. The byte-level pre-tokenizer splits text before every ``" word"``, so the
concatenation re-tokenises to the same ids; the generator asserts it for every prompt. Tokens do not
repeat within one sequence, so every duplicate in a prompt is a first-half/second-half pair.

Each prompt: ``segments`` ``first`` and ``second`` (the two copies' character spans), ``meta``
``seq_len`` (tokens per copy), ``token_ids`` (one copy's ids) and the ``seed``.
"""

from __future__ import annotations

import random
import re

WORD = re.compile(r" [a-z]{3,}")


def candidate_tokens(tok) -> list[int]:
    """Ids of tokens that decode to ``" word"`` (3+ lower-case letters) and re-encode to
    themselves."""
    out = []
    for i in range(len(tok)):
        text = tok.decode([i])
        if WORD.fullmatch(text) and tok(text, add_special_tokens=False).input_ids == [i]:
            out.append(i)
    return out


def gen_repeated(tok, n: int = 32, seq_len: int = 24, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    pool = candidate_tokens(tok)
    rows = []
    for k in range(n):
        ids = rng.sample(pool, seq_len)  # no repeats inside one copy
        half = "".join(tok.decode([i]) for i in ids)
        text = half + half
        got = tok(text, add_special_tokens=False).input_ids
        assert got == ids + ids, f"prompt {k}: text does not re-tokenise to the sampled ids"
        rows.append({
            "id": f"repeated-{k:03d}", "text": text,
            "segments": {"first": [0, len(half)], "second": [len(half), len(text)]},
            "task": "repeated_tokens",
            "meta": {"seq_len": seq_len, "token_ids": ids, "seed": seed},
        })
    return rows
