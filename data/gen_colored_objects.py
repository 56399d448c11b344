"""Colored Objects (Merullo et al. 2023, arXiv 2310.08744, after BIG-bench's
reasoning_about_colored_objects), one-shot, three objects:

    Q: On the desk, I see a green pen, a red cup, and a blue bowl. What color is the cup?
    A: red

    Q: On the {surface}, {there is|you see|I see} a {c1} {o1}, a {c2} {o2}, and a {c3} {o3}.
    What color is the {q}?
    A:

(one line before "A:" in the prompts).

8 colours and 17 objects, all single tokens (with a leading space) for SmolLM2; the three colours and
three objects of a question are distinct. ``answer`` is the colour of the queried object; the
corruption asks about another listed object (same length in tokens), and ``distractor`` is that
object's colour, so the logit difference is positive on the clean prompt and negative on the
corrupted one. Segments: ``query`` (the queried object in the question), ``target_color`` and
``target_object`` (its colour and name in the list), all in the final question.
"""

from __future__ import annotations

import random

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "brown", "black"]
OBJECTS = ["pencil", "notebook", "pen", "cup", "plate", "jug", "puzzle", "textbook", "necklace",
           "bottle", "ball", "envelope", "lighter", "bowl", "booklet", "sunglasses", "hat"]
SURFACES = ["table", "floor", "desk", "nightstand", "couch", "bed"]
VERBS = ["there is", "you see", "I see"]


def question(rng: random.Random) -> tuple[str, list[str], list[str], int]:
    """One question (no answer): text, colours, objects, index of the queried object."""
    surface, verb = rng.choice(SURFACES), rng.choice(VERBS)
    colors, objects = rng.sample(COLORS, 3), rng.sample(OBJECTS, 3)
    target = rng.randrange(3)
    listed = ", ".join(f"a {c} {o}" for c, o in zip(colors[:2], objects[:2]))
    text = (f"Q: On the {surface}, {verb} {listed}, and a {colors[2]} {objects[2]}. "
            f"What color is the {objects[target]}?\nA:")
    return text, colors, objects, target


def gen_colored_objects(tok, n: int = 100, seed: int = 0) -> list[dict]:
    from generate import n_tokens  # data/generate.py puts this folder on sys.path

    for word in COLORS + OBJECTS:
        assert n_tokens(tok, " " + word) == 1, word
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        shot, shot_colors, _, shot_target = question(rng)
        prefix = f"{shot} {shot_colors[shot_target]}\n\n"
        body, colors, objects, target = question(rng)
        other = rng.choice([j for j in range(3) if j != target])
        text = prefix + body
        cut = text.rindex(f" {objects[target]}?")
        corrupted = text[:cut] + f" {objects[other]}?" + text[cut + len(objects[target]) + 2:]
        assert n_tokens(tok, corrupted) == n_tokens(tok, text), (text, corrupted)
        item = text.index(f"a {colors[target]} {objects[target]}", len(prefix)) + 2
        segments = {"query": [cut + 1, cut + 1 + len(objects[target])],
                    "target_color": [item, item + len(colors[target])],
                    "target_object": [item + len(colors[target]) + 1,
                                      item + len(colors[target]) + 1 + len(objects[target])]}
        rows.append({
            "id": f"colored-objects-{i:04d}", "text": text, "segments": segments,
            "answer": " " + colors[target], "distractor": " " + colors[other],
            "corrupted_text": corrupted, "task": "colored_objects",
            "meta": {"colors": colors, "objects": objects, "target": target,
                     "corrupted_target": other, "corruption": "ask about another listed object"},
        })
    return rows
