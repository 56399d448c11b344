"""The ``workbench.jobs`` plug-ins: the jobs behind ``wb.atlas``, ``wb.circuits`` and
``wb.intervene`` (see :mod:`workbench.plugins`). They live in the composition root because they
compose the upper layers (``atlas``, ``circuits``, ``probes``) with the core; the public API
finds them through the entry points declared in ``pyproject.toml``.

Each takes a model (a ``LoadedModel`` or a spec to load) and the CLI command's options as keyword
arguments. ``runs_dir=None`` (circuits, intervene) runs in a temporary folder, reads every table
into :class:`~workbench.results.Results` and deletes the folder.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from workbench.errors import InputError
from workbench.results import Results


@contextlib.contextmanager
def _folder(runs_dir: Path | str | None) -> Iterator[Path]:
    if runs_dir is not None:
        yield Path(runs_dir)
        return
    with tempfile.TemporaryDirectory(prefix="workbench-") as tmp:
        yield Path(tmp)


def _common(runs_dir: Any, run_id: Any, resume: Any, overwrite: Any, progress: Any) -> None:
    """The arguments every job shares, checked with the CLI's rules (types included)."""
    from workbench.bounds import flag, text
    from workbench.manifest import check_run_id, check_runs_dir

    for name, value in (("resume", resume), ("overwrite", overwrite), ("progress", progress)):
        flag(value, name)
    if resume and overwrite:
        raise InputError("resume=True and overwrite=True contradict each other; choose one")
    if runs_dir is not None:
        if not isinstance(runs_dir, (str, Path)):
            raise InputError(f"runs_dir={runs_dir!r}: expected a folder path or None")
        check_runs_dir(Path(runs_dir), "runs_dir=")
    check_run_id(text(run_id, "run_id"), "run_id=")


