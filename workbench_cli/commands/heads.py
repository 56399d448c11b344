"""``workbench heads importance | prune | learn-gates``: head importance, pruning curves and learned
head gates (METHODS.md section 9; the ``pruning`` package, imported inside the command bodies).

Bad input (objective, prompts, removal mode, step, lambdas, split) stops with one line and exit
code 2 before the model loads or anything is written, where it can be checked without the model.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from workbench_cli.commands.common import (BATCH_SIZE, DEVICE, DTYPE, MODEL, OVERWRITE, PREPEND_BOS,
                                       PROGRESS, RECHECK, RESUME, RUN_ID, RUNS_DIR,
                                       STRICT_PARITY, TYPER, _load, auto_batch_size,
                                       check_resume, list_option, out)
from workbench.errors import InputError
from workbench.heads import format_head

heads_app = typer.Typer(**TYPER, no_args_is_help=True,
                        help="Head importance (Michel et al.), pruning curves and learned L0 "
                             "head gates (Voita et al.) as intervention specs.")

PROMPTS = list_option(..., "--prompts", "-p", metavar="PATH", kind=Path,
                      help="JSONL prompt set(s) (data/natural.jsonl for lm, data/ioi.jsonl for "
                           "logit_diff).")
OBJECTIVE = typer.Option("lm", "--objective", metavar="OBJECTIVE",
                         help="lm (next-token loss) or logit_diff "
                              "(answer - distractor; needs both fields).")
N_PROMPTS = typer.Option(None, "--n-prompts", metavar="N",
                         help="Use the first N prompts (default: all).")
BATCH = BATCH_SIZE


def _prepare(model, prompts: list[Path], objective: str, n_prompts, device, dtype, prepend_bos,
             strict_parity: bool, options, recheck: bool = False):
    """Load the prompts and the model and tokenise; ``options.batch_size`` left at None (the
    default) becomes the shared rule's size for the longest prompt (:func:`auto_batch_size`)."""
    from pruning.objectives import check_objective, prepare
    from workbench.prompts import load_prompt_set

    check_objective(objective)
    check_resume(options.runs_dir, options.run_id, options.resume, options.overwrite)
    prompt_set = load_prompt_set(prompts)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   recheck=recheck)
    data = prepare(loaded, prompt_set, objective, n_prompts)
    options.batch_size = auto_batch_size(options.batch_size, loaded,
                                         [t.n_tokens for t in data.tokenized])
    return loaded, prompt_set, data


def _options(runs_dir, run_id, overwrite, progress, batch_size, params, resume=False):
    from pruning.run import HeadsOptions

    return HeadsOptions(runs_dir, run_id, overwrite, progress, batch_size, sys.argv, params,
                        resume)


@heads_app.command("importance")
def importance(model: str = MODEL, prompts: list[Path] = PROMPTS, objective: str = OBJECTIVE,
               n_prompts: Optional[int] = N_PROMPTS, batch_size: Optional[int] = BATCH,
               device: Optional[str] = DEVICE, dtype: Optional[str] = DTYPE,
               prepend_bos: Optional[bool] = PREPEND_BOS, runs_dir: Path = RUNS_DIR,
               run_id: Optional[str] = RUN_ID, overwrite: bool = OVERWRITE,
               resume: bool = RESUME,
               strict_parity: bool = STRICT_PARITY, progress: bool = PROGRESS,
               recheck: bool = RECHECK) -> None:
    """Michel et al. importance E_x |dL/dg_h| of every head (one forward + backward per batch)."""
    from pruning.execute import run_importance

    options = _options(runs_dir, run_id, overwrite, progress, batch_size, {}, resume)
    loaded, prompt_set, data = _prepare(model, prompts, objective, n_prompts, device, dtype,
                                        prepend_bos, strict_parity, options, recheck)
    run = run_importance(loaded, data, prompt_set, options)
    frame = run.read_table("head_importance").to_pandas()
    top = frame[frame.metric == "importance_norm"].nlargest(5, "value")
    out.print("most important heads (normalised): " + ", ".join(
        f"{format_head((r.layer, r.head))} ({r.value:.3f})" for r in top.itertuples()))
    out.print(f"[green]complete[/]: {escape(str(run.path))}")


