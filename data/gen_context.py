"""Context-dependence prompt sets: questions whose answer is only in a provided passage.

Two sets with the same ids, written by ``python data/generate.py counterfactual_context
counterfactual_context_closed``:

* ``counterfactual_context.jsonl``: an instruction, a one-sentence passage stating a fact the model
  cannot know or that contradicts what it knows, then the question::

      Answer the question using the passage.

      Passage: In this story, the capital of France is Berlin.
      Question: What is the capital of France?
      Answer:

  ``answer`` is the passage's answer (" Berlin"); ``distractor`` is the real-world answer
  (" Paris") for counterfactual facts, or another candidate of the same kind for invented
  entities. Segments: ``passage`` (the whole ``Passage: ...`` line, newline included) and
  ``question``. ``meta.kind`` is ``capital`` / ``color`` (counterfactual) or ``person_city``
  (invented people), ``meta.closed_id`` names the matching closed-book prompt.
* ``counterfactual_context_closed.jsonl``: the same prompts with the passage line cut out of the
  text (closed book), for the accuracy without the passage. Its tokens are exactly the open
  prompt's tokens minus the passage's (checked here with the SmolLM2 tokenizer), so it is also what
  the head-divergence probe's ``removal=drop`` feeds the model.

Zero-shot works best for SmolLM2-135M: in a trial on 22 capital items the same format without
worked examples reached accuracy 1.00 with the passage (0.00 without), one worked example before
the question only 0.77. The shipped set's accuracies are in the README
(``python -m experiments.context_ablation``).
"""

from __future__ import annotations

import random

INSTRUCTION = "Answer the question using the passage.\n\n"

# (country, real capital): both single SmolLM2 tokens after a space.
CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Japan", "Tokyo"), ("Russia", "Moscow"), ("Egypt", "Cairo"), ("China", "Beijing"),
    ("England", "London"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
    ("Norway", "Oslo"), ("Portugal", "Lisbon"), ("Poland", "Warsaw"), ("Sweden", "Stockholm"),
    ("Canada", "Ottawa"), ("Cuba", "Havana"), ("Denmark", "Copenhagen"), ("Finland", "Helsinki"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
]
# (thing, its usual colour) and colours a story may give it instead.
COLORS = [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
          ("blood", "red"), ("banana", "yellow"), ("milk", "white"), ("sea", "blue"),
          ("sun", "yellow"), ("leaf", "green"), ("night", "black"), ("cherry", "red")]
STORY_COLORS = ["purple", "orange", "pink", "brown", "gray", "blue", "green", "red", "yellow"]
# Invented people (no real-world answer) and the cities a story places them in.
FIRST = ["Velma", "Orrin", "Tamsin", "Quill", "Brisa", "Caspar", "Delphine", "Ezra", "Fenna",
         "Gideon", "Hollis", "Ines", "Jasper", "Kestrel", "Lorna", "Magnus", "Nerys", "Oswin",
         "Petra", "Rufus", "Saoirse", "Tobin", "Una", "Wren"]
LAST = ["Marrow", "Quillfeather", "Ashgrove", "Brindle", "Corvane", "Dunmore", "Elsworth",
        "Farrow", "Gansey", "Holloway", "Ivers", "Jessop"]
CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Tokyo", "Moscow", "Cairo", "London", "Athens",
          "Vienna", "Dublin", "Oslo", "Lisbon", "Warsaw", "Stockholm", "Havana"]


def _single_token(tok, word: str) -> bool:
    return len(tok(" " + word, add_special_tokens=False).input_ids) == 1


def _items(tok, rng: random.Random) -> list[dict]:
    """(kind, passage sentence, question, answer word, distractor word, meta) per item."""
    items = []
    capitals = [c for c in CAPITALS if _single_token(tok, c[1])]
    shift = rng.randrange(1, len(capitals))
    for i, (country, real) in enumerate(capitals):
        fake = capitals[(i + shift) % len(capitals)][1]
        items.append(dict(kind="capital", fact=f"the capital of {country} is {fake}.",
                          question=f"What is the capital of {country}?", answer=fake,
                          distractor=real, meta={"country": country}))
    for thing, real in COLORS:
        fake = rng.choice([c for c in STORY_COLORS if c != real and _single_token(tok, c)])
        items.append(dict(kind="color", fact=f"the {thing} is {fake}.",
                          question=f"What color is the {thing}?", answer=fake, distractor=real,
                          meta={"thing": thing}))
    for first in FIRST:
        name = f"{first} {rng.choice(LAST)}"
        city, other = rng.sample([c for c in CITIES if _single_token(tok, c)], 2)
        items.append(dict(kind="person_city", fact=f"{name} lives in {city}.",
                          question=f"In which city does {name} live?", answer=city,
                          distractor=other, meta={"person": name}))
    return items


def _row(index: int, item: dict) -> dict:
    passage = f"Passage: In this story, {item['fact']}\n"
    question = f"Question: {item['question']}"
    text = f"{INSTRUCTION}{passage}{question}\nAnswer:"
    p0 = len(INSTRUCTION)
    q0 = p0 + len(passage)
    pid = f"ctx-{index:03d}"
    return {"id": pid, "text": text,
            "segments": {"passage": [p0, q0], "question": [q0, q0 + len(question)]},
            "answer": " " + item["answer"], "distractor": " " + item["distractor"],
            "task": "counterfactual_context",
            "meta": {"kind": item["kind"], **item["meta"], "closed_id": f"{pid}-closed"}}


def closed_book(row: dict) -> dict:
    """The prompt without its passage line (closed book); segment ``question`` moved with it."""
    p0, p1 = row["segments"]["passage"]
    q0, q1 = row["segments"]["question"]
    cut = p1 - p0
    return {"id": row["meta"]["closed_id"], "text": row["text"][:p0] + row["text"][p1:],
            "segments": {"question": [q0 - cut, q1 - cut]}, "answer": row["answer"],
            "distractor": row["distractor"], "task": "counterfactual_context_closed",
            "meta": {"kind": row["meta"]["kind"], "open_id": row["id"]}}


def _check_drop_equals_closed(tok, row: dict, closed: dict) -> None:
    """The closed prompt's tokens are the open prompt's minus the passage's tokens."""
    enc = tok(row["text"], add_special_tokens=False, return_offsets_mapping=True)
    p0, p1 = row["segments"]["passage"]
    kept = [i for i, (s, e) in zip(enc.input_ids, enc.offset_mapping) if not (s < p1 and e > p0)]
    assert kept == tok(closed["text"], add_special_tokens=False).input_ids, row["id"]
    for answer in (row["answer"], row["distractor"]):
        assert len(tok(answer, add_special_tokens=False).input_ids) == 1, (row["id"], answer)
    assert row["answer"] != row["distractor"], row["id"]


def gen_counterfactual_context(tok, seed: int = 0) -> list[dict]:
    rows = [_row(i, item) for i, item in enumerate(_items(tok, random.Random(seed)))]
    for row in rows:
        _check_drop_equals_closed(tok, row, closed_book(row))
    return rows


def gen_counterfactual_context_closed(tok, seed: int = 0) -> list[dict]:
    return [closed_book(row) for row in gen_counterfactual_context(tok, seed)]
