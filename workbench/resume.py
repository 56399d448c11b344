"""Answer ``--resume`` of a finished run from its manifest, before any model loads.

A finished run's ``run.json`` holds its configuration key (``workbench.run._config_key``): model
spec, prompt-set sha256, probes and parameters, batch size, dtype, device type, BOS convention,
attention mask. When everything the command line fixes matches a complete run, there is nothing
to compute: :func:`finished_run` finds that run without loading the model or running the parity
check (``--resume`` of a finished run is instant).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from workbench.errors import RunStateError
from workbench.store import RunDir, list_runs


def _matches(key: dict, *, model: str, prompts_sha256: str, probes: Sequence[Any],
             batch_size: int | None, device: str | None, dtype: str | None,
             prepend_bos: bool | None, attention_mask: str | None, attention: str) -> bool:
    from workbench.masks import AttentionMask
    from workbench.settings import dtype_name, resolve_device, resolve_dtype

    stored = key.get("probes") or []
    if key.get("model") != model or key.get("prompts_sha256") != prompts_sha256:
        return False
    if [p.get("name") for p in stored] != [p.name for p in probes]:
        return False
    for probe, old in zip(probes, stored):  # parameters filled in by prepare() were None here
        params = old.get("params") or {}
        if any(v is not None and params.get(k) != v for k, v in probe.params().items()):
            return False
    dev = resolve_device(device)
    wanted = {"device_type": dev.type, "dtype": dtype_name(resolve_dtype(dtype, dev)),
              "batch_size": batch_size, "prepend_bos": prepend_bos}
    if any(v is not None and key.get(k) != v for k, v in wanted.items()):
        return False
    mask = str(AttentionMask.parse(attention_mask)) if attention_mask else None
    if key.get("attention_mask") != mask:
        return False
    return attention == "auto" or key.get("attention", "eager") == attention


def finished_run(runs_dir: Path, run_id: str | None, **config: Any) -> RunDir | None:
    """The complete run that ``workbench run --resume`` with this configuration would return, or
    None when the model is needed to tell (no such run, an unfinished one, or several candidates).

    ``config``: ``model`` (the spec), ``prompts_sha256``, ``probes`` (objects, before
    ``prepare``), ``batch_size``, ``device``, ``dtype``, ``prepend_bos`` (None: any),
    ``attention_mask``, ``attention``. With ``run_id`` only that folder is considered; without,
    every run under ``runs_dir``.
    """
    if run_id is not None:
        try:
            candidates = [(RunDir.open(Path(runs_dir) / run_id), None)]
        except RunStateError:
            return None
        candidates = [(run, run.read_manifest()) for run, _ in candidates]
    else:
        candidates = list_runs(Path(runs_dir), check=False)  # tables checked below, matches only
    found = [run for run, m in candidates
             if m.get("status") == "complete" and m.get("kind", "probes") == "probes"
             and isinstance(m.get("config_key"), dict) and _matches(m["config_key"], **config)
             and (run_id is not None or not run.check_tables(m))]  # as list_runs would
    return found[0] if len(found) == 1 else None