@heads_app.command("prune")
def prune(model: str = MODEL, prompts: list[Path] = PROMPTS, objective: str = OBJECTIVE,
          n_prompts: Optional[int] = N_PROMPTS,
          ablation: str = typer.Option("zero", "--ablation", metavar="MODE",
                                       help="zero or mean (per-head mean "
                                            "z over the prompts' tokens)."),
          step: float = typer.Option(0.1, "--step", metavar="X",
                                     help="Fraction of heads removed per step."),
          seeds: int = typer.Option(3, "--seeds", metavar="N",
                                    help="Random removal orders (the control)."),
          tolerance: float = typer.Option(0.05, "--tolerance", metavar="X",
                                          help="Relative degradation "
                                               "allowed for the removable fraction."),
          batch_size: Optional[int] = BATCH, device: Optional[str] = DEVICE,
          dtype: Optional[str] = DTYPE,
          prepend_bos: Optional[bool] = PREPEND_BOS, runs_dir: Path = RUNS_DIR,
          run_id: Optional[str] = RUN_ID, overwrite: bool = OVERWRITE, resume: bool = RESUME,
          strict_parity: bool = STRICT_PARITY, progress: bool = PROGRESS,
          recheck: bool = RECHECK) -> None:
    """Pruning curve: remove heads by increasing importance (and at random), step by step."""
    from pruning.execute import check_prune, run_prune

    check_prune(ablation, step, seeds, tolerance)
    options = _options(runs_dir, run_id, overwrite, progress, batch_size,
                       {"ablation": ablation, "step": step, "seeds": seeds,
                        "tolerance": tolerance, "order": "normalised importance, estimated "
                        "once (not re-estimated after each step)"}, resume)
    loaded, prompt_set, data = _prepare(model, prompts, objective, n_prompts, device, dtype,
                                        prepend_bos, strict_parity, options, recheck)
    run = run_prune(loaded, data, prompt_set, options, mode=ablation, step=step, seeds=seeds,
                    tolerance=tolerance)
    fractions = run.read_manifest()["removable_fraction"]
    out.print(f"removable at <= {tolerance:.0%} degradation: importance order "
              f"{fractions['importance']:.0%}, random orders {fractions['random']:.0%} (range "
              f"{fractions['random_min']:.0%}-{fractions['random_max']:.0%})")
    out.print(f"[green]complete[/]: {escape(str(run.path))}")


@heads_app.command("learn-gates")
def learn_gates(model: str = MODEL, prompts: list[Path] = PROMPTS, objective: str = OBJECTIVE,
                n_prompts: Optional[int] = N_PROMPTS,
                # floats (list_option converts; typer would refuse "0.01,0.1" as a float)
                lambdas: list[str] = list_option(["0.01"], "--lambda", metavar="X", kind=float,
                                                   help="L0 penalty per open gate; several "
                                                        "make a frontier."),
                steps: int = typer.Option(200, "--steps", metavar="N",
                                          help="Training steps per lambda."),
                lr: float = typer.Option(0.05, "--lr", metavar="X",
                                         help="Adam learning rate on log alpha."),
                eval_fraction: float = typer.Option(0.5, "--eval-fraction", metavar="X",
                                                    help="Held-out share of the prompts."),
                seed: int = typer.Option(0, "--seed", metavar="N",
                                         help="Split, batches and gate noise."),
                batch_size: Optional[int] = BATCH, device: Optional[str] = DEVICE,
                dtype: Optional[str] = DTYPE, prepend_bos: Optional[bool] = PREPEND_BOS,
                runs_dir: Path = RUNS_DIR, run_id: Optional[str] = RUN_ID,
                overwrite: bool = OVERWRITE, resume: bool = RESUME,
                strict_parity: bool = STRICT_PARITY, progress: bool = PROGRESS,
                recheck: bool = RECHECK) -> None:
    """Train hard-concrete L0 gates (model frozen) per lambda; write specs for `intervene`."""
    from pruning.execute import check_lambdas, frontier_lines, run_learn
    from pruning.learn import GateTraining, split_prompts

    check_lambdas(lambdas)
    training = GateTraining(lambdas[0], steps, lr, batch_size or 1, seed=seed)
    split_prompts(["a", "b"], eval_fraction)  # the fraction itself, before the model loads
    options = _options(runs_dir, run_id, overwrite, progress, batch_size,
                       {"lambdas": lambdas, "steps": steps, "lr": lr, "seed": seed,
                        "eval_fraction": eval_fraction, "init_log_alpha": training.init,
                        "hard_concrete": vars(training.distribution)}, resume)
    loaded, prompt_set, data = _prepare(model, prompts, objective, n_prompts, device, dtype,
                                        prepend_bos, strict_parity, options, recheck)
    run, specs = run_learn(loaded, data, prompt_set, options, lambdas=lambdas,
                           training=replace(training, batch_size=options.batch_size),
                           eval_fraction=eval_fraction, split_seed=seed)
    for line in frontier_lines(run):
        out.print(escape(line))
    for lam, path in specs.items():
        out.print(f"spec lambda={lam:g}: {escape(path)}")
    out.print(f"[green]complete[/]: {escape(str(run.path))}")
