"""``workbench circuits``: the command's options and its two levels (node: per-head effects,
selection, faithfulness, overlap; edge: EAP / EAP-IG edge circuits). Registered on the app by
:mod:`workbench_cli.cli`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from workbench.errors import InputError
from workbench_cli.commands.common import (BATCH_SIZE, DEVICE, DTYPE, MODEL, OVERWRITE,
                                           PREPEND_BOS, PROGRESS, RECHECK, RESUME, RUN_ID,
                                           RUNS_DIR, STRICT_PARITY, _load, auto_batch_size,
                                           check_resume, list_option, out)


def circuits(
    model: str = MODEL,
    task: list[str] = list_option(..., "--task", "-t", metavar="TASK",
                                  help="Shipped task (ioi, colored_objects, induction) or a JSONL "
                                       "prompt file."),
    method: Optional[list[str]] = list_option(
        None, "--method", metavar="METHOD", help="Node level: attribution (default), activation or "
        "path; edge level: eap-ig (default) or eap."),
    select: Optional[str] = typer.Option(
        None, "--select", metavar="RULE", help="Circuit selection: node level top_k=N (default 20), "
        "top_percent=P, threshold=S or faithfulness=F (the smallest faithful prefix of the "
        "ranking, then refined); edge level faithfulness=T (default 0.8), top_n=N, top_percent=P "
        "or threshold=S."),
    nodes: str = typer.Option("heads", "--nodes", metavar="NODES", help="faithfulness=F: rank "
                              "and ablate heads, or heads,mlps."),
    max_size: Optional[int] = typer.Option(None, "--max-size", metavar="N", help="faithfulness=F:"
                                           " the largest circuit searched (default: every node)."),
    held_out: int = typer.Option(0, "--held-out", metavar="N", help="faithfulness=F: check the "
                                 "circuit on the N prompts of the task file after the scored ones."),
    refine_tolerance: float = typer.Option(0.01, "--refine-tolerance", metavar="T", help=
                                           "faithfulness=F: prune members costing less than T."),
    refine_candidates: int = typer.Option(8, "--refine-candidates", metavar="N", help=
                                          "faithfulness=F: outside nodes tried per addition."),
    refine_rounds: int = typer.Option(1, "--refine-rounds", metavar="N", help="faithfulness=F: "
                                      "add-then-prune rounds after the first pruning."),
    refine_budget: Optional[float] = typer.Option(
        None, "--refine-budget", metavar="N", help="faithfulness=F: evaluations the refinement "
        "may spend (default: the whole search within 3 faithfulness curves)."),
    level: str = typer.Option("node", "--level", metavar="LEVEL",
                              help="node (heads) or edge (the computational graph's edges: EAP / "
                                   "EAP-IG, faithfulness curves)."),
    metric: str = typer.Option("logit_diff", "--metric", metavar="METRIC",
                               help="Edge level: logit_diff, prob or kl."),
    ablation: str = typer.Option("corrupted", "--ablation", metavar="ABLATION",
                                 help="Edge level: corrupted, mean, resample or zero."),
    ig_steps: int = typer.Option(5, "--ig-steps", metavar="N",
                                 help="Edge level: EAP-IG steps (1 to 64)."),
    ig_rule: str = typer.Option("right", "--ig-rule", metavar="RULE",
                                help="Edge level: EAP-IG Riemann sum, right (k = 1..m, ends at "
                                     "the clean run) or left (k = 0..m-1, the released EAP-IG "
                                     "code's)."),
    n_boot: int = typer.Option(1000, "--n-boot", metavar="N",
                               help="Edge level: bootstrap resamples (1 to 10000)."),
    n_prompts: Optional[int] = typer.Option(32, "--n-prompts", metavar="N",
                                            help="Use the first N prompts of each task."),
    direction: str = typer.Option("corrupted_into_clean", "--direction", metavar="DIRECTION",
                                  help="corrupted_into_clean (noising) or clean_into_corrupted."),
    positions: list[str] = list_option(["all"], "--positions", metavar="WHERE",
                                       help="Where to patch: all, last, or segment names "
                                            "(IO,S2)."),
    batch_size: Optional[int] = BATCH_SIZE,
    heads_per_forward: Optional[int] = typer.Option(
        None, "--heads-per-forward", metavar="N", help="Heads patched per forward (default: a "
        "layer's heads; path patching: 1 on CPU, a layer's heads on GPU)."),
    stages: int = typer.Option(2, "--stages", metavar="N", help="Path patching stages."),
    receiver_input: str = typer.Option("qkv", "--receiver-input", metavar="INPUTS",
                                       help="Path patching: receiver inputs (q, k, v, qkv ...)."),
    n_random: int = typer.Option(3, "--n-random", metavar="N",
                                 help="Random circuits for the faithfulness baseline (edge "
                                      "level: per curve size, 0 to 100)."),
    mean_prompts: Optional[int] = typer.Option(
        None, "--mean-prompts", metavar="N", help="Corrupted prompts the ablation means average "
        "over (default: every prompt of the task file)."),
    heads: Optional[str] = typer.Option(
        None, "--heads", metavar="HEADS", help="Only these heads, layer.head comma-separated "
        "(23.3,20.0): patched, kept (attribution) or path-patching senders. Default: every head."),
    spot_check: int = typer.Option(
        20, "--spot-check", metavar="K", help="Attribution: activation-patch its top K heads and "
        "flag disagreements (0 = off)."),
    both_directions: bool = typer.Option(
        False, "--both-directions", help="Also activation-patch every circuit head noising and "
        "denoising, side by side; flag heads that matter in one only."),
    grids: list[str] = list_option([], "--grids", metavar="COMPONENT", help="Also patch per "
                                   "layer x position: resid_pre, attn_out, mlp_out or all."),
    grid_layers: list[str] = list_option([], "--grid-layers", metavar="LAYER",
                                         help="Only these layers in the --grids (default: every "
                                              "layer)."),
    dla: bool = typer.Option(False, "--dla", help="Also direct logit attribution per head/MLP."),
    ioi_classes: bool = typer.Option(
        False, "--ioi-classes", help="Also the IOI head classes (name movers, S-inhibition, "
        "induction, ... Wang et al. 2022) of each task; needs the IO, S1, S2 segments."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    prepend_bos: Optional[bool] = PREPEND_BOS,
    runs_dir: Path = RUNS_DIR,
    run_id: Optional[str] = RUN_ID,
    overwrite: bool = OVERWRITE,
    resume: bool = RESUME,
    strict_parity: bool = STRICT_PARITY,
    recheck: bool = RECHECK,
    progress: bool = PROGRESS,
) -> None:
    """Find each task's circuit (per-head effects, selection, faithfulness) and their overlap."""
    from circuits.levels import check_level_options
    from circuits.options import check_options
    from circuits.run import execute_circuits, load_tasks, report

    check_resume(runs_dir, run_id, resume, overwrite)
    if resume and level == "edge":
        raise InputError("--resume: edge-level runs cannot resume yet; rerun without --resume "
                         "(and --overwrite to replace the interrupted run)")
    positions = ",".join(positions)  # the circuits package takes the comma form
    check_level_options(level, locals())  # an option of the other level: refused, not ignored
    from circuits.tasks import resolve_task
    from workbench.prompts import load_prompt_set

    read = [(spec_, name, load_prompt_set(path))  # each task file read once
            for spec_, (name, path) in ((spec_, resolve_task(spec_)) for spec_ in task)]
    prompt_sets = {name: prompts for _, name, prompts in read}  # a bad file fails before the load
    if ioi_classes:
        from circuits.ioi_run import check_ioi_prompts

        check_ioi_prompts(prompt_sets)
    if level == "edge":
        from circuits.edges.run import check_edge_options, edge_report, execute_edge_circuits

        edge_options = check_edge_options(method or ["eap-ig"], select, metric=metric,
                                          ablation=ablation, ig_steps=ig_steps, n_boot=n_boot,
                                          ig_rule=ig_rule, n_random=n_random,
                                          batch_size=batch_size or 1, runs_dir=runs_dir,
                                          run_id=run_id, overwrite=overwrite, progress=progress)
        loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   recheck=recheck)
        tasks = load_tasks(task, loaded, n_prompts=n_prompts, positions=None)
        edge_options.batch_size = auto_batch_size(
            batch_size, loaded, [p.n_tokens for t in tasks for p in t.clean])
        run_dir = execute_edge_circuits(loaded, tasks, edge_options)
        out.print(edge_report(run_dir))
        out.print(f"[green]complete[/]: {run_dir.path}")
        return
    method, select = method or ["attribution"], select or "top_k=20"
    from circuits.sized import check_held_out, sizing_options

    sizing = sizing_options(nodes=nodes, max_size=max_size, held_out=held_out,
                            refine_tolerance=refine_tolerance, refine_candidates=refine_candidates,
                            refine_rounds=refine_rounds, refine_budget=refine_budget)
    for spec_, _, prompts in read:
        check_held_out(len(prompts), n_prompts, held_out, f"--task {spec_}")
    options = check_options(method, select, direction=direction, positions=positions,
                            batch_size=batch_size or 1, heads_per_forward=heads_per_forward,
                            stages=stages, receiver_input=receiver_input, n_random=n_random,
                            mean_prompts=mean_prompts, heads=heads,
                            spot_check=spot_check, both_directions=both_directions,
                            grids=",".join(grids), dla=dla, grid_layers=",".join(grid_layers),
                            sizing=sizing, ioi_classes=tuple(prompt_sets) if ioi_classes else (),
                            runs_dir=runs_dir, run_id=run_id,
                            overwrite=overwrite, progress=progress, resume=resume)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   recheck=recheck)
    if options.grid_layers:  # a layer the model lacks: one line, before any forward
        from circuits.grids import check_layers

        check_layers(loaded, options.grid_layers)
    tasks = load_tasks(task, loaded, n_prompts=n_prompts, positions=positions)
    options.discovery = replace(options.discovery, batch_size=auto_batch_size(
        batch_size, loaded, [p.n_tokens for t in tasks for p in t.clean]))
    run_dir = execute_circuits(loaded, tasks, options)
    out.print(report(run_dir))
    out.print(f"[green]complete[/]: {run_dir.path}")
