"""The ``workbench`` command line (typer). Errors print one line and exit non-zero.

This module is the composition root: it is the one place in ``workbench`` that resolves probe names
(importing ``probes`` lazily), so the core modules keep their one-way dependencies.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from workbench.commands import atlas as atlas_commands
from workbench.commands.common import (DEVICE, DEVICE_MAP, DTYPE, MODEL, OVERWRITE, PREPEND_BOS,
                                       PROGRESS, RUNS_DIR, STRICT_PARITY, _load, _names, err,
                                       out)
from workbench.commands.figures import figures_app
from workbench.commands.guard import check_run_target
from workbench.commands.heads import heads_app
from workbench.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Attention Workbench: probes, circuits and interventions on attention heads.")
runs_app = typer.Typer(add_completion=False, help="List and show runs.", invoke_without_command=True)
app.add_typer(runs_app, name="runs")
app.add_typer(atlas_commands.app, name="atlas")
app.add_typer(figures_app, name="figures")
app.add_typer(heads_app, name="heads")


def parse_params(items: list[str]) -> dict[str, dict[str, str]]:
    """``["attention_entropy.segment=passage"]`` -> ``{"attention_entropy": {"segment": "passage"}}``.

    Raises:
        InputError: an item not of the form ``probe.param=value``.
    """
    params: dict[str, dict[str, str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        probe, dot, name = head.partition(".")
        if not sep or not dot or not probe or not name:
            raise InputError(f"--param {item!r} is not of the form probe.parameter=value")
        params.setdefault(probe.strip(), {})[name.strip()] = value
    return params


@app.command()
def run(
    model: str = MODEL,
    prompts: list[Path] = typer.Option(..., "--prompts", "-p", help="JSONL prompt set(s)."),
    probes: str = typer.Option("attention_entropy", "--probes",
                               help="Comma-separated probe names (see `workbench probes`)."),
    param: list[str] = typer.Option([], "--param", help="Probe parameter: probe.name=value."),
    batch_size: Optional[int] = typer.Option(
        None, "--batch-size", "-b", min=1,
        help="Prompts per forward pass (default: chosen from free memory, 8 on the CPU)."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    attention: str = typer.Option(
        "auto", "--attention",
        help="auto, eager or sdpa: auto runs the fast sdpa kernel when no probe reads an "
             "attention hook (see workbench/attention_impl.py)."),
    prepend_bos: Optional[bool] = PREPEND_BOS,
    runs_dir: Path = RUNS_DIR,
    run_id: Optional[str] = typer.Option(None, help="Run folder name (default: derived from the "
                                                    "configuration, so reruns find it)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overwrite: bool = OVERWRITE,
    strict_parity: bool = STRICT_PARITY,
    progress: bool = PROGRESS,
    attention_mask: Optional[str] = typer.Option(
        None, "--attention-mask",
        help="Apply a mask to every layer's attention scores for the whole run: causal, "
             "window:W, prefix:K or decay:GAMMA (see workbench/masks.py)."),
) -> None:
    """Run probes over a prompt set and write runs/<run_id>/ (parquet + run.json)."""
    from probes import make_probes
    from workbench.attention_impl import ATTENTION_CHOICES
    from workbench.masks import AttentionMask
    from workbench.prompts import load_prompt_set
    from workbench.run import RunOptions, execute_run

    if resume and overwrite:
        raise InputError("--resume and --overwrite contradict each other; choose one")
    check_run_target(runs_dir, run_id)
    if attention_mask is not None:
        AttentionMask.parse(attention_mask)  # bad specs fail before the model loads
    if attention not in ATTENTION_CHOICES:
        raise InputError(f"--attention {attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    names = _names(probes)
    probe_objs = make_probes(names, parse_params(param))
    prompt_set = load_prompt_set(prompts)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   device_map=device_map)
    options = RunOptions(runs_dir=runs_dir, run_id=run_id, batch_size=batch_size, resume=resume,
                         overwrite=overwrite, progress=progress, command=sys.argv,
                         attention_mask=attention_mask, attention=attention)
    run_dir = execute_run(loaded, prompt_set, probe_objs, options,
                          load_seconds=loaded.info.load_seconds)
    manifest = run_dir.read_manifest()
    for warning in manifest.get("warnings", []):
        err.print(f"[yellow]warning[/]: {escape(warning)}", soft_wrap=True)
    rows = sum(t["rows"] for t in manifest["tables"].values())
    if run_dir.state == "complete":
        out.print(f"[green]complete[/]: {run_dir.path} was already complete (finished "
                  f"{manifest.get('finished')}); nothing to do ({rows:,} records)")
        return
    out.print(f"[green]complete[/]: {run_dir.path} ({rows:,} records in "
              f"{len(manifest['tables'])} table(s), {manifest['timings'].get('total_s')} s)")


@app.command()
def circuits(
    model: str = MODEL,
    task: list[str] = typer.Option(..., "--task", "-t", help="Shipped task (ioi, colored_objects, "
                                   "induction) or a JSONL prompt file; repeat for several."),
    method: Optional[list[str]] = typer.Option(
        None, "--method", help="Node level: attribution (default), activation or path; edge "
        "level: eap-ig (default) or eap. Repeat for several."),
    select: Optional[str] = typer.Option(
        None, "--select", help="Circuit selection: node level top_k=N (default 20), top_percent=P "
        "or threshold=S; edge level top_n=N, top_percent=P (default 1) or threshold=S."),
    level: str = typer.Option("node", "--level", help="node (heads) or edge (the computational "
                              "graph's edges: EAP / EAP-IG, faithfulness curves)."),
    metric: str = typer.Option("logit_diff", "--metric",
                               help="Edge level: logit_diff, prob or kl."),
    ablation: str = typer.Option("corrupted", "--ablation",
                                 help="Edge level: corrupted, mean, resample or zero."),
    ig_steps: int = typer.Option(5, "--ig-steps", help="Edge level: EAP-IG steps."),
    n_boot: int = typer.Option(1000, "--n-boot", help="Edge level: bootstrap resamples."),
    n_prompts: Optional[int] = typer.Option(32, "--n-prompts",
                                            help="Use the first N prompts of each task."),
    direction: str = typer.Option("corrupted_into_clean", "--direction",
                                  help="corrupted_into_clean (noising) or clean_into_corrupted."),
    positions: str = typer.Option("all", "--positions",
                                  help="Where to patch: all, last, or segment names (IO,S2)."),
    batch_size: int = typer.Option(16, "--batch-size", "-b", help="Prompts per forward pass."),
    heads_per_forward: Optional[int] = typer.Option(
        None, "--heads-per-forward", help="Heads patched per forward (default: 1 on CPU, a "
        "layer's heads on GPU)."),
    stages: int = typer.Option(2, "--stages", help="Path patching stages."),
    receiver_input: str = typer.Option("qkv", "--receiver-input",
                                       help="Path patching: receiver inputs (q, k, v, qkv ...)."),
    n_random: int = typer.Option(3, "--n-random",
                                 help="Random circuits for the faithfulness baseline."),
    mean_prompts: Optional[int] = typer.Option(
        None, "--mean-prompts", help="Corrupted prompts the ablation means average over "
        "(default: every prompt of the task file)."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    prepend_bos: Optional[bool] = PREPEND_BOS,
    runs_dir: Path = RUNS_DIR,
    run_id: Optional[str] = typer.Option(None, help="Run folder name (default: derived from the "
                                                    "configuration)."),
    overwrite: bool = OVERWRITE,
    strict_parity: bool = STRICT_PARITY,
    progress: bool = PROGRESS,
) -> None:
    """Find each task's circuit (per-head effects, selection, faithfulness) and their overlap."""
    from circuits.run import (CircuitsOptions, check_options, execute_circuits, load_tasks,
                              report)

    check_run_target(runs_dir, run_id)
    if level not in ("node", "edge"):
        raise InputError(f"--level {level!r} is not one of node, edge")
    if level == "edge":
        from circuits.edges.run import check_edge_options, edge_report, execute_edge_circuits

        edge_options = check_edge_options(method or ["eap-ig"], select, metric=metric,
                                          ablation=ablation, ig_steps=ig_steps, n_boot=n_boot,
                                          batch_size=batch_size, runs_dir=runs_dir,
                                          run_id=run_id, overwrite=overwrite, progress=progress)
        loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos)
        tasks = load_tasks(task, loaded, n_prompts=n_prompts, positions=None)
        run_dir = execute_edge_circuits(loaded, tasks, edge_options)
        out.print(edge_report(run_dir))
        out.print(f"[green]complete[/]: {run_dir.path}")
        return
    method, select = method or ["attribution"], select or "top_k=20"
    options = check_options(method, select, direction=direction, positions=positions,
                            batch_size=batch_size, heads_per_forward=heads_per_forward,
                            stages=stages, receiver_input=receiver_input, n_random=n_random,
                            mean_prompts=mean_prompts,
                            runs_dir=runs_dir, run_id=run_id, overwrite=overwrite,
                            progress=progress)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos)
    tasks = load_tasks(task, loaded, n_prompts=n_prompts, positions=positions)
    run_dir = execute_circuits(loaded, tasks, options)
    out.print(report(run_dir))
    out.print(f"[green]complete[/]: {run_dir.path}")