def circuits(model: Any, tasks: Sequence[str] | str, *,
             methods: Sequence[str] | str | None = None, select: str | None = None,
             n_prompts: int | None = 32, direction: str = "corrupted_into_clean",
             positions: str = "all", batch_size: int = 16, heads_per_forward: int | None = None,
             stages: int = 2, receiver_input: str = "qkv", n_random: int = 3,
             mean_prompts: int | None = None, heads: str | None = None, spot_check: int = 20,
             both_directions: bool = False, grids: str | None = None,
             grid_layers: str | None = None, dla: bool = False, ioi_classes: bool = False,
             nodes: str = "heads", max_size: int | None = None,
             held_out: int = 0, refine_tolerance: float = 0.01, refine_candidates: int = 8,
             refine_rounds: int = 1, refine_budget: float | None = None,
             level: str = "node", metric: str = "logit_diff",
             ablation: str = "corrupted", ig_steps: int = 5, ig_rule: str = "right",
             n_boot: int = 1000, runs_dir: Path | str | None = None, run_id: str | None = None,
             overwrite: bool = False, resume: bool = False, progress: bool = False) -> Results:
    """``workbench circuits`` (same options, same tables): per-head effects, circuits,
    faithfulness and overlap for ``tasks`` (a name or file, or a list of them: ``"ioi"`` is one
    task); ``heads="23.3,20.0"`` restricts the methods to those heads, ``spot_check``,
    ``both_directions``, ``grids``, ``grid_layers``, ``dla``, ``ioi_classes`` and, with
    ``select="faithfulness=F"``, ``nodes``, ``max_size``, ``held_out`` and ``refine_*`` as the CLI
    options of the same names. ``level="edge"``: edge circuits (``methods`` ``eap-ig`` / ``eap``, ``select`` default
    ``faithfulness=0.8``, ``metric``, ``ablation``, ``ig_steps``, ``ig_rule``, ``n_boot``; see
    ``docs/methods-edges.md``). An option of the other level set to anything but its default is
    refused (:mod:`circuits.levels`).

    Raises:
        InputError: an unknown task or method, a bad option or argument type, an option of the
            other level (before the model loads; numbers against the CLI's bounds,
            :mod:`workbench.bounds`).
    """
    from circuits.levels import LEVELS, check_level_options
    from circuits.options import check_options
    from circuits.run import execute_circuits, load_tasks
    from circuits.tasks import resolve_task
    from workbench.bounds import check, flag, names, text
    from workbench.models import as_loaded
    from workbench.prompts import load_prompt_set

    tasks = names(tasks, "tasks", allow_empty=False)
    methods = None if methods is None else names(methods, "methods", allow_empty=False)
    check("circuits", n_prompts=n_prompts, batch_size=batch_size,
          heads_per_forward=heads_per_forward, stages=stages, n_random=n_random,
          mean_prompts=mean_prompts, spot_check=spot_check, ig_steps=ig_steps, n_boot=n_boot,
          max_size=max_size, held_out=held_out, refine_tolerance=refine_tolerance,
          refine_candidates=refine_candidates, refine_rounds=refine_rounds,
          refine_budget=refine_budget)
    for name, value in (("direction", direction), ("positions", positions),
                        ("receiver_input", receiver_input), ("level", level),
                        ("metric", metric), ("ablation", ablation), ("ig_rule", ig_rule)):
        text(value, name, optional=False)
    select, heads, grids = text(select, "select"), text(heads, "heads"), text(grids, "grids")
    grid_layers = text(grid_layers, "grid_layers")
    nodes = text(nodes, "nodes", optional=False)
    flag(ioi_classes, "ioi_classes")
    _common(runs_dir, run_id, resume, overwrite, progress)
    if level not in LEVELS:
        raise InputError(f"level={level!r} is not one of {', '.join(LEVELS)}")
    check_level_options(level, locals())
    if resume and level == "edge":
        raise InputError("resume=True: edge-level runs cannot resume yet")
    prompt_sets = {resolve_task(spec)[0]: load_prompt_set(resolve_task(spec)[1]) for spec in tasks}
    if ioi_classes:
        from circuits.ioi_run import check_ioi_prompts

        check_ioi_prompts(prompt_sets)
    if level == "edge":
        return _edge_circuits(model, tasks, methods, select, n_prompts=n_prompts,
                              metric=metric, ablation=ablation, ig_steps=ig_steps,
                              ig_rule=ig_rule, n_boot=n_boot, n_random=n_random,
                              batch_size=batch_size, runs_dir=runs_dir, run_id=run_id,
                              overwrite=overwrite, progress=progress)
    from circuits.sized import check_held_out, sizing_options

    sizing = sizing_options(nodes=nodes, max_size=max_size, held_out=held_out,
                            refine_tolerance=refine_tolerance, refine_candidates=refine_candidates,
                            refine_rounds=refine_rounds, refine_budget=refine_budget)
    for spec, prompt_set in zip(tasks, prompt_sets.values()):
        check_held_out(len(prompt_set), n_prompts, held_out, f"tasks={spec!r}")
    with _folder(runs_dir) as folder:
        options = check_options(list(methods or ["attribution"]), select or "top_k=20",
                                direction=direction, positions=positions,
                                batch_size=batch_size, heads_per_forward=heads_per_forward,
                                stages=stages, receiver_input=receiver_input,
                                n_random=n_random, mean_prompts=mean_prompts, heads=heads,
                                spot_check=spot_check, both_directions=both_directions,
                                grids=grids, grid_layers=grid_layers, dla=dla, sizing=sizing,
                                ioi_classes=tuple(prompt_sets) if ioi_classes else (),
                                runs_dir=folder, run_id=run_id,
                                overwrite=overwrite, progress=progress, resume=resume)
        loaded = as_loaded(model)
        found = load_tasks(tasks, loaded, n_prompts=n_prompts, positions=positions)
        return Results.of(execute_circuits(loaded, found, options))


def _edge_circuits(model: Any, tasks: list[str], methods: Sequence[str] | None,
                   select: str | None, *,
                   n_prompts: int | None, runs_dir: Path | str | None, **options: Any
                   ) -> Results:
    """``workbench circuits --level edge`` (:mod:`circuits.edges.run`), in memory or in
    ``runs_dir``."""
    from circuits.edges.run import check_edge_options, execute_edge_circuits
    from circuits.run import load_tasks
    from workbench.models import as_loaded

    with _folder(runs_dir) as folder:
        edge = check_edge_options(list(methods or ["eap-ig"]), select, runs_dir=folder,
                                  **options)
        loaded = as_loaded(model)
        found = load_tasks(tasks, loaded, n_prompts=n_prompts, positions=None)
        return Results.of(execute_edge_circuits(loaded, found, edge))


