"""Job kinds of a sweep: what a shard runs on its prompt chunk. One registry, :data:`JOB_KINDS`.

A job kind is a pydantic model with a ``kind`` field and three methods:

* ``tables()``: the record tables it writes (names unique within a sweep);
* ``prepare(model, prompt_set)``: data-derived state computed once per (worker, model, prompt
  set) from the WHOLE prompt set (so a chunked sweep equals one ``workbench run``);
* ``run(prepared, model, ids)``: ``{table: records}`` for the prompts ``ids`` (one chunk);
* ``summarize(table_name, table)``: run-level records added when the tables are joined.

New kinds plug in with :func:`register_job_kind`. A job object travels to the workers (Ray
pickles it by class), so a kind must live in an importable module.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from workbench.errors import InputError
from workbench.prompts import PromptSet
from workbench.records import conform


class Job(BaseModel):
    """Base of every job kind (YAML fields are checked strictly: unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str
    description: ClassVar[str] = ""

    def tables(self) -> list[str]:
        raise NotImplementedError

    def check(self) -> None:
        """Raise :class:`InputError` for a bad job before any model is loaded."""

    def prepare(self, model, prompt_set: PromptSet) -> Any:
        raise NotImplementedError

    def validate(self, model, prompt_set: PromptSet) -> list[str]:
        """Raise :class:`InputError` if this job cannot run on ``prompt_set`` with ``model``
        (checked for every model and prompt set before any shard starts); return warnings about
        prompts it will write no rows for. Default: prepare, no warnings."""
        self.prepare(model, prompt_set)
        return []

    def run(self, prepared: Any, model, ids: list[str]) -> dict[str, pa.Table]:
        raise NotImplementedError

    def summarize(self, name: str, table: pa.Table) -> pa.Table | None:
        return None

    def units(self) -> dict[str, str]:
        return {}

    def describe(self) -> list[dict]:
        """Manifest entries (``probes`` of ``run.json``), one per table."""
        params = self.model_dump(mode="json", exclude={"kind"})
        return [{"name": t, "job": self.kind, "params": params} for t in self.tables()]


class ProbesJob(Job):
    """Probes in one shared forward per batch (as ``workbench run``): one table per probe."""

    kind: Literal["probes"] = "probes"
    probes: list[str] = Field(min_length=1)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    batch_size: int | None = Field(default=None, ge=1)  # None: from free memory
    attention: str = "auto"  # auto | eager | sdpa (workbench.attention_impl)
    description: ClassVar[str] = "probes from the PROBES registry in one shared forward"

    def _make(self) -> list:
        from probes import make_probes

        return make_probes(self.probes, self.params)

    def tables(self) -> list[str]:
        return list(self.probes)

    def check(self) -> None:
        from workbench.attention_impl import ATTENTION_CHOICES

        self._make()
        if self.attention not in ATTENTION_CHOICES:
            raise InputError(f"attention {self.attention!r}: choose one of "
                             f"{', '.join(ATTENTION_CHOICES)}")

    def validate(self, model, prompt_set: PromptSet) -> list[str]:
        from workbench.coverage import input_warnings
        from workbench.run import check_hook_points
        from workbench.tokens import tokenize_prompt_set

        info = model.info
        tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=info.prepend_bos,
                                        n_ctx=info.n_ctx, model_name=info.name,
                                        images=model.images)
        probes = self._make()
        for probe in probes:
            check_hook_points(model, probe)
            probe.check(tokenized, model)
        return input_warnings(tokenized, probes)

    def prepare(self, model, prompt_set: PromptSet) -> Any:
        from workbench.run import BatchHooks, RunOptions, batch_plan, prepare_probes

        tokenized, probes = prepare_probes(model, prompt_set, self._make())
        hooks = BatchHooks(model, probes, attention=self.attention)
        plan = batch_plan(model, tokenized, hooks, RunOptions(batch_size=self.batch_size))
        return {"tokenized": {t.id: t for t in tokenized}, "hooks": hooks, "plan": plan}

    def run(self, prepared: Any, model, ids: list[str]) -> dict[str, pa.Table]:
        from workbench.records import concat
        from workbench.tokens import make_batches, pad_token_id

        chunk = [prepared["tokenized"][i] for i in ids]
        batches = make_batches(chunk, prepared["plan"].batch_size, pad_token_id(model.tokenizer))
        out: dict[str, list[pa.Table]] = {}
        for batch in batches:
            for name, table in prepared["hooks"].run_batch(batch).items():
                out.setdefault(name, []).append(table)
        return {name: concat(parts) for name, parts in out.items()}

    def summarize(self, name: str, table: pa.Table) -> pa.Table | None:
        probe = {p.name: p for p in self._make()}.get(name)
        return None if probe is None else probe.summarize(table)

    def units(self) -> dict[str, str]:
        return {k: v for p in self._make() for k, v in p.units.items()}

    def describe(self) -> list[dict]:
        return [{"name": p.name, "job": self.kind, "params": p.params(),
                 "hook_points": list(p.hook_points), "units": dict(p.units)}
                for p in self._make()]


JOB_KINDS: dict[str, type[Job]] = {"probes": ProbesJob}


def register_job_kind(cls: type[Job]) -> type[Job]:
    """Add a job kind (usable as a class decorator); its ``kind`` default names it in YAML."""
    kind = cls.model_fields["kind"].default
    if not isinstance(kind, str) or not kind:
        raise TypeError(f"{cls.__name__}.kind needs a string default")
    JOB_KINDS[kind] = cls
    return cls


def conform_tables(tables: dict[str, pa.Table], run_id: str) -> dict[str, pa.Table]:
    """Fill ``run_id`` (and ``probe`` where null) the way ``workbench run`` does."""
    return {name: conform(t, run_id=run_id, probe=name) for name, t in tables.items()
            if t is not None and t.num_rows}