@app.command()
def intervene(
    model: str = MODEL,
    prompts: list[Path] = typer.Option(..., "--prompts", "-p", help="JSONL prompt set(s)."),
    spec: Path = typer.Option(..., "--spec", "-s", help="Intervention spec (JSON or YAML)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Sweep one parameter: "
                                        "alpha=0,0.5,1,2 (also p, sigma, temperature)."),
    probes: str = typer.Option("", "--probes", help="Probes whose metrics are compared "
                               "between conditions (comma-separated)."),
    param: list[str] = typer.Option([], "--param", help="Probe parameter: probe.name=value."),
    threshold: float = typer.Option(0.5, "--threshold", help="critical_sigma: relative drop of "
                                    "the mean logit difference (KL in nats without answers)."),
    generate: int = typer.Option(0, "--generate", help="Greedy tokens to generate per "
                                 "condition for the first --n-generate prompts."),
    n_generate: int = typer.Option(3, "--n-generate"),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Prompts per forward pass."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    prepend_bos: Optional[bool] = PREPEND_BOS,
    runs_dir: Path = RUNS_DIR,
    run_id: Optional[str] = typer.Option(None, help="Run folder name (default: derived from the "
                                                    "spec, sweep and prompts)."),
    overwrite: bool = OVERWRITE,
    strict_parity: bool = STRICT_PARITY,
    progress: bool = PROGRESS,
) -> None:
    """Run a prompt set without and with an intervention spec (and a sweep); write the run."""
    from probes import make_probes
    from workbench.interventions import load_spec
    from workbench.interventions.evaluate import InterveneOptions, Sweep, intervene, report
    from workbench.prompts import load_prompt_set

    check_run_target(runs_dir, run_id)
    parsed = load_spec(spec)
    swept = Sweep.parse(sweep) if sweep else None
    names = _names(probes)
    options = InterveneOptions(batch_size, swept, threshold, generate, n_generate,
                               make_probes(names, parse_params(param)) if names else [],
                               runs_dir, run_id, overwrite, progress, sys.argv)
    prompt_set = load_prompt_set(prompts)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos)
    run_dir = intervene(loaded, prompt_set, parsed, options)
    out.print(report(run_dir))
    out.print(f"[green]complete[/]: {run_dir.path}")


