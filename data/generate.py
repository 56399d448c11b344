"""Generate the shipped prompt sets (deterministic; rerun to reproduce them byte for byte).

    python data/generate.py            # all sets
    python data/generate.py ioi        # one set
    python data/generate.py --check    # regenerate in memory and compare with the shipped files

Sets (JSONL, format in workbench/prompts.py):

* ``ioi.jsonl`` - indirect object identification (Wang et al. 2022, arXiv 2211.00593): the 15 BABA
  templates of the paper's code and their ABBA versions (first-clause names swapped), names that are
  single tokens for SmolLM2, ``answer`` = the indirect object, ``distractor`` = the subject, and the
  p_ABC corruption (all three names replaced by three other names, equal token length). Segments mark
  the three name tokens (``S1``, ``IO``, ``S2``).
* ``colored_objects.jsonl`` - Colored Objects (Merullo et al. 2023), one-shot, three objects; the
  corruption asks about another listed object (``data/gen_colored_objects.py``).
* ``induction.jsonl`` - copying a repeated sequence of ten common nouns; the corruption replaces the
  first occurrence (``data/gen_induction.py``).
* ``natural.jsonl`` - natural English prose: consecutive sentences of the license texts in
  /usr/share/common-licenses (on every Debian machine), 48 to 80 SmolLM2 tokens per prompt.
* ``repeated_tokens.jsonl`` - 32 sequences of 24 random SmolLM2 word tokens, each repeated twice
  (for previous-token, duplicate-token and induction heads; see data/gen_repeated.py).
* ``counterfactual_context.jsonl`` and ``counterfactual_context_closed.jsonl`` - questions whose
  answer is only in a one-sentence passage (counterfactual facts, invented people), and the same
  questions without the passage; see ``gen_context.py``.
* ``retrieval.jsonl`` - lost-in-the-middle key-value retrieval (``gen_retrieval.py``): 12
  ``Name: word`` lines, the asked-for line at six controlled depths, segments ``passage``,
  ``needle``, ``question``; single-token answer and distractor (another word of the passage).

The SmolLM2 tokenizer decides token counts, so the sets fit the default model exactly.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the workbench package, and data/gen_*.py modules

from gen_colored_objects import gen_colored_objects  # noqa: E402
from gen_context import gen_counterfactual_context, gen_counterfactual_context_closed  # noqa: E402
from gen_induction import gen_induction  # noqa: E402
from gen_repeated import gen_repeated  # noqa: E402
from gen_retrieval import gen_retrieval  # noqa: E402

# Wang et al. (2022) IOI templates, as in the paper's released dataset code ("[B]" is the subject,
# "[A]" the indirect object; the final "[A]" is the answer and is cut off the prompt).
BABA_TEMPLATES = [
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
]
PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station"]
OBJECTS = ["ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack"]
# Candidate first names (those of the IOI code); only single-token ones are used.
NAMES = """Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake
Brandon Brian Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew Crystal
Daniel David Dean Edward Elizabeth Emily Eric Eva Ford Frank George Georgia Graham Grant Henry Ian
Jack Jacob Jake James Jamie Jane Jason Jay Jennifer Jeremy Jessica John Jonathan Jordan Joseph Joshua
Justin Kate Kelly Kevin Kyle Laura Leon Lewis Lisa Louis Luke Madison Marco Marcus Maria Mark Martin
Mary Matthew Max Michael Michelle Morgan Patrick Paul Peter Prince Rachel Richard River Robert Roman
Rose Ruby Russell Ryan Sarah Scott Sean Simon Stephen Steven Sullivan Taylor Thomas Tyler Victoria
Warren William""".split()

LICENSES = ["GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "Artistic", "CC0-1.0", "LGPL-2.1"]
LICENSE_DIR = Path("/usr/share/common-licenses")


def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from workbench.models import smollm2_cache

    folder, _ = smollm2_cache()
    return AutoTokenizer.from_pretrained(folder)


def n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


def abba(template: str) -> str:
    """Swap the first-clause names: "[B] and [A]" -> "[A] and [B]" (the paper's ABBA variant)."""
    return template.replace("[B] and [A]", "[A] and [B]", 1)


def fill(template: str, names: dict[str, str], place: str, obj: str) -> tuple[str, dict]:
    """Fill a template (answer cut off); return the text and the name segments' char spans."""
    body = template[: template.rindex("[A]")].rstrip()
    body = body.replace("[PLACE]", place).replace("[OBJECT]", obj)
    spans, out, pos = {}, [], 0
    slots = {"[A]": "A", "[B]": "B", "[C]": "C"}
    count = {"A": 0, "B": 0}
    for piece in re.split(r"(\[A\]|\[B\])", body):
        if piece in slots:
            role = slots[piece]
            name = names[role]
            count[role] += 1
            label = "IO" if role == "A" else f"S{count[role]}"
            spans[label] = [pos, pos + len(name)]
            out.append(name)
            pos += len(name)
        else:
            out.append(piece)
            pos += len(piece)
    return "".join(out), spans


def gen_ioi(tok, n: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    names = [x for x in NAMES if n_tokens(tok, " " + x) == 1]
    rows = []
    for i in range(n):
        order = "BABA" if i % 2 == 0 else "ABBA"
        t_idx = (i // 2) % len(BABA_TEMPLATES)
        template = BABA_TEMPLATES[t_idx] if order == "BABA" else abba(BABA_TEMPLATES[t_idx])
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
        text, spans = fill(template, {"A": io, "B": s}, place, obj)
        # p_ABC: the three name slots get three names different from IO and S (and each other).
        x, y, z = rng.sample([m for m in names if m not in (io, s)], 3)
        corrupted = text
        for label, new in sorted(zip(("S1", "IO", "S2"), (x, y, z)),
                                 key=lambda kv: -spans[kv[0]][0]):
            a, b = spans[label]
            corrupted = corrupted[:a] + new + corrupted[b:]
        assert n_tokens(tok, corrupted) == n_tokens(tok, text), (text, corrupted)
        rows.append({
            "id": f"ioi-{i:04d}", "text": text, "segments": spans, "answer": " " + io,
            "distractor": " " + s, "corrupted_text": corrupted, "task": "ioi",
            "meta": {"order": order, "template": t_idx, "io": io, "s": s, "place": place,
                     "object": obj, "corruption": "p_ABC"},
        })
    return rows


def gen_natural(tok, min_tokens: int = 48, max_tokens: int = 80, per_file: int = 8) -> list[dict]:
    rows = []
    for lic in LICENSES:
        raw = (LICENSE_DIR / lic).read_text(encoding="utf-8", errors="replace")
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", raw)]
        prose = [p for p in paragraphs if len(p.split()) >= 12 and p.count(".") >= 1
                 and not p.isupper()]
        sentences = [s for p in prose for s in re.split(r"(?<=[.;:])\s+", p) if s]
        chunk: list[str] = []
        taken = 0
        for sentence in sentences:
            chunk.append(sentence)
            text = " ".join(chunk)
            size = n_tokens(tok, text)
            if size > max_tokens:
                chunk = [sentence] if n_tokens(tok, sentence) <= max_tokens else []
                continue
            if size >= min_tokens:
                rows.append({"id": f"natural-{lic.lower()}-{taken:02d}", "text": text,
                             "task": "natural", "meta": {"source": f"{LICENSE_DIR}/{lic}",
                                                         "n_tokens_smollm2": size}})
                taken += 1
                chunk = []
                if taken == per_file:
                    break
    return rows


# name -> function(tokenizer) -> rows; the set is written to data/<name>.jsonl. Larger generators
# live in data/gen_<name>.py and are imported here.
GENERATORS = {"ioi": gen_ioi, "natural": gen_natural, "repeated_tokens": gen_repeated,
              "counterfactual_context": gen_counterfactual_context,
              "counterfactual_context_closed": gen_counterfactual_context_closed,
              "retrieval": gen_retrieval, "colored_objects": gen_colored_objects,
              "induction": gen_induction}


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sets", nargs="*", metavar="SET",
                        help=f"which sets (default: all of {', '.join(GENERATORS)})")
    parser.add_argument("--check", action="store_true", help="compare with the shipped files")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sets if s not in GENERATORS]
    if unknown:
        parser.error(f"unknown set(s) {unknown}; choose from {list(GENERATORS)}")
    args.sets = args.sets or list(GENERATORS)
    tok = smollm2_tokenizer()
    status = 0
    for name in args.sets:
        text = render(GENERATORS[name](tok))
        path = HERE / f"{name}.jsonl"
        if args.check:
            same = path.exists() and path.read_text(encoding="utf-8") == text
            print(f"{path.name}: {'matches' if same else 'DIFFERS from'} the generator")
            status |= 0 if same else 1
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} prompts)")
    return status


if __name__ == "__main__":
    sys.exit(main())
