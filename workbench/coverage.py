"""What a run will not measure, said up front: prompts a probe writes no rows for.

A probe that measures something *on* a named segment (``attention_entropy``, ``attention_sink``,
``position_bias``, a ``head_types`` ``segment:`` rule) writes no segment rows for a prompt whose
segment has no tokens (an empty span, or one no token overlaps); a prompt of one token has a single
visible key, so ``attention_entropy`` writes nothing for it. ``head_divergence`` *removes* its
segment: removing an empty one changes nothing, so its rows are exactly 0 by construction (a
documented, tested case). Those prompts are named in the run manifest's ``warnings`` and printed
by the CLI and ``runs show``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_NAMED = 5  # prompt ids named in one warning


def _ids(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")


def _segments(probe: Any) -> list[str]:
    """The named segments a probe measures on or removes."""
    names = [probe.segment] if isinstance(getattr(probe, "segment", None), str) else []
    for detector in getattr(probe, "_detectors", ()):
        names += detector.segments
    return list(dict.fromkeys(names))


def input_warnings(tokenized: Sequence[Any], probes: Sequence[Any]) -> list[str]:
    """One sentence per (probe, reason) naming the prompts that probe writes no rows for."""
    out = []
    single = [t.id for t in tokenized if t.n_tokens < 2]
    for probe in probes:
        for name in _segments(probe):
            empty = [t.id for t in tokenized if name in t.segments and t.segments[name].size == 0]
            if empty:
                what = ("removing nothing: their divergences are 0 by construction"
                        if getattr(probe, "owns_forward", False) else "no segment rows for them")
                out.append(f"{probe.name}: segment {name!r} has no tokens in {len(empty)} "
                           f"prompt(s) ({_ids(empty)}); {what}")
        if single and probe.name == "attention_entropy":
            out.append(f"{probe.name}: {len(single)} prompt(s) have a single token "
                       f"({_ids(single)}); one visible key has no entropy, so no rows for them")
    return out


def no_records_warning(tables: dict) -> list[str]:
    """A warning when a finished run wrote no record table at all."""
    if tables:
        return []
    return ["no records were written: every prompt was skipped by every probe (see the warnings "
            "above); the run holds only its prompts and tokens tables"]