@app.command()
def models() -> None:
    """Models available on this machine: the registry, and Hugging Face ids in the local cache."""
    from workbench.models import cached_hub_models, registry_status

    table = Table("model", "available offline", "description")
    for row in registry_status():
        ok = "[green]yes[/]" if row["unavailable"] is None else f"[red]no[/]: {row['unavailable']}"
        table.add_row(row["name"], ok, row["description"])
    for repo in cached_hub_models():
        table.add_row(repo, "[green]yes[/] (HF cache)", "Hugging Face checkpoint in the local cache")
    out.print(table)
    out.print("Any local folder or Hugging Face id also works (the hub needs a network).")


@app.command("probes")
def list_probes() -> None:
    """Probes that `workbench run --probes` accepts, with their parameters."""
    import dataclasses

    from probes import PROBES

    table = Table("probe", "hook points", "parameters (default)", "metrics")
    for name, cls in PROBES.items():
        params = ", ".join(
            f"{f.name}={f.default_factory() if f.default is dataclasses.MISSING else f.default!r}"
            for f in dataclasses.fields(cls))
        table.add_row(name, ", ".join(cls.hook_points), params or "-", ", ".join(cls.units))
    out.print(table)


@app.command()
def graph(
    text: str = typer.Option(..., "--text", "-t", help="The prompt text."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output file: .graphml or .json."),
    model: str = typer.Option("smollm2-135m", "--model", "-m"),
    layer: int = typer.Option(-1, help="Layer; negative counts from the end (default: last)."),
    matrix: str = typer.Option("attention", help="attention (that layer), product or rollout "
                                                 "(composed over layers 0..layer)."),
    threshold: float = typer.Option(0.01, help="Keep edges whose weight is above this."),
    heads: str = typer.Option("mean", help="mean, one head index, or layer.head per layer."),
    attention_mask: Optional[str] = typer.Option(None, "--attention-mask",
                                                 help="causal, window:W, prefix:K, decay:GAMMA"),
    device: Optional[str] = typer.Option(None),
) -> None:
    """Export one prompt's attention graph (edge j -> i when query i attends to key j)."""
    from probes.position_bias import CONDITIONS, prompt_matrices
    from workbench.graphs import GRAPH_FORMATS, attention_graph, centre_nodes, hops_to_first
    from workbench.graphs import write_graph
    from workbench.masks import AttentionMask
    from workbench.models import load_model

    if matrix not in ("attention", *CONDITIONS):
        raise InputError(f"--matrix {matrix!r}: choose attention, product or rollout")
    if out_path.suffix not in GRAPH_FORMATS:
        raise InputError(f"--out {out_path}: the file must end in {' or '.join(GRAPH_FORMATS)}")
    mask = AttentionMask.parse(attention_mask) if attention_mask else None
    loaded = load_model(model, device=device)
    layer = loaded.info.n_layers + layer if layer < 0 else layer
    mats = prompt_matrices(loaded, text, layers=[layer], heads=heads, mask=mask)
    g = attention_graph(mats[matrix][layer], threshold, tokens=mats["tokens"],
                        name=f"{model} layer {layer} {matrix} heads={heads} mask={mask}")
    write_graph(g, out_path)
    hops = [h for h in hops_to_first(g).values() if h is not None]
    out.print(f"wrote {out_path}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges above "
              f"{threshold}; centre nodes {centre_nodes(g)}; hops to the first token: max "
              f"{max(hops)}, {g.number_of_nodes() - len(hops)} position(s) unreachable")


def app_command(runs_dir: Path, host: str, port: int) -> list[str]:
    """The ``streamlit run`` command line that serves the app on ``host:port`` for ``runs_dir``.

    Raises:
        InputError: ``runs_dir`` is not a folder, ``port`` is out of range, or the app package
            (``app/main.py``) is not installed.
    """
    import importlib.util

    if not runs_dir.is_dir():
        raise InputError(f"--runs-dir {runs_dir}: not a folder (make runs with `workbench run "
                         "--runs-dir ...`)")
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: expected 1 to 65535")
    spec = importlib.util.find_spec("app")  # locates the package; runs nothing of it
    main = Path(next(iter(spec.submodule_search_locations)), "main.py") if spec and \
        spec.submodule_search_locations else None
    if main is None or not main.is_file():
        raise InputError("the app package (app/main.py) is not installed with the workbench")
    return [sys.executable, "-m", "streamlit", "run", str(main), "--server.address", host,
            "--server.port", str(port), "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal",
            "--", "--runs-dir", str(runs_dir.resolve())]


@app.command("app")
def app_cmd(runs_dir: Path = RUNS_DIR,
            port: int = typer.Option(8501, "--port", help="Port to serve on."),
            host: str = typer.Option("127.0.0.1", "--host",
                                     help="Address to bind (default: this machine only)."),
            ) -> None:
    """Browse runs in the Streamlit app at http://HOST:PORT (reads only inside --runs-dir).

    The Streamlit server replaces this process (exec), so the process id printed by the shell is
    the server's: ``kill <pid>`` stops it (no orphaned server)."""
    command = app_command(runs_dir, host, port)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning[/]: serving on {escape(host)}: other machines can reach the "
                  "app and read every run in the folder")
    err.print(f"serving {escape(str(runs_dir.resolve()))} at http://{escape(host)}:{port} "
              "(Ctrl-C stops)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


@runs_app.callback()
def runs_main(ctx: typer.Context, runs_dir: Path = RUNS_DIR) -> None:
    """List runs (with no subcommand)."""
    ctx.obj = runs_dir
    if ctx.invoked_subcommand is None:
        _list_runs(runs_dir)


def _list_runs(runs_dir: Path) -> None:
    from workbench.store import list_runs

    found = list_runs(runs_dir)
    if not found:
        out.print(f"no runs under {runs_dir}")
        return
    table = Table("run id", "status", "model", "prompts", "probes", "records", "created")
    for run, m in found:  # list_runs: validated manifests, or status "unreadable" + error
        rows = sum(t.get("rows", 0) for t in (m.get("tables") or {}).values())
        table.add_row(escape(run.run_id), m.get("status", "?"),
                      escape(str((m.get("model") or {}).get("name", "?"))),
                      escape(str((m.get("prompts") or {}).get("name", "?"))),
                      escape(",".join(p["name"] for p in m.get("probes") or [])), f"{rows:,}",
                      escape(str(m.get("created") or "")))
        if m.get("status") == "unreadable":
            err.print(f"[yellow]unreadable[/]: {escape(str(m.get('error')))}", soft_wrap=True)
    out.print(table)


@runs_app.command("list")
def runs_list(ctx: typer.Context) -> None:
    """List runs, newest first."""
    _list_runs(ctx.obj)


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str = typer.Argument(..., help="Run id or folder."),
              as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON.")
              ) -> None:
    """Show a run's manifest summary and its headline numbers."""
    from workbench.summary import describe_run

    path = Path(run_id)
    if not (path / "run.json").exists():
        path = Path(ctx.obj) / run_id
    from workbench.store import RunDir

    run = RunDir.open(path)
    if as_json:
        out.print_json(json.dumps(run.read_manifest(), default=str))
        return
    if run.read_manifest().get("kind") == "atlas":
        from atlas import open_atlas

        atlas_commands.print_atlas(open_atlas(run.path))
        return
    describe_run(run, out)


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="Sweep YAML (models, prompt_sets, jobs; see "
                                      "sweeps/spec.py)."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (auto, "
                                          "ray://head:10001); default: start a local cluster."),
    workers: Optional[int] = typer.Option(None, "--workers", "-n", min=1,
                                          help="Ray actors (default: the cluster's CPUs/GPUs)."),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", help="GPUs per Ray actor (default: 1 when the cluster has "
        "GPUs, else 0)."),
    runs_dir: Path = RUNS_DIR,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the sweep's runs again."),
) -> None:
    """Run models x prompt sets x jobs in shards (model, prompt chunk); a rerun skips finished
    shards. Exit 1 when a shard failed (see <runs-dir>/<name>/sweep.json)."""
    from sweeps import SweepOptions, load_spec, run_sweep

    spec = load_spec(sweep_file)
    check_run_target(Path(spec.runs_dir or runs_dir))
    if engine == "local" and (address or workers):
        raise InputError("--address and --workers need --engine ray")
    manifest = run_sweep(spec, SweepOptions(runs_dir=runs_dir, engine=engine, address=address,
                                            workers=workers, gpus_per_worker=gpus_per_worker,
                                            overwrite=overwrite, command=sys.argv))
    failed = [r for r in manifest["shards"] if r["status"] != "done"]
    where = Path(spec.runs_dir or runs_dir) / spec.name
    for run_name, said in manifest.get("warnings", {}).items():
        for warning in said:
            err.print(f"[yellow]warning[/]: {escape(run_name)}: {escape(warning)}", soft_wrap=True)
    for row in failed:
        err.print(f"[bold red]shard failed[/]: {row['run']} chunk {row['chunk']} "
                  f"({row['first_id']}..{row['last_id']}): {escape(str(row['error']))}",
                  highlight=False, soft_wrap=True)
    out.print(f"{'[red]failed' if failed else '[green]complete'}[/]: {where} "
              f"({manifest['n_shards'] - len(failed)}/{manifest['n_shards']} shards done, "
              f"{manifest['n_skipped']} skipped as finished, {manifest['timings']['total_s']} s)")
    if failed:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the app; every error is one line and an exit code (2 bad input,
    1 other failure, 130 interrupted; see :mod:`workbench.commands.guard`)."""
    from workbench.commands.guard import run_guarded

    run_guarded(app, argv)


if __name__ == "__main__":  # pragma: no cover
    main()
