"""What every command shares: the consoles, the common options, loading a model with its parity
report, comma-separated names. Command groups live in modules of this package and register on the
main app in :mod:`workbench_cli.cli`; they import the layers above the core (``probes``, ``circuits``,
``atlas`` ...) only inside their command bodies."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from workbench.errors import WorkbenchError

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="Folder holding run directories.")
MODEL = typer.Option("smollm2-135m", "--model", "-m",
                     help="Registry name, local folder or Hugging Face id.")
DEVICE = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: auto).")
DTYPE = typer.Option(None, help="float32, bfloat16, float16 (default: auto).")
PREPEND_BOS = typer.Option(None, "--prepend-bos/--no-prepend-bos",
                           help="Put BOS before every prompt (default: what the tokenizer does).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing run.")
STRICT_PARITY = typer.Option(False, help="Stop if bridge and HF logits disagree.")
PROGRESS = typer.Option(True, "--progress/--no-progress")
DEVICE_MAP = typer.Option(
    None, "--device-map", help="Hugging Face device map for a model larger than one GPU: auto, "
    "balanced, sequential (accelerate places the layers; not with --device).")


def _names(text: str) -> list[str]:
    """``"a, b,"`` -> ``["a", "b"]``: the names of a comma-separated option."""
    return [n.strip() for n in text.split(",") if n.strip()]


def _load(spec: str, strict_parity: bool, **options):
    """Load a model (:func:`workbench.models.load_model` with ``options``), then report its
    parity check (a failed check stops the command with ``strict_parity``)."""
    from workbench.models import load_model
    from workbench.settings import resolve_device

    if options.get("device") not in (None, "", "auto"):
        resolve_device(options["device"])  # a bad --device: one line, before "loading model"
    err.print(f"loading model [bold]{spec}[/] ...")
    loaded = load_model(spec, **options)
    _report_parity(loaded, strict_parity)
    return loaded


def _report_parity(loaded, strict: bool) -> None:
    p = loaded.info.parity
    line = (f"model {loaded.info.name}: {loaded.info.n_layers} layers x {loaded.info.n_heads} heads,"
            f" {loaded.info.dtype} on {loaded.info.device}, loaded in {loaded.info.load_seconds} s;"
            f" parity vs Hugging Face: max |diff| {p.max_abs_diff:.2e} logits "
            f"({p.rel_diff:.1e} of the logit std, tolerance {p.tolerance:.0e})")
    if p.ok:
        err.print(line + " [green]ok[/]")
    elif strict:
        raise WorkbenchError(line + " - parity check FAILED (--strict-parity)")
    else:
        err.print(line + " [bold red]PARITY CHECK FAILED[/]: bridge and HF logits disagree")
