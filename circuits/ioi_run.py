"""``workbench circuits --ioi-classes``: the IOI head classes (:mod:`circuits.ioi_classes`) of
each IOI task of a circuits run, as the table ``ioi_classes`` (record schema, probe
``ioi_classes``, ``segment`` = task; units in ``run.json``), and their lines in the report.

Rows: ``ioi_class`` (value 1, ``condition`` = the class) per classified head; per stage
(``condition`` = ``"stage=<stage>; receivers=<logits | q/kv/k of heads>"``) ``ioi_path_estimate``
for every sender that can reach the receivers and ``ioi_path_score`` / ``_lo`` / ``_hi`` for the
senders path-patched exactly; ``ioi_attention`` per head (``condition`` = ``END->IO``, ``END->S``,
``END->S2``, ``S2->S1``, ``S2->S1+1``, ``S1+1->S1``); ``ioi_copy_score`` /
``ioi_negative_copy_score`` for the heads measured (``condition`` = ``top_k=5``); ``ioi_dla``,
``ioi_dla_ablated``, ``ioi_backup_delta`` (and ``_lo`` / ``_hi``) per head (``condition`` =
``ablated=<the name movers>``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import pandas as pd
import pyarrow as pa

from circuits.ioi_classes import CLASSES, PROBE, IOICriteria, ioi_classes
from circuits.ioi_evidence import SEGMENTS, ioi_positions
from circuits.progress import plan
from circuits.tasks import Task
from workbench.errors import InputError
from workbench.heads import format_head
from workbench.records import concat, conform


def has_ioi_segments(prompt_set) -> bool:
    """Every prompt has the segments ``IO``, ``S1`` and ``S2`` (no model needed)."""
    return all(all(s in (p.segments or {}) for s in SEGMENTS) for p in prompt_set.prompts)


def check_ioi_prompts(prompt_sets: dict[str, object]) -> None:
    """Before a model loads: every prompt of each task ``{name: PromptSet}`` has the segments
    ``IO``, ``S1`` and ``S2``.

    Raises:
        InputError: the first prompt without one (file, prompt id and task named).
    """
    for name, prompt_set in prompt_sets.items():
        for prompt in prompt_set.prompts:
            missing = [s for s in SEGMENTS if s not in (prompt.segments or {})]
            if missing:
                raise InputError(f"--ioi-classes: task {name!r} has no IOI positions: "
                                 f"{prompt.source}: prompt {prompt.id!r} lacks the segment(s) "
                                 f"{', '.join(missing)} (the classes need IO, S1 and S2)")


def check_ioi_tasks(tasks: Sequence[Task], names: Sequence[str]) -> None:
    """Each task named in ``names`` is run and has the IOI positions (:func:`ioi_positions`).

    Raises:
        InputError: a named task is not among ``tasks``, or lacks the positions.
    """
    known = {t.name: t for t in tasks}
    for name in names:
        if name not in known:
            raise InputError(f"--ioi-classes: task {name!r} is not run (tasks: "
                             f"{', '.join(known)})")
        ioi_positions(known[name])


def ioi_tables(model, tasks: Sequence[Task], options, run_id: str, bars, timings: dict
               ) -> dict[str, pa.Table]:
    """The ``ioi_classes`` table of every task in ``options.ioi_classes``."""
    parts = []
    for task in tasks:
        if task.name not in options.ioi_classes:
            continue
        with bars.phase(f"IOI classes {task.name}", "steps") as phase:
            plan(phase, 6)
            start = time.perf_counter()
            result = ioi_classes(model, task, IOICriteria(),
                                 batch_size=options.discovery.batch_size,
                                 progress=lambda _: phase(1) if phase else None)
            timings[f"ioi_classes.{task.name}_s"] = round(time.perf_counter() - start, 3)
        parts.append(conform(result.records(), run_id=run_id, probe=PROBE))
    return {"ioi_classes": concat(parts)} if parts else {}


def ioi_report_lines(table: pd.DataFrame | None) -> list[str]:
    """Report lines: per task and class, each head with the numbers its class was decided on."""
    if table is None:
        return []
    lines = ["IOI head classes (Wang et al. 2022, arXiv 2211.00593, section 3; path-patching "
             "score = fraction of the clean - corrupted gap [95% bootstrap interval over "
             "prompts]; a class needs its interval to exclude 0; criteria in docs/circuits.md)"]
    for task, rows in table.groupby("segment", sort=False):
        classes = rows[rows.metric == "ioi_class"]
        lines.append(f"  {task}: " + (f"{len(classes)} heads classified" if len(classes)
                                      else "no head meets a class's criteria"))
        for cls in CLASSES:
            heads = classes[classes.condition == cls]
            if heads.empty:
                continue
            lines.append(f"    {cls}: " + "; ".join(
                f"{format_head((int(r.layer), int(r.head)))} "
                f"{_evidence(rows, cls, r.layer, r.head)}" for r in heads.itertuples()))
    return lines


STAGE_OF = {"name_mover": "name_mover", "negative_name_mover": "name_mover",
            "s_inhibition": "s_inhibition", "induction": "induction",
            "duplicate_token": "induction", "previous_token": "previous_token"}
ATTENTION_OF = {"name_mover": ("END->IO", "END->S"), "negative_name_mover": ("END->IO", "END->S"),
                "backup_name_mover": ("END->IO", "END->S"), "s_inhibition": ("END->S2", "END->IO"),
                "induction": ("S2->S1+1", "S2->S1"), "duplicate_token": ("S2->S1", "S2->S1+1"),
                "previous_token": ("S1+1->S1",)}


def _evidence(rows: pd.DataFrame, cls: str, layer, head) -> str:
    mine = rows[(rows["layer"] == layer) & (rows["head"] == head)]

    def get(metric, condition=None):
        sel = mine[mine.metric == metric]
        if condition is not None and condition.startswith("stage="):
            sel = sel[sel.condition.str.startswith(condition)]
        elif condition is not None:
            sel = sel[sel.condition == condition]
        return float(sel.value.iloc[0]) if len(sel) else float("nan")
    parts = []
    if cls in STAGE_OF:
        stage = f"stage={STAGE_OF[cls]};"
        parts.append(f"path {get('ioi_path_score', stage):+.3f} "
                     f"[{get('ioi_path_score_lo', stage):+.3f}, "
                     f"{get('ioi_path_score_hi', stage):+.3f}]")
    else:
        parts.append(f"direct effect +{get('ioi_backup_delta'):.3f} logits "
                     f"[{get('ioi_backup_delta_lo'):+.3f}, {get('ioi_backup_delta_hi'):+.3f}] "
                     "with the name movers knocked out")
    parts.append(", ".join(f"{a} {get('ioi_attention', a):.2f}" for a in ATTENTION_OF[cls]))
    if cls in ("name_mover", "backup_name_mover"):
        parts.append(f"copy {get('ioi_copy_score'):.2f}")
    if cls == "negative_name_mover":
        parts.append(f"negative copy {get('ioi_negative_copy_score'):.2f}")
    return "(" + "; ".join(parts) + ")"
