"""The sweep file: models x prompt sets x jobs, validated with pydantic.

Example (``sweep.yaml``)::

    name: heads-2026-11            # the sweep's folder: <runs_dir>/<name>/
    runs_dir: runs                 # optional (default: runs, or --runs-dir)
    chunk_size: 64                 # prompts per shard
    models:
      - smollm2-135m               # a registry name, local folder or Hugging Face id ...
      - {spec: tiny-llama, device: cpu, dtype: float32}   # ... or with loading options
    prompt_sets:
      - data/retrieval.jsonl
      - [data/a.jsonl, data/b.jsonl]   # several files as one set
    jobs:
      - kind: probes
        probes: [attention_entropy, attention_sink]
        params: {attention_entropy: {segment: passage}}
      - kind: head_patching        # sweeps.circuit_jobs (prompt sets that are task files)
        method: activation

A shard is (model, prompt set, chunk of ``chunk_size`` prompts in file order); it runs every job
on its chunk. Relative prompt paths are resolved against the sweep file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import (BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError,
                      field_validator)

from sweeps.jobs import JOB_KINDS, Job
from workbench.errors import InputError


class ModelEntry(BaseModel):
    """A model and its loading options (:func:`workbench.models.load_model`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    spec: str = Field(min_length=1)
    device: str | None = None
    dtype: str | None = None
    device_map: str | None = None
    prepend_bos: bool | None = None

    @property
    def slug(self) -> str:
        """A folder-safe name (``smollm2-135m``; ``org/model`` -> ``org_model``)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.spec).strip("_.")

    def load_options(self) -> dict[str, Any]:
        return {"device": self.device, "dtype": self.dtype, "device_map": self.device_map,
                "prepend_bos": self.prepend_bos}


class SweepSpec(BaseModel):
    """A validated sweep file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    runs_dir: Path | None = None
    chunk_size: int = Field(default=64, ge=1)
    models: list[ModelEntry] = Field(min_length=1)
    prompt_sets: list[list[Path]] = Field(min_length=1)
    jobs: list[SerializeAsAny[Job]] = Field(min_length=1)

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: Any) -> Any:
        return [{"spec": v} if isinstance(v, str) else v for v in value or []]

    @field_validator("prompt_sets", mode="before")
    @classmethod
    def _prompt_sets(cls, value: Any) -> Any:
        return [v if isinstance(v, list) else [v] for v in value or []]

    @field_validator("jobs", mode="before")
    @classmethod
    def _jobs(cls, value: Any) -> Any:
        jobs = []
        for i, raw in enumerate(value or []):
            if isinstance(raw, Job):
                jobs.append(raw)
                continue
            kind = raw.get("kind") if isinstance(raw, dict) else None
            if kind not in JOB_KINDS:
                raise ValueError(f"jobs[{i}]: kind {kind!r} is not one of {', '.join(JOB_KINDS)}")
            jobs.append(JOB_KINDS[kind].model_validate(raw))
        return jobs

    def tables(self) -> list[str]:
        return [t for job in self.jobs for t in job.tables()]


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def parse_spec(raw: Any, base: Path, source: str = "sweep") -> SweepSpec:
    """Validate a sweep given as a dict; relative prompt paths are resolved against ``base``.

    Raises:
        InputError: a bad field (named with its path, e.g. ``jobs.0.probes``), a missing prompt
            file, a table written by two jobs, or a bad job (unknown probe or parameter).
    """
    if not isinstance(raw, dict):
        raise InputError(f"{source}: a sweep file is a mapping (name, models, prompt_sets, jobs)")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise InputError(f"{source}: {_describe(err)}") from None
    sets = [[p if p.is_absolute() else base / p for p in files] for files in spec.prompt_sets]
    missing = [str(p) for files in sets for p in files if not p.is_file()]
    if missing:
        raise InputError(f"{source}: prompt file(s) not found: {', '.join(missing)}")
    tables = spec.tables()
    twice = sorted({t for t in tables if tables.count(t) > 1})
    if twice:
        raise InputError(f"{source}: table(s) {', '.join(twice)} written by more than one job")
    for i, job in enumerate(spec.jobs):
        try:
            job.check()
        except InputError as err:
            raise InputError(f"{source}: jobs[{i}] ({job.kind}): {err}") from None
    return spec.model_copy(update={"prompt_sets": sets})


def load_spec(path: Path) -> SweepSpec:
    """Read and validate a sweep YAML file.

    Raises:
        InputError: the file is missing or not YAML, or :func:`parse_spec` rejects it.
    """
    from workbench.inputs import expect, parse_document, read_text

    path = Path(path)
    raw = parse_document(read_text(path, "sweep file"), path, "sweep file", fmt="yaml")
    expect(raw, dict, path, "sweep file", "a mapping with name, models, prompt_sets and jobs")
    return parse_spec(raw, path.resolve().parent, str(path))
