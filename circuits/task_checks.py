"""Checks of a task file that need no model: run before anything loads or is written (the
tokenised checks, equal clean/corrupted token lengths and distinct answer tokens, are
:func:`circuits.tasks.load_task`'s)."""

from __future__ import annotations

from pathlib import Path

from circuits.sized import check_held_out
from workbench.errors import InputError
from workbench.prompts import PromptSet, load_prompt_set

FIELDS = ("answer", "distractor", "corrupted_text")


def check_task_file(path: Path | str, n_prompts: int | None, held_out: int = 0, *,
                    where: str = "task") -> PromptSet:
    """Load the task file and check every prompt that will be used (the first ``n_prompts``
    and the ``held_out`` after them) has an answer, a distractor and a corrupted text.

    Raises:
        InputError: a malformed file, a missing field (named by file and prompt id), or too few
            prompts for ``held_out``.
    """
    prompts = load_prompt_set(path)
    if n_prompts is not None and n_prompts < 1:
        raise InputError(f"{where}: --n-prompts must be at least 1, got {n_prompts}")
    check_held_out(len(prompts), n_prompts, held_out, where)
    used = len(prompts) if n_prompts is None else min(n_prompts, len(prompts)) + held_out
    for prompt in prompts.prompts[:used]:
        for field in FIELDS:
            if not getattr(prompt, field):
                raise InputError(f"{prompt.source}: prompt {prompt.id!r} has no {field!r}; a "
                                 "task needs answer, distractor and corrupted_text")
    return prompts
