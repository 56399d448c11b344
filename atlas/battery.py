"""The atlas battery: the probe runs and the circuits run an atlas is built from.

Four parts, each an ordinary run in the runs folder beside the atlas (``<out.name>-<part>``), so
``workbench runs``, the app and the figures read them like any other run:

* ``natural``: attention entropy, attention sinks, massive activations and position bias on
  ``data/natural.jsonl``, all four in one shared forward per batch;
* ``repeated``: head types (previous-token, duplicate-token, induction) on
  ``data/repeated_tokens.jsonl``;
* ``context``: head divergence on ``data/counterfactual_context.jsonl``, segment ``passage``
  (its own forwards: with and without the passage);
* ``circuits``: attribution patching (and activation patching with ``thorough``) on the IOI and
  induction tasks, each task's circuit chosen by ``circuit_select`` (default ``faithfulness=0.8``:
  the smallest prefix of the ranking whose normalised faithfulness reaches 0.8, then refined;
  :mod:`circuits.sized`), checked on held-out prompts, its faithfulness curve and overlap; the
  IOI head classes of every task whose prompts carry the IOI positions (:mod:`circuits.ioi_classes`).
* ``composition``: Q-, K-, V-composition scores of every head pair and per-head OV copying scores,
  from the weights alone (:mod:`atlas.composition`);
* ``causal``: each role's heads ablated against layer-matched random heads, on a behaviour chosen
  for the role (:mod:`atlas.causal_part`); it runs after the roles are known.

Resuming (``resume=True``) continues each probe run batch by batch and keeps a finished circuits run
whose configuration matches; the model is loaded only if some part still has work to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import InputError, RunStateError
from workbench.store import MANIFEST, RunDir

DATA = Path(__file__).resolve().parent.parent / "data"
PARTS = ("natural", "repeated", "context", "circuits", "composition", "causal")
LATE_PARTS = ("causal",)  # need the roles: run by atlas.build after the other parts
DEFAULT_SELECT = "faithfulness=0.8"
MAX_RANDOM = 1000
CIRCUIT_ROLES = {"ioi_circuit": "ioi", "induction_circuit": "induction"}  # role -> task name
PROBE_PARTS: dict[str, tuple[str, list[str], dict[str, dict[str, str]]]] = {
    # part: (options attribute holding the prompt file, probes, probe parameters)
    "natural": ("natural", ["attention_entropy", "attention_sink", "massive_activations",
                            "position_bias"], {}),
    "repeated": ("repeated", ["head_types"], {}),
    "context": ("context", ["head_divergence"], {"head_divergence": {"segment": "passage"}}),
}


@dataclass
class AtlasOptions:
    """What an atlas runs and where it goes.

    Attributes:
        out: the atlas folder (``atlas.parquet``, ``atlas.json``, ``run.json``, ``figures/``); its
            parts are runs beside it, ``<out.parent>/<out.name>-<part>``.
        natural, repeated, context: the prompt files of the probe parts.
        tasks: circuit tasks (shipped names or task JSONL files).
        n_prompts: prompts per circuit task (the first N of the file).
        thorough: also activation patching (one forward per head and prompt batch; minutes), which
            then decides the circuit roles.
        circuit_select: how each task's circuit is chosen (:class:`circuits.discovery.Selection`;
            default ``faithfulness=0.8``).
        circuit_size: ``top_k`` circuits of this size instead (``None``: ``circuit_select``).
        circuit_max_size: the largest circuit the faithfulness search considers (``None``: every
            head).
        held_out: prompts of each task file after the first ``n_prompts`` to check the chosen
            circuit on (``None``: ``n_prompts`` of them, or as many as the file has left).
        n_random: random circuits in the faithfulness baseline (and per size of the curve).
        thresholds: per-role threshold overrides (:data:`atlas.roles.ROLES`).
        skip: parts not to run (their roles stay unmeasured).
        causal_draws: random head sets per role in the causal part's control (1..1000).
        causal_prompts: prompts per behaviour in the causal part (2..512).
        causal_seed: seed of the control draws.
    """

    out: Path = Path("runs/atlas")
    natural: Path = DATA / "natural.jsonl"
    repeated: Path = DATA / "repeated_tokens.jsonl"
    context: Path = DATA / "counterfactual_context.jsonl"
    tasks: tuple[str, ...] = ("ioi", "induction")
    n_prompts: int | None = 32
    thorough: bool = False
    circuit_select: str = DEFAULT_SELECT
    circuit_size: int | None = None
    circuit_max_size: int | None = None
    held_out: int | None = None
    n_random: int = 3
    thresholds: dict[str, float] = field(default_factory=dict)
    skip: tuple[str, ...] = ()
    causal_draws: int = 20
    causal_prompts: int = 12
    causal_seed: int = 0
    batch_size: int | None = None
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        bad = sorted(set(self.skip) - set(PARTS))
        if bad:
            raise InputError(f"--skip {','.join(bad)}: not an atlas part; parts: {', '.join(PARTS)}")
        if set(self.skip) >= set(PROBE_PARTS) | {"circuits"}:  # no part that gives roles
            raise InputError(f"--skip {','.join(self.skip)}: every part is skipped; nothing to "
                             "build an atlas from")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite contradict each other; choose one")
        for name, value in (("--circuit-size", self.circuit_size or 1), ("--n-prompts",
                                                                            self.n_prompts or 1),
                            ("--circuit-max-size", self.circuit_max_size or 1)):
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        if self.n_random < 0 or self.n_random > MAX_RANDOM:
            raise InputError(f"--n-random must be between 0 and {MAX_RANDOM}, got "
                             f"{self.n_random}")
        if self.circuit_size is not None and self.circuit_select != DEFAULT_SELECT:
            raise InputError(f"--circuit-size {self.circuit_size} and --circuit-select "
                             f"{self.circuit_select} contradict each other; choose one")
        from circuits.sized import SizingOptions

        selection = self.selection  # checks the rule and its bounds
        SizingOptions(max_size=self.circuit_max_size, held_out=self.held_out or 0)
        if not selection.by_faithfulness and self.circuit_max_size is not None:
            raise InputError(f"--circuit-max-size only applies to --circuit-select "
                             f"faithfulness=F (got {selection})")
        member = sorted(r for r in self.thresholds if r in CIRCUIT_ROLES)
        if member:
            raise InputError(f"--threshold {member[0]}: a circuit role holds the heads of the "
                             f"circuit chosen by --circuit-select (now {selection}), not a "
                             "threshold; use --circuit-select top_k=N or faithfulness=F")
        from workbench.bounds import BOUNDS

        for name in ("causal-draws", "causal-prompts", "causal-seed"):
            BOUNDS[f"atlas --{name}"].check(getattr(self, name.replace("-", "_")), f"--{name}")

    @property
    def runs_dir(self) -> Path:
        return self.out.parent

    def run_id(self, part: str) -> str:
        return f"{self.out.name}-{part}"

    @property
    def methods(self) -> list[str]:
        return ["attribution", "activation"] if self.thorough else ["attribution"]

    @property
    def selection(self):
        """The circuits' :class:`circuits.discovery.Selection` (``top_k`` with ``circuit_size``).

        Raises:
            InputError: a malformed or out-of-range rule.
        """
        from circuits.discovery import Selection

        if self.circuit_size is not None:
            return Selection("top_k", self.circuit_size)
        return Selection.parse(self.circuit_select)

    @property
    def circuit_method(self) -> str:
        """The method whose circuits decide the circuit roles (the most faithful one run)."""
        return self.methods[-1]


def check_inputs(options: AtlasOptions) -> dict[str, Any]:
    """Load every prompt file of the parts to run (errors name file and line) before a model
    loads; returns ``{part: PromptSet}`` for the probe parts.

    Raises:
        InputError: a missing or malformed prompt file, an unknown task.
    """
    from circuits.tasks import resolve_task
    from workbench.prompts import load_prompt_set

    sets = {part: load_prompt_set(getattr(options, attr))
            for part, (attr, _, _) in PROBE_PARTS.items() if part not in options.skip}
    if "circuits" not in options.skip:
        from circuits.task_checks import check_task_file

        tasks = set(CIRCUIT_ROLES.values())
        for task in options.tasks:
            name, path = resolve_task(task)
            if name not in tasks:
                raise InputError(f"--task {task}: the atlas's circuit roles are "
                                 f"{', '.join(CIRCUIT_ROLES)}, read from tasks named "
                                 f"{' and '.join(sorted(tasks))}; a task named {name!r} would "
                                 f"label no head. Name its file {'.jsonl or '.join(sorted(tasks))}"
                                 f".jsonl, or study it with `workbench circuits --task {task}`")
            held = held_out_prompts(options, len(load_prompt_set(path)))
            check_task_file(path, options.n_prompts, held, where=f"--task {task}")
    return sets


def run_parts(load: Callable[[], Any], options: AtlasOptions, prompt_sets: dict[str, Any],
              on_part: Callable[[str, int, int], None] = lambda *_: None,
              model_spec: str = "") -> dict[str, dict]:
    """Run (or resume) every part not skipped. ``load()`` is called once, when the first part
    with work to do starts. Returns ``{part: {"run_id", "seconds", "state"}}``.

    Raises:
        RunStateError: a part's folder exists and is not resumable (see :class:`RunDir`).
    """
    model = None
    done: dict[str, dict] = {}
    todo = [p for p in PARTS if p not in options.skip]
    for i, part in enumerate(todo, start=1):
        if part in LATE_PARTS:
            continue
        on_part(part, i, len(todo))
        start = time.perf_counter()
        if _finished(options, part, prompt_sets.get(part), model_spec):
            done[part] = {"run_id": options.run_id(part), "seconds": 0.0, "state": "kept"}
            continue
        if model is None:
            model = load()
            if "circuits" in todo[i - 1:]:  # tokenised checks (equal lengths) before any part
                _circuit_tasks(model, options)
        if part == "composition":
            from atlas.causal_part import run_composition

            run_composition(model, options, model_spec)
        elif part == "circuits":
            _run_circuits(model, options)
        else:
            _run_probes(model, options, part, prompt_sets[part])
        done[part] = {"run_id": options.run_id(part),
                      "seconds": round(time.perf_counter() - start, 3), "state": "run"}
    return done


def _finished(options: AtlasOptions, part: str, prompt_set: Any = None,
              model_spec: str = "") -> bool:
    """Resuming, and the part's run is complete with the prompts, probes or circuit settings
    asked for (the atlas's own configuration, model and tasks included, is checked first by
    :func:`atlas.build.build_atlas`)."""
    if part == "composition":
        from atlas.causal_part import composition_finished

        return composition_finished(options, model_spec)
    path = options.runs_dir / options.run_id(part) / MANIFEST
    if not options.resume or not path.is_file():
        return False
    try:
        stored = RunDir(path.parent).read_manifest()
    except RunStateError:
        return False
    if stored.get("status") != "complete":
        return False
    if part != "circuits":
        return (stored.get("prompts", {}).get("sha256") == prompt_set.sha256
                and [p.get("name") for p in stored.get("probes", [])] == PROBE_PARTS[part][1])
    key = stored.get("config_key", {})
    sizing = _sizing(options)
    return (key.get("methods") == options.methods and key.get("n_random") == options.n_random
            and key.get("selection") == str(options.selection)
            and key.get("sizing") == (_as_dict(sizing) if options.selection.by_faithfulness
                                      else None)
            and key.get("ioi_classes", {}).get("tasks", []) == list(_ioi_tasks(options)))


def _ioi_tasks(options: AtlasOptions) -> tuple[str, ...]:
    """The circuit tasks whose prompts carry the IOI positions: their head classes are found."""
    from circuits.ioi_run import has_ioi_segments
    from circuits.tasks import resolve_task
    from workbench.prompts import load_prompt_set

    named = [resolve_task(t) for t in options.tasks]
    return tuple(name for name, path in named if has_ioi_segments(load_prompt_set(path)))


def _as_dict(sizing) -> dict:
    from dataclasses import asdict

    return asdict(sizing)


def held_out_prompts(options: AtlasOptions, n_file: int) -> int:
    """Held-out prompts of a task file: ``options.held_out``, or by default ``n_prompts`` of them
    (as many as the file has left after the scored ones)."""
    if options.held_out is not None:
        return options.held_out
    used = n_file if options.n_prompts is None else min(options.n_prompts, n_file)
    return max(0, min(used, n_file - used))


def _sizing(options: AtlasOptions):
    """The circuits' :class:`circuits.sized.SizingOptions` (held-out: the smallest any task file
    allows, so one setting serves every task)."""
    from circuits.sized import SizingOptions
    from circuits.tasks import resolve_task
    from workbench.prompts import load_prompt_set

    held = min((held_out_prompts(options, len(load_prompt_set(resolve_task(t)[1])))
                for t in options.tasks), default=0)
    return SizingOptions(max_size=options.circuit_max_size, held_out=held)


def _circuit_tasks(model: Any, options: AtlasOptions) -> list:
    """Load and tokenise every circuit task with its held-out prompts (equal clean/corrupted
    lengths, answer tokens) right after the model loads, before the first part runs.

    Raises:
        InputError: the first bad prompt, named by file and id.
    """
    from circuits.run import load_tasks

    held = _sizing(options).held_out
    n = None if options.n_prompts is None else options.n_prompts + held
    return load_tasks(list(options.tasks), model, n_prompts=n, positions=None)


def _run_probes(model: Any, options: AtlasOptions, part: str, prompt_set: Any) -> RunDir:
    from probes import make_probes
    from workbench.run import RunOptions, execute_run

    _, names, params = PROBE_PARTS[part]
    run_options = RunOptions(runs_dir=options.runs_dir, run_id=options.run_id(part),
                             batch_size=options.batch_size, resume=options.resume,
                             overwrite=options.overwrite, progress=options.progress,
                             command=options.command)
    return execute_run(model, prompt_set, make_probes(names, params), run_options)


def _run_circuits(model: Any, options: AtlasOptions) -> RunDir:
    from circuits.options import CircuitsOptions
    from circuits.run import execute_circuits, load_tasks

    tasks = load_tasks(list(options.tasks), model, n_prompts=options.n_prompts, positions=None)
    path = options.runs_dir / options.run_id("circuits")
    # an unfinished or differently configured circuits run of this atlas starts again (it has
    # no batch-level resume); a folder that is not a run is never replaced
    replace = options.overwrite or (options.resume and (path / MANIFEST).is_file())
    circuit_options = CircuitsOptions(
        methods=options.methods, selection=options.selection,
        n_random=options.n_random, runs_dir=options.runs_dir, run_id=options.run_id("circuits"),
        overwrite=replace, progress=options.progress, sizing=_sizing(options),
        ioi_classes=_ioi_tasks(options))
    return execute_circuits(model, tasks, circuit_options)
