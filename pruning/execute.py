"""The three ``workbench heads`` jobs, each writing one run (tables: :mod:`pruning.run`).

Every input is checked (objective, prompts, modes, lambdas, split) before the run directory is
created; a job that fails afterwards leaves its run marked ``failed`` (``interrupted`` after
Ctrl-C or SIGTERM). Each finished phase (the importance, each removal order's curve, each
lambda's gates) is kept in the run folder (:mod:`workbench.phases`), so ``--resume`` after a kill
redoes only the unfinished phase; a resumed complete run is returned as it is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from pruning.importance import head_importance
from pruning.learn import GateTraining, evaluate_gates, gates_spec, split_prompts, train_gates
from pruning.objectives import PromptData
from pruning.prune import (check_mode, evaluate, head_means, importance_order, pruning_curve,
                           random_order, removal_counts)
from pruning.run import (HeadsOptions, Timer, curve_table, finish_run, gates_table,
                         importance_table, start_run, write_spec)
from workbench.bounds import lookup
from workbench.errors import InputError
from workbench.phases import Phases
from workbench.store import RunDir


@contextlib.contextmanager
def _bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not enabled, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _importance(model, data: PromptData, options: HeadsOptions, timer: Timer,
                phases: Phases):
    """Every head's importance on ``data`` with a progress bar over prompts (timed)."""
    def compute():
        with _bar(options.progress, "importance (prompts)", len(data.ids)) as step:
            return head_importance(model, data, batch_size=options.batch_size, progress=step)

    imp = phases.run("importance", compute)
    timer.lap("importance")
    return imp


def run_importance(model, data: PromptData, prompt_set, options: HeadsOptions) -> RunDir:
    """Michel importance of every head on ``data`` (table ``head_importance``)."""
    run = start_run(model, data, prompt_set, "importance", options)
    if run.state == "complete":
        return run
    timer = Timer()
    with Phases.guarding(run) as phases:
        imp = _importance(model, data, options, timer, phases)
        tables = {"head_importance": importance_table(imp, data.objective.metric)}
        return finish_run(run, model, data, tables, timer.timings)


def check_prune(mode: str, step: float, seeds: int, tolerance: float) -> None:
    """Raises :class:`InputError` for a bad mode, step, seed count or tolerance."""
    check_mode(mode)
    for name, value in (("--step", step), ("--seeds", seeds), ("--tolerance", tolerance)):
        lookup("heads prune", name).check(value, name)  # the CLI's bounds (workbench.bounds)
    removal_counts(1, step)


def run_prune(model, data: PromptData, prompt_set, options: HeadsOptions, *, mode: str = "zero",
              step: float = 0.1, seeds: int = 3, tolerance: float = 0.05) -> RunDir:
    """Importance, then the pruning curve in importance order and in ``seeds`` random orders
    (tables ``head_importance`` and ``pruning_curve``)."""
    check_prune(mode, step, seeds, tolerance)
    info = model.info
    n_total = info.n_layers * info.n_heads
    counts = removal_counts(n_total, step)
    run = start_run(model, data, prompt_set, "prune", options)
    if run.state == "complete":
        return run
    timer = Timer()
    with Phases.guarding(run) as phases:
        imp = _importance(model, data, options, timer, phases)
        means = phases.run("means", lambda: head_means(model, data, options.batch_size)) \
            if mode == "mean" else None
        orders = [("importance", importance_order(imp.normalised))] + [
            (f"random-{s}", random_order(info.n_layers, info.n_heads, s)) for s in range(seeds)]
        curves = []
        with _bar(options.progress, "pruning curve (steps)", len(counts) * len(orders)) as adv:
            for name, order in orders:
                curves.append(phases.run(f"curve {name}", lambda: pruning_curve(
                    model, data, order, counts, name, means=means,
                    batch_size=options.batch_size, progress=adv)))
        timer.lap("curves")
        table, fractions = curve_table(curves, data.ids, data.objective, n_total, tolerance)
        tables = {"head_importance": importance_table(imp, data.objective.metric),
                  "pruning_curve": table}
        return finish_run(run, model, data, tables, timer.timings, removable_fraction=fractions)


def check_lambdas(lambdas: list[float]) -> list[float]:
    """Raises :class:`InputError` for no lambda, a negative one or a repeated one."""
    if not lambdas:
        raise InputError("--lambda: give at least one value")
    lookup("heads learn-gates", "--lambda").check(list(lambdas), "--lambda")
    if any(v < 0 for v in lambdas) or len(set(lambdas)) != len(lambdas):
        raise InputError(f"--lambda values must be distinct and >= 0, got {lambdas}")
    return list(lambdas)


def run_learn(model, data: PromptData, prompt_set, options: HeadsOptions, *,
              lambdas: list[float], training: GateTraining, eval_fraction: float = 0.5,
              split_seed: int = 0) -> tuple[RunDir, dict[float, str]]:
    """Train gates for every lambda on the train split, evaluate on the held-out split (table
    ``learned_gates``) and write each lambda's spec. Returns the run and ``{lambda: spec path}``.
    """
    check_lambdas(lambdas)
    train_ids, eval_ids = split_prompts(data.ids, eval_fraction, split_seed)
    train, held_out = data.subset(train_ids), data.subset(eval_ids)
    run = start_run(model, data, prompt_set, "learn-gates", options)
    if run.state == "complete":
        return run, {float(k): v for k, v in (run.read_manifest().get("specs") or {}).items()}
    timer = Timer()
    with Phases.guarding(run) as phases:
        base = phases.run("baseline", lambda: evaluate(model, held_out, _ones(model), None,
                                                       options.batch_size))
        learned, specs = [], {}
        for lam in lambdas:
            config = GateTraining(lam, training.steps, training.lr, training.batch_size,
                                  training.init, training.seed, training.distribution)

            def train_one(config=config, lam=lam):
                with _bar(options.progress, f"gates lambda={lam:g} (steps)",
                          config.steps) as adv:
                    item = train_gates(model, train, config, progress=adv)
                evaluate_gates(model, held_out, item, options.batch_size)
                return item

            item = phases.run(f"gates lambda={lam!r}", train_one)
            learned.append(item)
            specs[lam] = str(write_spec(run, item, gates_spec(item.gates)))
            timer.lap(f"train_lambda={lam:g}")
        table = gates_table(learned, eval_ids, base, data.objective)
        history = {f"lambda={g.lam:g}": [list(h) for h in g.history[::10]] for g in learned}
        finish_run(run, model, data, {"learned_gates": table}, timer.timings,
                   split={"train": train_ids, "eval": eval_ids, "seed": split_seed,
                          "eval_fraction": eval_fraction},
                   specs=specs, history=history)
    return run, specs


def _ones(model):
    import torch

    return torch.ones(model.info.n_layers, model.info.n_heads)


def frontier_lines(run: RunDir) -> list[str]:
    """``lambda, open gates, held-out metric, degradation`` lines of a learn-gates run."""
    frame = run.read_table("learned_gates").to_pandas()
    summary = frame[frame["layer"].isna() & frame["prompt_id"].isna()]
    wide = summary.pivot_table(index="condition", columns="metric", values="value", sort=False)
    return wide.to_string(float_format=lambda v: f"{v:.4g}").splitlines()
