"""The head atlas: run the battery, condense it into one row per (layer, head), write it.

``<out>/`` holds:

* ``atlas.parquet``: one row per (model, layer, head): ``depth`` (layer / n_layers), and per role
  ``<role>_score``, ``<role>_rank`` (1 = most role-like), ``<role>`` (bool label), and ``roles``
  (the held roles, comma-joined); ``ioi_class`` (the IOI head class or null, when the circuits
  part found the classes: :mod:`circuits.ioi_classes`);
* ``atlas.json``: the model, the prompt sets with sha256, the roles with their thresholds, rules
  and sources, the head-type ceilings, the part runs it was built from, the layer-level evidence
  and the findings (:mod:`atlas.findings`);
* ``run.json``: the run manifest (kind ``atlas``), so ``workbench runs`` lists the atlas.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from atlas.battery import PARTS, AtlasOptions, check_inputs, run_parts
from atlas.roles import ROLES, assign_roles, role_table
from atlas.scores import evidence, ioi_class_scores, pattern_ceilings, role_scores
from workbench.errors import InputError, RunStateError
from workbench.run import git_state, library_versions
from workbench.runlock import RunLock, writer
from workbench.store import MANIFEST, RunDir, atomic_write_json, write_parquet

ATLAS_VERSION = 1
CEILING_ROLES = {"previous_token": "previous_token", "duplicate_token": "duplicate_token",
                 "induction": "induction"}  # role -> head_types detector


@dataclass
class Atlas:
    """An atlas read back: ``heads`` is ``atlas.parquet``, ``doc`` is ``atlas.json``."""

    path: Path
    heads: pd.DataFrame
    doc: dict

    @property
    def n_layers(self) -> int:
        return int(self.doc["model"]["n_layers"])

    @property
    def n_heads(self) -> int:
        return int(self.doc["model"]["n_heads"])


def open_atlas(path: Path) -> Atlas:
    """Read ``<path>/atlas.parquet`` and ``atlas.json``.

    Raises:
        RunStateError: the folder holds no finished atlas.
    """
    import json

    from workbench.store import read_parquet

    path = Path(path)
    parquet, doc = path / "atlas.parquet", path / "atlas.json"
    if not parquet.is_file() or not doc.is_file():
        raise RunStateError(f"{path} holds no finished atlas (atlas.parquet and atlas.json); "
                            "make one with `workbench atlas --out ...`")
    if (path / MANIFEST).exists():  # a failed or interrupted rebuild leaves stale tables
        status = RunDir(path).live_status()
        if status != "complete":
            raise RunStateError(f"{path}: the atlas is {status}, not complete (its tables may "
                                "be stale); finish it with `workbench atlas --resume`")
    try:
        meta = json.loads(doc.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunStateError(f"{doc} cannot be read as JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
        raise RunStateError(f"{doc} is not an atlas description (expected an object with "
                            "model, roles, runs)")
    return Atlas(path, read_parquet(parquet).to_pandas(), meta)


def build_atlas(load: Callable[[], Any], options: AtlasOptions, *, model_spec: str,
                on_part: Callable[[str, int, int], None] = lambda *_: None) -> Atlas:
    """Run (or resume) the battery and write the atlas (module docstring).

    ``load()`` returns the :class:`workbench.models.LoadedModel`; it is called only when a part
    has work to do (a resumed, finished atlas is answered from its runs).

    Raises:
        InputError: bad prompt files or options (before anything is written).
        RunStateError: ``out`` exists and neither ``resume`` nor ``overwrite`` was asked for, it
            is not an atlas, or it was made for another model.
    """
    import functools

    from atlas.causal_part import run_late_parts

    prompt_sets = check_inputs(options)
    run = _open_or_create(options, model_spec, prompt_sets)
    start = time.perf_counter()
    load = functools.cache(load)  # loaded at most once, shared by the parts
    try:
        parts = run_parts(load, options, prompt_sets, on_part, model_spec)
        runs = {p: RunDir.open(options.runs_dir / meta["run_id"]) for p, meta in parts.items()}
        atlas = write_atlas(run.path, runs, options, model_spec, parts)
        if run_late_parts(load, atlas, options, model_spec, parts, on_part):  # they need roles
            runs = {p: RunDir.open(options.runs_dir / meta["run_id"]) for p, meta in parts.items()}
            atlas = write_atlas(run.path, runs, options, model_spec, parts)
        timings = {f"{p}_s": meta["seconds"] for p, meta in parts.items()}
        timings["total_s"] = round(time.perf_counter() - start, 3)
        run.update_manifest(status="complete", finished=_now(), timings=timings,
                            model=atlas.doc["model"], runs=atlas.doc["runs"])
    except BaseException as err:
        run.stopped(err)  # interrupted, failed, or (bad input, nothing written) removed
        raise
    return atlas


def _open_or_create(options: AtlasOptions, model_spec: str, prompt_sets: dict) -> RunDir:
    path = options.out
    manifest = {"run_id": path.name, "kind": "atlas", "status": "running", "created": _now(),
                "finished": None, "command": options.command or sys.argv,
                "model_spec": model_spec, "config_key": _config(options, model_spec),
                "prompts": {"name": "atlas", "files": [vars(f) for s in prompt_sets.values()
                                                        for f in s.files]},
                "probes": [], "tables": {}, "versions": library_versions(), "git": git_state(),
                "timings": {}}
    if path.exists() and not (path / MANIFEST).is_file():
        raise RunStateError(f"{path} exists and is not an atlas; choose another --out")
    if path.exists():
        stored = RunDir(path).read_manifest()
        if stored.get("kind") != "atlas":
            raise RunStateError(f"{path} is a {stored.get('kind')!r} run, not an atlas; choose "
                                "another --out")
        if options.resume and stored.get("model_spec") != model_spec:
            raise RunStateError(f"cannot resume atlas {str(path)!r}: it was made for model "
                                f"{stored.get('model_spec')!r}, not {model_spec!r}; use "
                                "--overwrite or another --out")
        old, new = stored.get("config_key", {}), manifest["config_key"]
        differ = [k for k in new if k != "thresholds" and old.get(k) != new[k]]
        if options.resume and differ:  # thresholds only relabel: they may change on resume
            raise RunStateError(f"cannot resume atlas {str(path)!r}: its configuration differs "
                                f"in {', '.join(differ)}; use --overwrite or another --out")
        if options.resume:
            manifest["created"] = stored.get("created", manifest["created"])
    run, _ = RunDir.create(options.runs_dir, path.name, manifest, resume=options.resume,
                           overwrite=options.overwrite, same_config=lambda stored: None)
    if run.state == "complete":  # resume of a finished atlas: check again, rebuild from runs
        run.lock = RunLock(run.path).acquire()  # create() hands a finished run back unlocked
        run.write_manifest({**run.read_manifest(), "status": "running", "writer": writer(),
                            "config_key": manifest["config_key"]})
    return run


def _config(options: AtlasOptions, model_spec: str) -> dict:
    """What decides the atlas's part runs (thresholds only decide its labels)."""
    return {"model_spec": model_spec, "tasks": [str(t) for t in options.tasks],
            "prompt_files": [str(options.natural), str(options.repeated), str(options.context)],
            "n_prompts": options.n_prompts,
            "thorough": options.thorough, "circuit_size": options.circuit_size,
            "circuit_select": str(options.selection),
            "circuit_max_size": options.circuit_max_size, "held_out": options.held_out,
            "n_random": options.n_random, "skip": list(options.skip),
            "thresholds": dict(options.thresholds)}


