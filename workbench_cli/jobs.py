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

from workbench.results import Results


@contextlib.contextmanager
def _folder(runs_dir: Path | str | None) -> Iterator[Path]:
    if runs_dir is not None:
        yield Path(runs_dir)
        return
    with tempfile.TemporaryDirectory(prefix="workbench-") as tmp:
        yield Path(tmp)


def circuits(model: Any, tasks: Sequence[str], *, methods: Sequence[str] | None = None,
             select: str | None = None, n_prompts: int | None = 32,
             direction: str = "corrupted_into_clean", positions: str = "all",
             batch_size: int = 16, heads_per_forward: int | None = None, stages: int = 2,
             receiver_input: str = "qkv", n_random: int = 3, mean_prompts: int | None = None,
             heads: str | None = None, spot_check: int = 20, both_directions: bool = False,
             grids: str | None = None, dla: bool = False, level: str = "node",
             metric: str = "logit_diff", ablation: str = "corrupted", ig_steps: int = 5,
             ig_rule: str = "right", n_boot: int = 1000,
             runs_dir: Path | str | None = None, run_id: str | None = None,
             overwrite: bool = False, progress: bool = False) -> Results:
    """``workbench circuits`` (same options, same tables): per-head effects, circuits,
    faithfulness and overlap for ``tasks``; ``heads="23.3,20.0"`` restricts the methods to those
    heads, ``spot_check``, ``both_directions``, ``grids`` and ``dla`` as the CLI options of the
    same names. ``level="edge"``: edge circuits (``methods`` ``eap-ig`` / ``eap``, ``select``
    default ``faithfulness=0.8``, ``metric``, ``ablation``, ``ig_steps``, ``ig_rule``,
    ``n_boot``; see ``docs/methods-edges.md``). An option of the other level set to anything but
    its default is refused (:mod:`circuits.levels`).

    Raises:
        InputError: an unknown task or method, a bad option, an option of the other level
            (before the model loads).
    """
    from circuits.levels import check_level_options
    from circuits.run import check_options, execute_circuits, load_tasks
    from circuits.tasks import resolve_task
    from workbench.models import as_loaded
    from workbench.prompts import load_prompt_set

    check_level_options(level, locals())
    for spec in tasks:
        load_prompt_set(resolve_task(spec)[1])
    if level == "edge":
        return _edge_circuits(model, list(tasks), methods, select, n_prompts=n_prompts,
                              metric=metric, ablation=ablation, ig_steps=ig_steps,
                              ig_rule=ig_rule, n_boot=n_boot, n_random=n_random,
                              batch_size=batch_size, runs_dir=runs_dir, run_id=run_id,
                              overwrite=overwrite, progress=progress)
    with _folder(runs_dir) as folder:
        options = check_options(list(methods or ["attribution"]), select or "top_k=20",
                                direction=direction, positions=positions,
                                batch_size=batch_size, heads_per_forward=heads_per_forward,
                                stages=stages, receiver_input=receiver_input,
                                n_random=n_random, mean_prompts=mean_prompts, heads=heads,
                                spot_check=spot_check, both_directions=both_directions,
                                grids=grids, dla=dla, runs_dir=folder,
                                run_id=run_id, overwrite=overwrite, progress=progress)
        loaded = as_loaded(model)
        found = load_tasks(list(tasks), loaded, n_prompts=n_prompts, positions=positions)
        return Results.of(execute_circuits(loaded, found, options))


def _edge_circuits(model: Any, tasks: list[str], methods: Sequence[str] | None,
                   select: str | None, *,
                   n_prompts: int | None, runs_dir: Path | str | None, **options: Any
                   ) -> Results:
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
              probes: Sequence[Any] = (), params: dict | None = None, threshold: float = 0.5,
              generate: int = 0, n_generate: int = 3, batch_size: int = 8,
              runs_dir: Path | str | None = None, run_id: str | None = None,
              overwrite: bool = False, progress: bool = False) -> Results:
    """``workbench intervene`` (same options, same tables): ``prompt_set`` without and with
    ``spec`` (a list of intervention dicts, a Spec or a spec file), optionally swept.

    Raises:
        InputError: a bad spec, sweep or probe (before the model loads).
    """
    from workbench.api import check_prompts
    from workbench.interventions import as_spec
    from workbench.interventions.evaluate import InterveneOptions, Sweep
    from workbench.interventions.evaluate import intervene as run_intervene
    from workbench.models import as_loaded
    from workbench.plugins import make_probes

    parsed = as_spec(spec)
    chosen = make_probes(list(probes), params) if probes else []
    check_prompts(prompt_set, chosen)
    with _folder(runs_dir) as folder:
        options = InterveneOptions(batch_size, Sweep.parse(sweep) if sweep else None, threshold,
                                   generate, n_generate, chosen, folder, run_id, overwrite,
                                   progress, ["wb.intervene"])
        return Results.of(run_intervene(as_loaded(model), prompt_set, parsed, options))


def atlas(model: Any = "smollm2-135m", *, out: Path | str | None = None, **options: Any) -> Any:
    """``workbench atlas``: the battery and circuit tasks condensed into one row per head, written
    to ``out`` (default ``runs/atlas-<model>``); ``options`` are :class:`atlas.AtlasOptions`
    fields (``n_prompts``, ``skip``, ``resume`` ...). Returns the :class:`atlas.build.Atlas`.

    Raises:
        InputError, RunStateError: as ``workbench atlas``.
    """
    from atlas import AtlasOptions, build_atlas
    from workbench.models import as_loaded

    spec = model if isinstance(model, str) else model.info.name
    slug = spec.rstrip("/").split("/")[-1]
    opts = AtlasOptions(out=Path(out) if out else Path("runs") / f"atlas-{slug}",
                        progress=options.pop("progress", False), command=["wb.atlas"], **options)
    return build_atlas(lambda: as_loaded(model), opts, model_spec=spec)