def intervene(model: Any, prompt_set: Any, spec: Any, *, sweep: str | None = None,
              probes: Sequence[Any] | str = (), params: dict | None = None,
              threshold: float = 0.5, generate: int = 0, n_generate: int = 3,
              batch_size: int = 8, runs_dir: Path | str | None = None,
              run_id: str | None = None, overwrite: bool = False, resume: bool = False,
              progress: bool = False) -> Results:
    """``workbench intervene`` (same options, same tables): ``prompt_set`` without and with
    ``spec`` (a list of intervention dicts, a Spec or a spec file), optionally swept.

    Raises:
        InputError: a bad spec, sweep, probe or argument (before the model loads; numbers
            against the CLI's bounds, :mod:`workbench.bounds`).
    """
    from workbench.api import check_prompts, probe_list
    from workbench.bounds import check, mapping, text
    from workbench.interventions import as_spec
    from workbench.interventions.evaluate import InterveneOptions, Sweep
    from workbench.interventions.evaluate import intervene as run_intervene
    from workbench.models import as_loaded
    from workbench.plugins import make_probes

    check("intervene", threshold=threshold, generate=generate, n_generate=n_generate,
          batch_size=batch_size)
    _common(runs_dir, run_id, resume, overwrite, progress)
    parsed = as_spec(spec)
    probes, params = probe_list(probes), mapping(params, "params")
    chosen = make_probes(probes, params) if probes else []
    check_prompts(prompt_set, chosen)
    with _folder(runs_dir) as folder:
        options = InterveneOptions(batch_size, Sweep.parse(text(sweep, "sweep")) if sweep
                                   else None, threshold, generate, n_generate, chosen, folder,
                                   run_id, overwrite, progress, ["wb.intervene"], resume)
        return Results.of(run_intervene(as_loaded(model), prompt_set, parsed, options))


def atlas(model: Any = "smollm2-135m", *, out: Path | str | None = None, **options: Any) -> Any:
    """``workbench atlas``: the battery and circuit tasks condensed into one row per head, written
    to ``out`` (default ``runs/atlas-<model>``); ``options`` are :class:`atlas.AtlasOptions`
    fields (``n_prompts``, ``skip``, ``resume`` ...), plus ``figures`` / ``summary`` (default
    False: export the atlas figure, print the summary, as the CLI's ``--figures`` /
    ``--summary``). Returns the :class:`atlas.build.Atlas`.

    Raises:
        InputError: an unknown option, a value of the wrong type or out of the CLI's bounds, a
            bad role threshold. RunStateError: as ``workbench atlas``.
    """
    import dataclasses

    from atlas import AtlasOptions, build_atlas
    from workbench.bounds import check, flag, names
    from workbench.models import as_loaded
    from workbench_cli.commands.atlas import _export_figure, check_thresholds, print_atlas

    figures = flag(options.pop("figures", False), "figures")
    summary = flag(options.pop("summary", False), "summary")
    known = {f.name for f in dataclasses.fields(AtlasOptions)} - {"out", "command"}
    stray = sorted(set(options) - known)
    if stray:
        raise InputError(f"wb.atlas(): unknown option(s) {', '.join(stray)}; options: out, "
                         f"figures, summary, {', '.join(sorted(known))}")
    check("atlas", **{k: options[k] for k in ("n_prompts", "circuit_size", "batch_size")
                      if k in options})
    check("circuits", **{k: options[k] for k in ("n_random",) if k in options})
    for key in ("tasks", "skip"):
        if key in options:
            options[key] = tuple(names(options[key], key))
    for key in ("natural", "repeated", "context"):
        if key in options and not isinstance(options[key], (str, Path)):
            raise InputError(f"{key}={options[key]!r}: expected a prompt file path")
    for key in ("thorough", "resume", "overwrite", "progress"):
        if key in options:
            flag(options[key], key)
    if "thresholds" in options:
        options["thresholds"] = check_thresholds(options["thresholds"], "thresholds=")
    if out is not None and not isinstance(out, (str, Path)):
        raise InputError(f"out={out!r}: expected a folder path")
    spec = model if isinstance(model, str) else model.info.name
    slug = spec.rstrip("/").split("/")[-1]
    opts = AtlasOptions(out=Path(out) if out else Path("runs") / f"atlas-{slug}",
                        progress=options.pop("progress", False), command=["wb.atlas"], **options)
    result = build_atlas(lambda: as_loaded(model), opts, model_spec=spec)
    if summary:
        print_atlas(result)
    if figures:
        _export_figure(result)
    return result
