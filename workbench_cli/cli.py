"""The ``workbench`` command line (typer). Errors print one line and exit non-zero.

This package (``workbench_cli``) is the composition root: it sits above the core and imports the
layers that plug into it (``probes``, ``circuits``, ``sweeps``, ``atlas``, ``pruning``), so the core
package ``workbench`` never imports them (``tests/test_layering.py``). ``python -m workbench_cli``
runs it too.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from workbench_cli.commands import atlas as atlas_commands
from workbench_cli.commands.circuits import circuits
from workbench_cli.commands.common import (BATCH_SIZE, DEVICE, DEVICE_MAP, DTYPE, MODEL, OVERWRITE,
                                       PREPEND_BOS, PROGRESS, RECHECK, RESUME, RUN_ID,
                                       RUNS_DIR, STRICT_PARITY, TYPER, _load, at_least_one,
                                       auto_batch_size, check_resume, err, list_option, out)
from workbench_cli.commands.figures import figures_app
from workbench_cli.commands.guard import check_run_target
from workbench_cli.commands.heads import heads_app
from workbench_cli.commands.runs import runs_app
from workbench_cli.commands.serve import app_command
from workbench.errors import InputError

app = typer.Typer(**TYPER, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Attention Workbench: probes, circuits and interventions on attention heads."
                       "\n\nOptions that take several values (--prompts, --probes, --task ...) are "
                       "repeatable and also split on commas: --task ioi --task induction is "
                       "--task ioi,induction. key=value options (--param, --threshold) are "
                       "repeated only. --batch-size defaults to a size chosen from free memory "
                       "(8 on the CPU) in every command.")
app.add_typer(runs_app, name="runs")
app.add_typer(atlas_commands.app, name="atlas")
app.add_typer(figures_app, name="figures")
app.add_typer(heads_app, name="heads")
PROMPTS = list_option(..., "--prompts", "-p", metavar="PATH", kind=Path,
                      help="JSONL prompt set(s).")
PARAM = typer.Option([], "--param", metavar="PROBE.NAME=VALUE",
                     help="Probe parameter; repeat for several.")


def _version(value: bool) -> None:
    if value:
        from workbench import __version__

        out.print(f"workbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def workbench_main(version: bool = typer.Option(False, "--version", is_eager=True,
                                                callback=_version,
                                                help="Print the version and exit.")) -> None:
    """Attention Workbench: probes, circuits and interventions on attention heads."""


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
    prompts: list[Path] = PROMPTS,
    probes: list[str] = list_option(["attention_entropy"], "--probes", metavar="NAME",
                                    help="Probe names (see `workbench probes`)."),
    param: list[str] = PARAM,
    batch_size: Optional[int] = BATCH_SIZE,
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    attention: str = typer.Option(
        "auto", "--attention", metavar="IMPL",
        help="auto, eager or sdpa: auto runs the fast sdpa kernel when no probe reads an "
             "attention hook (see workbench/attention_impl.py)."),
    prepend_bos: Optional[bool] = PREPEND_BOS,
    runs_dir: Path = RUNS_DIR,
    run_id: Optional[str] = RUN_ID,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run."),
    overwrite: bool = OVERWRITE,
    strict_parity: bool = STRICT_PARITY,
    recheck: bool = RECHECK,
    progress: bool = PROGRESS,
    attention_mask: Optional[str] = typer.Option(
        None, "--attention-mask", metavar="MASK",
        help="Apply a mask to every layer's attention scores for the whole run: causal, "
             "window:W, prefix:K or decay:GAMMA (see workbench/masks.py)."),
) -> None:
    """Run probes over a prompt set and write runs/<run_id>/ (parquet + run.json)."""
    from probes import make_probes
    from workbench.api import check_prompts
    from workbench.attention_impl import ATTENTION_CHOICES
    from workbench.resume import finished_run
    from workbench.masks import AttentionMask
    from workbench.prompts import load_prompt_set
    from workbench.run import RunOptions, execute_run

    check_resume(runs_dir, run_id, resume, overwrite)
    if attention_mask is not None:
        AttentionMask.parse(attention_mask)  # bad specs fail before the model loads
    if attention not in ATTENTION_CHOICES:
        raise InputError(f"--attention {attention!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    probe_objs = make_probes(probes, parse_params(param))  # list_option split the commas
    prompt_set = load_prompt_set(prompts)
    check_prompts(prompt_set, probe_objs)  # segment errors come before the model loads
    if resume:  # a finished run answers from its manifest: no model load, no parity check
        done = finished_run(runs_dir, run_id, model=model, prompts_sha256=prompt_set.sha256,
                            probes=probe_objs, batch_size=batch_size, device=device,
                            dtype=dtype, prepend_bos=prepend_bos,
                            attention_mask=attention_mask, attention=attention)
        if done is not None:
            return _already_complete(done)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   device_map=device_map, recheck=recheck)
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
        return _already_complete(run_dir)
    out.print(f"[green]complete[/]: {run_dir.path} ({rows:,} records in "
              f"{len(manifest['tables'])} table(s), {manifest['timings'].get('total_s')} s)")


def _already_complete(run_dir) -> None:
    manifest = run_dir.read_manifest()
    rows = sum(t["rows"] for t in manifest["tables"].values())
    out.print(f"[green]complete[/]: {run_dir.path} was already complete (finished "
              f"{manifest.get('finished')}); nothing to do ({rows:,} records)")


app.command()(circuits)


@app.command()
def intervene(
    model: str = MODEL,
    prompts: list[Path] = PROMPTS,
    spec: Path = typer.Option(..., "--spec", "-s", metavar="PATH",
                              help="Intervention spec (JSON or YAML)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", metavar="NAME=VALUES",
                                        help="Sweep one parameter: alpha=0,0.5,1,2 (also p, "
                                             "sigma, temperature)."),
    probes: list[str] = list_option([], "--probes", metavar="NAME",
                                    help="Probes whose metrics are compared between conditions."),
    param: list[str] = PARAM,
    threshold: float = typer.Option(0.5, "--threshold", metavar="X",
                                    help="critical_sigma: relative drop of the mean logit "
                                         "difference (KL in nats without answers)."),
    generate: int = typer.Option(0, "--generate", metavar="N",
                                 help="Greedy tokens to generate per condition for the first "
                                      "--n-generate prompts."),
    n_generate: int = typer.Option(3, "--n-generate", metavar="N",
                                   help="Prompts that --generate generates for."),
    batch_size: Optional[int] = BATCH_SIZE,
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
    """Run a prompt set without and with an intervention spec (and a sweep); write the run."""
    from probes import make_probes
    from workbench.api import check_prompts
    from workbench.interventions import load_spec
    from workbench.interventions.evaluate import InterveneOptions, Sweep, intervene, report
    from workbench.prompts import load_prompt_set

    check_resume(runs_dir, run_id, resume, overwrite)
    parsed = load_spec(spec)
    swept = Sweep.parse(sweep) if sweep else None
    options = InterveneOptions(batch_size or 1, swept, threshold, generate, n_generate,
                               make_probes(probes, parse_params(param)) if probes else [],
                               runs_dir, run_id, overwrite, progress, sys.argv, resume)
    prompt_set = load_prompt_set(prompts)
    check_prompts(prompt_set, options.probes)
    loaded = _load(model, strict_parity, device=device, dtype=dtype, prepend_bos=prepend_bos,
                   recheck=recheck)
    options.batch_size = auto_batch_size(batch_size, loaded, [p.text for p in prompt_set.prompts])
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
    text: str = typer.Option(..., "--text", "-t", metavar="TEXT", help="The prompt text."),
    out_path: Path = typer.Option(..., "--out", "-o", metavar="PATH",
                                  help="Output file: .graphml or .json."),
    model: str = MODEL,
    layer: int = typer.Option(-1, "--layer", metavar="N",
                              help="Layer; negative counts from the end (default: last)."),
    matrix: str = typer.Option("attention", "--matrix", metavar="MATRIX",
                               help="attention (that layer), product or rollout (composed over "
                                    "layers 0..layer)."),
    threshold: float = typer.Option(0.01, "--threshold", metavar="X",
                                    help="Keep edges whose weight is above this."),
    heads: str = typer.Option("mean", "--heads", metavar="HEADS",
                              help="mean, one head index, or layer.head per layer "
                                   "(0.3,1.5,...: a path through every layer)."),
    attention_mask: Optional[str] = typer.Option(None, "--attention-mask", metavar="MASK",
                                                 help="causal, window:W, prefix:K, decay:GAMMA"),
    device: Optional[str] = DEVICE,
    recheck: bool = RECHECK,
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
    from workbench.inputs import check_output_file

    check_output_file(out_path, "--out")  # before the model loads
    mask = AttentionMask.parse(attention_mask) if attention_mask else None
    loaded = load_model(model, device=device, recheck=recheck)
    layer = loaded.info.n_layers + layer if layer < 0 else layer
    mats = prompt_matrices(loaded, text, layers=[layer], heads=heads, mask=mask)
    g = attention_graph(mats[matrix][layer], threshold, tokens=mats["tokens"],
                        name=f"{model} layer {layer} {matrix} heads={heads} mask={mask}")
    write_graph(g, out_path)
    hops = [h for h in hops_to_first(g).values() if h is not None]
    out.print(f"wrote {out_path}: {g.number_of_nodes()} nodes, {g.number_of_edges()} edges above "
              f"{threshold}; centre nodes {centre_nodes(g)}; hops to the first token: max "
              f"{max(hops)}, {g.number_of_nodes() - len(hops)} position(s) unreachable")


@app.command("app")
def app_cmd(runs_dir: Path = RUNS_DIR,
            port: int = typer.Option(8501, "--port", metavar="N", help="Port to serve on."),
            host: str = typer.Option("127.0.0.1", "--host", metavar="HOST",
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


@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP_FILE",
                                      help="Sweep YAML (models, prompt_sets, jobs; see "
                                           "sweeps/spec.py)."),
    engine: str = typer.Option("local", "--engine", metavar="ENGINE",
                               help="local (this process) or ray."),
    address: Optional[str] = typer.Option(None, "--address", metavar="ADDRESS",
                                          help="Ray cluster address (auto, ray://head:10001); "
                                               "default: start a local cluster."),
    workers: Optional[int] = typer.Option(None, "--workers", "-n", metavar="N",
                                          callback=at_least_one,
                                          help="Ray actors (default: the cluster's CPUs/GPUs)."),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", metavar="X",
        help="GPUs per Ray actor (default: 1 when the cluster has "
             "GPUs, else 0)."),
    runs_dir: Path = RUNS_DIR,
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the sweep's runs again."),
    recheck: bool = RECHECK,
) -> None:
    """Run models x prompt sets x jobs in shards (model, prompt chunk); a rerun skips finished
    shards. Exit 1 when a shard failed (see <runs-dir>/<name>/sweep.json)."""
    from sweeps import SweepOptions, load_spec, run_sweep
    from workbench.load_checks import RECHECK_ENV

    spec = load_spec(sweep_file)
    if recheck:  # every worker's load (this process, or Ray actors started from it)
        os.environ[RECHECK_ENV] = "1"
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
    1 other failure, 130 interrupted; see :mod:`workbench_cli.commands.guard`)."""
    from workbench_cli.commands.guard import run_guarded

    run_guarded(app, argv)


if __name__ == "__main__":  # pragma: no cover
    main()
