"""Which ``workbench circuits`` option applies at which ``--level``: one table, used by the CLI and
by ``wb.circuits``.

An option that does not apply at the chosen level is refused in one line (exit 2, before the
model loads) when it is set to anything but its default, instead of being ignored: before this
table ``--level edge --grids all`` gave the same scores and the same run id as without it.
Options that apply at both levels are not listed in :data:`LEVEL_ONLY`; every option of the
command must appear in exactly one of :data:`LEVEL_ONLY` and :data:`BOTH_LEVELS` (a test walks the
command's parameters, so a new option has to be classified here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from workbench.errors import InputError

LEVELS = ("node", "edge")

# option (Python parameter name) -> (the level it applies at, its default, its flag)
LEVEL_ONLY: dict[str, tuple[str, Any, str]] = {
    "direction": ("node", "corrupted_into_clean", "--direction"),
    "positions": ("node", "all", "--positions"),
    "heads_per_forward": ("node", None, "--heads-per-forward"),
    "stages": ("node", 2, "--stages"),
    "receiver_input": ("node", "qkv", "--receiver-input"),
    "mean_prompts": ("node", None, "--mean-prompts"),
    "heads": ("node", None, "--heads"),
    "spot_check": ("node", 20, "--spot-check"),
    "both_directions": ("node", False, "--both-directions"),
    "grids": ("node", None, "--grids"),
    "grid_layers": ("node", None, "--grid-layers"),
    "dla": ("node", False, "--dla"),
    "ioi_classes": ("node", False, "--ioi-classes"),
    "nodes": ("node", "heads", "--nodes"),
    "max_size": ("node", None, "--max-size"),
    "held_out": ("node", 0, "--held-out"),
    "refine_tolerance": ("node", 0.01, "--refine-tolerance"),
    "refine_candidates": ("node", 8, "--refine-candidates"),
    "refine_rounds": ("node", 1, "--refine-rounds"),
    "refine_budget": ("node", None, "--refine-budget"),
    "metric": ("edge", "logit_diff", "--metric"),
    "ablation": ("edge", "corrupted", "--ablation"),
    "ig_steps": ("edge", 5, "--ig-steps"),
    "ig_rule": ("edge", "right", "--ig-rule"),
    "n_boot": ("edge", 1000, "--n-boot"),
}

BOTH_LEVELS = frozenset({
    "model", "task", "method", "select", "level", "n_prompts", "batch_size", "n_random",
    "device", "dtype", "prepend_bos", "runs_dir", "run_id", "overwrite", "strict_parity",
    "progress", "resume", "recheck", "tasks", "methods"})

DOES = {"edge": "scores the graph's edges with EAP / EAP-IG",
        "node": "patches or attributes heads"}


def _is_default(value: Any, default: Any) -> bool:
    if value is None or value == default:
        return True
    if isinstance(value, (list, tuple)):  # list options: [] / ["all"] / "all" are the default
        items = [str(v) for v in value]
        return items in ([], [str(default)]) or (default is None and not items)
    return default is None and value in ("", [])


def check_level_options(level: str, values: Mapping[str, Any]) -> None:
    """Raise :class:`InputError` for an option of ``values`` (parameter name -> value) that does
    not apply at ``level`` and is not at its default.

    Raises:
        InputError: an unknown level, or the first option (in table order) that does not apply;
            the message names the flag, its level and the level chosen.
    """
    if level not in LEVELS:
        raise InputError(f"--level {level!r} is not one of {', '.join(LEVELS)}")
    for name, (where, default, flag) in LEVEL_ONLY.items():
        if where != level and name in values and not _is_default(values[name], default):
            raise InputError(f"{flag} applies at --level {where} only; --level {level} "
                             f"{DOES[level]} and would ignore it: drop {flag} or use --level "
                             f"{where}")
