"""The options of ``workbench circuits`` (and ``wb.circuits``): their dataclass, the checks that
run before a model loads, and the units of every value the run's tables hold.

Raises :class:`~workbench.errors.InputError` with one line naming the bad option.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuits.components import UNITS as COMPONENT_UNITS

from circuits.discovery import Selection
from circuits.effects import check_direction
from circuits.grids import parse_components, parse_grid_layers
from circuits.ioi_classes import UNITS as IOI_UNITS
from circuits.methods import METHODS, DiscoveryOptions
from circuits.path_patching import check_receiver_input
from circuits.refine import RefineOptions
from circuits.sized import UNITS as SIZED_UNITS
from circuits.sized import SizingOptions
from workbench.errors import InputError
from workbench.heads import Head, parse_heads

UNITS = {
    "logit_diff": "logits", "mean_logit_diff": "logits", "accuracy": "fraction of prompts",
    "effect": "logits (mean patched LD - mean base LD)",
    "score": "fraction of the clean - corrupted LD gap; positive = the head carries the task",
    "member": "score the head was selected on",
    "edge": "path-patching score of the sender through this receiver alone (fraction of the gap)",
    "size": "heads", "faithfulness": "fraction of the full model's LD (circuit / model)",
    "faithfulness_normalised": "(circuit - empty) / (model - empty)",
    "faithfulness_random": "mean faithfulness of random circuits of equal size",
    "faithfulness_random_draw": "faithfulness of one random circuit of equal size",
    "circuit_accuracy": "fraction of prompts", "jaccard": "fraction",
    "overlap_coefficient": "fraction", "shared_over_first": "fraction",
    "shared_over_second": "fraction", "n_shared": "heads", "size_first": "heads",
    "size_second": "heads", "expected_shared": "heads", "p_value": "probability",
    "expected_jaccard": "fraction (random head sets of the same sizes)",
    "shared": "1 per shared head", "spearman": "rank correlation",
    "score_lo": "score: 2.5th percentile of a bootstrap over prompts (2000 resamples, seed 0)",
    "score_hi": "score: 97.5th percentile of a bootstrap over prompts (2000 resamples, seed 0)",
    "faithfulness_lo": "faithfulness: 2.5th percentile of a bootstrap over prompts",
    "faithfulness_hi": "faithfulness: 97.5th percentile of a bootstrap over prompts",
    "faithfulness_normalised_lo": "normalised faithfulness: 2.5th bootstrap percentile",
    "faithfulness_normalised_hi": "normalised faithfulness: 97.5th bootstrap percentile",
    "score_noising": "activation patching corrupted_into_clean (fraction of the gap)",
    "score_denoising": "activation patching clean_into_corrupted (fraction of the gap)",
    "one_direction_only": "1 if |score| >= 0.05 in exactly one direction, else 0",
    "score_attribution": "attribution estimate of score (fraction of the gap)",
    "score_activation": "activation-patching score of the same head (fraction of the gap)",
    "disagrees": "1 if |attribution - activation| > max(0.05, 0.5 |activation|), else 0",
    "worst_effect_attribution": "logits: estimated patched - base LD on the worst prompt",
    "worst_effect_activation": "logits: measured patched - base LD on the worst prompt",
    **COMPONENT_UNITS, **IOI_UNITS, **SIZED_UNITS,
    "mlp_member": "1 per MLP in the circuit (--nodes heads,mlps; layer = the MLP's)",
}


@dataclass
class CircuitsOptions:
    methods: list[str]
    selection: Selection
    discovery: DiscoveryOptions = field(default_factory=DiscoveryOptions)
    n_random: int = 3  # random circuits for the faithfulness baseline
    mean_prompts: int | None = None  # corrupted prompts for ablation means (None: the whole file)
    runs_dir: Path = Path("runs")
    run_id: str | None = None
    overwrite: bool = False
    progress: bool = True
    console: Any = None  # rich Console the progress bars draw on (None: standard error)
    both_directions: bool = False  # activation-patch every circuit head noising and denoising
    grids: tuple[str, ...] = ()  # patching grids per layer x position (circuits.grids)
    grid_layers: tuple[int, ...] | None = None  # the grids' layers (None: every layer)
    dla: bool = False  # direct logit attribution per head and MLP (circuits.dla)
    resume: bool = False  # continue an interrupted run: finished phases reused (workbench.phases)
    ioi_classes: tuple[str, ...] = ()  # tasks whose IOI head classes are found (circuits.ioi_run)
    sizing: SizingOptions = field(default_factory=SizingOptions)  # --select faithfulness=X


def check_methods(methods: list[str]) -> None:
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise InputError(f"unknown method(s) {unknown or methods}; choose from {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise InputError(f"a method is named twice: {', '.join(methods)}")


def check_options(methods: list[str], select: str, *, direction: str, positions: str | None,
                  batch_size: int, heads_per_forward: int | None, stages: int,
                  receiver_input: str, n_random: int, mean_prompts: int | None,
                  heads: str | None = None, spot_check: int = 20,
                  both_directions: bool = False, grids: str | None = None, dla: bool = False,
                  grid_layers: str | None = None, ioi_classes: tuple[str, ...] = (),
                  sizing: SizingOptions | None = None, **run: object) -> CircuitsOptions:
    """Validate the command line before the model loads.

    ``heads``: ``None`` (every head) or a comma-separated ``layer.head`` list (``"23.3,20.0"``):
    the heads patched (activation), kept (attribution) or used as senders (path). ``grids``:
    comma-separated components of :data:`circuits.grids.COMPONENTS` (or ``all``) to patch per
    layer x position (``grid_layers``: only these layers, ``"0,14,29"``); ``dla``: direct logit
    attribution per head and MLP; ``ioi_classes``: the tasks whose IOI head classes are found
    (:mod:`circuits.ioi_run`).

    Raises:
        InputError: an unknown method, a bad selection, direction, receiver input, count, head or
            grid component (the message names the bad item).
    """
    check_methods(methods)
    check_direction(direction)
    check_receiver_input(receiver_input)
    for name, value, least in (("--batch-size", batch_size, 1), ("--stages", stages, 1),
                               ("--n-random", n_random, 0),
                               ("--mean-prompts", mean_prompts or 1, 1),
                               ("--spot-check", spot_check, 0),
                               ("--heads-per-forward", heads_per_forward or 1, 1)):
        if value < least:
            raise InputError(f"{name} must be at least {least}, got {value}")
    if grid_layers and not grids:
        raise InputError("--grid-layers chooses the layers of the --grids; give --grids too")
    discovery = DiscoveryOptions(direction, None if positions in (None, "all") else positions,
                                 batch_size, heads_per_forward, stages, receiver_input,
                                 parse_head_list(heads), spot_check)
    selection = Selection.parse(select)
    check_sizing(methods, selection, sizing, discovery)
    if both_directions and selection.by_faithfulness:
        raise InputError("--both-directions patches the circuit heads before the faithfulness "
                         "search chooses them; use it with --select top_k=N")
    return CircuitsOptions(methods, selection, discovery, n_random, mean_prompts,
                           **run, both_directions=both_directions,
                           grids=parse_components(grids), dla=dla,
                           grid_layers=parse_grid_layers(grid_layers),
                           ioi_classes=tuple(ioi_classes),
                           sizing=sizing or SizingOptions())


def check_sizing(methods: list[str], selection: Selection, sizing: SizingOptions | None,
                 discovery: DiscoveryOptions) -> None:
    """Refuse sizing options without ``--select faithfulness=X`` and methods that cannot rank.

    Raises:
        InputError: one line naming the option.
    """
    sizing = sizing or SizingOptions()
    if not selection.by_faithfulness:
        changed = [name for name, on in (
            ("--nodes heads,mlps", sizing.mlps), ("--max-size", sizing.max_size is not None),
            ("--held-out", sizing.held_out > 0),
            ("--refine-*", sizing.refine != RefineOptions())) if on]
        if changed:
            raise InputError(f"{', '.join(changed)} only apply to --select faithfulness=X "
                             f"(got --select {selection})")
        return
    if "path" in methods:
        raise InputError("--select faithfulness=X sizes a circuit from one ranking of heads; "
                         "path patching's staged circuit has none: use --select top_k=N with "
                         "--method path")
    if sizing.mlps and discovery.heads is not None:
        raise InputError("--nodes heads,mlps ranks every head and MLP; drop --heads")


def parse_head_list(text: str | None) -> tuple[Head, ...] | None:
    """``"23.3, 20.0"`` -> ``((20, 0), (23, 3))`` (sorted, unique); ``None`` -> ``None``.

    Raises:
        InputError: an item is not ``layer.head`` (named), or the list is empty.
    """
    if text is None:
        return None
    try:
        heads = parse_heads(text)
    except InputError as err:
        raise InputError(f"--heads: {err}") from None
    if not heads:
        raise InputError(f"--heads: no head given in {text!r}; write layer.head items separated "
                         "by commas (23.3,20.0)")
    return tuple(heads)
