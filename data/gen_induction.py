"""Induction (copying a repeated sequence; Olsson et al. 2022, arXiv 2209.11895): ``Words:``, ten
random common nouns, then the first ``k`` of them again (``k`` = 3..7); the model should continue
with word ``k + 1``.

    Words: apple river chair window ... wolf apple river chair   ->   " window"

All words are single tokens (with a leading space) for SmolLM2 and distinct within a prompt.
``answer`` is the next word of the sequence; ``distractor`` a later word of the first occurrence
(in the context, but not next). The corruption replaces the first occurrence by ten other words
(same token length), so nothing can be copied. Segments: ``first`` (the first occurrence),
``repeat`` (the repeated prefix) and ``copy_source`` (the answer's first occurrence).
"""

from __future__ import annotations

import random

WORDS = """anchor apple basket blanket bottle bridge bucket button cabin camera candle carpet
castle chair cloud coin cookie crown desert diamond doctor dragon drum eagle engine farmer feather
fence flag forest fountain frog garden gate giant glove goat grape guitar hammer harbor helmet
honey horse insect iron island jacket jelly jewel jungle kettle kitchen kitten knight ladder lake
lamp leaf lemon lion lizard map market meadow mirror monkey moon needle nest nose novel ocean
orchard oven owl parrot pearl pencil pepper piano pillow pizza plane puzzle queen quilt rabbit
ribbon ring river road rocket rope saddle sheep ship shoe snake spoon star stone sugar table tent
ticket tiger tomato tree truck tunnel umbrella valley vase village violin wagon wallet whale wheel
window wolf zebra""".split()
N_WORDS = 10
PREFIX = "Words: "  # every word then follows a space, so both occurrences tokenise alike


def gen_induction(tok, n: int = 100, seed: int = 0) -> list[dict]:
    from generate import n_tokens  # data/generate.py puts this folder on sys.path

    for word in WORDS:
        assert n_tokens(tok, " " + word) == 1, word
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = 3 + i % 5
        seq = rng.sample(WORDS, N_WORDS)
        fresh = rng.sample([w for w in WORDS if w not in seq], N_WORDS)
        distractor = seq[rng.randrange(k + 1, N_WORDS)]
        first, fresh_first, repeat = " ".join(seq), " ".join(fresh), " ".join(seq[:k])
        text, corrupted = f"{PREFIX}{first} {repeat}", f"{PREFIX}{fresh_first} {repeat}"
        assert n_tokens(tok, corrupted) == n_tokens(tok, text), (text, corrupted)
        start = len(PREFIX)
        source = start + len(" ".join(seq[:k])) + 1
        segments = {"first": [start, start + len(first)],
                    "repeat": [start + len(first) + 1, len(text)],
                    "copy_source": [source, source + len(seq[k])]}
        rows.append({
            "id": f"induction-{i:04d}", "text": text, "segments": segments,
            "answer": " " + seq[k], "distractor": " " + distractor, "corrupted_text": corrupted,
            "task": "induction",
            "meta": {"words": seq, "k": k, "corrupted_words": fresh,
                     "corruption": "first occurrence replaced by other words"},
        })
    return rows