def write_atlas(path: Path, runs: dict[str, RunDir], options: AtlasOptions, model_spec: str,
                parts: dict[str, dict]) -> Atlas:
    """Condense the part runs into ``atlas.parquet`` and ``atlas.json`` (module docstring)."""
    from atlas.findings import findings

    model = _model(runs)
    n_layers, n_heads = int(model["n_layers"]), int(model["n_heads"])
    probe = {"attribution": "attribution_patching",
             "activation": "activation_patching"}[options.circuit_method]
    scores, members = role_scores(runs, n_layers, n_heads, circuit_probe=probe)
    ceilings = {}
    if "repeated" in runs:
        found = pattern_ceilings(runs["repeated"], list(CEILING_ROLES.values()))
        ceilings = {role: found[det] for role, det in CEILING_ROLES.items()}
    selection = options.selection
    thresholds = {**{r: float(selection.value) for r in ROLES
                     if ROLES[r].rule == "member"}, **options.thresholds}
    heads = assign_roles(scores, thresholds=thresholds, ceilings=ceilings, members=members)
    heads.insert(0, "model", model["name"])
    heads.insert(3, "depth", heads["layer"] / n_layers)
    ioi_class, ioi_doc = (ioi_class_scores(runs["circuits"], n_layers, n_heads)
                          if "circuits" in runs else (None, None))
    if ioi_class is not None:  # workbench circuits --ioi-classes (atlas/battery.py asks for it)
        heads["ioi_class"] = ioi_class.to_numpy()
    from atlas.evidence import attach_evidence

    extra = attach_evidence(heads, runs, path)  # causal effects, composition, head evidence
    doc = {
        "atlas_version": ATLAS_VERSION, "model_spec": model_spec,
        "model": {k: model.get(k) for k in ("name", "source", "architecture", "n_layers",
                                            "n_heads", "n_key_value_heads", "d_model", "dtype",
                                            "device", "prepend_bos", "details")},
        "prompt_sets": _prompt_sets(runs),
        "roles": [{**r, "ceiling": ceilings.get(r["name"]),
                   **({"selection": str(selection)} if r["rule"] == "member" else {})}
                  for r in role_table(thresholds)],
        "circuit_method": probe,
        "runs": {p: {"run_id": meta["run_id"], "path": f"../{meta['run_id']}",
                     "state": meta["state"]} for p, meta in parts.items()},
        "parts_skipped": list(options.skip), "evidence": evidence(runs), "created": _now(),
        **({"ioi_classes": ioi_doc} if ioi_doc is not None else {}),
        **extra,
    }
    if "circuits" in runs:
        from atlas.circuit_summary import circuit_summary

        doc["circuits"] = circuit_summary(runs["circuits"], probe, str(selection))
    doc["findings"] = findings(heads, doc)
    write_parquet(path / "atlas.parquet", pa.Table.from_pandas(heads, preserve_index=False))
    atomic_write_json(path / "atlas.json", doc)
    return Atlas(path, heads, doc)


def _model(runs: dict[str, RunDir]) -> dict:
    if not runs:
        raise InputError("every atlas part is skipped: nothing to build an atlas from")
    models = {p: r.read_manifest().get("model", {}) for p, r in runs.items()}
    names = {m.get("name") for m in models.values()}
    if len(names) != 1:
        raise RunStateError(f"the atlas parts were made with different models: {models}")
    return next(iter(models.values()))


def _prompt_sets(runs: dict[str, RunDir]) -> dict:
    out = {}
    for part, run in runs.items():
        prompts = run.read_manifest().get("prompts", {})
        out[part] = [{"path": f.get("path"), "sha256": f.get("sha256"),
                      "n_prompts": f.get("n_prompts")} for f in prompts.get("files", [])]
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["Atlas", "PARTS", "build_atlas", "open_atlas", "write_atlas"]
