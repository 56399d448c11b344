"""Circuit job kinds for sweeps: per-head patching effects over a task prompt set, in shards.

``kind: head_patching`` scores every head by activation patching (resumed and batched,
:func:`circuits.patching.activation_patching`) or attribution patching (EAP, arXiv:2310.10348,
:func:`circuits.attribution.attribution_patching`) on the shard's prompts. A shard writes the
per-prompt rows only (``logit_diff`` per (prompt, layer, head) with the head patched, and the
unpatched ``clean_logit_diff`` / ``corrupted_logit_diff`` per prompt); ``effect`` and ``score`` per
head are computed over ALL prompts when the run's parts are joined, from those rows, by
:class:`circuits.effects.HeadEffects` itself, so they equal a single ``workbench circuits`` pass.
The prompt set must be a task file (answer, distractor, corrupted_text).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from sweeps.jobs import Job, register_job_kind
from workbench.errors import InputError
from workbench.prompts import PromptSet

UNPATCHED = ("clean_logit_diff", "corrupted_logit_diff")


@register_job_kind
class HeadPatchingJob(Job):
    """Per-head patching scores of a task, sharded by prompts."""

    kind: Literal["head_patching"] = "head_patching"
    method: Literal["activation", "attribution"] = "activation"
    direction: str = "corrupted_into_clean"
    positions: str | None = None  # None/all, last, or segment names (circuits.effects)
    heads_per_forward: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    table: str = "head_effects"
    description: ClassVar[str] = "activation or attribution patching of every head"

    def tables(self) -> list[str]:
        return [self.table]

    def check(self) -> None:
        from circuits.effects import check_direction

        check_direction(self.direction)

    def prepare(self, model, prompt_set: PromptSet) -> Any:
        from circuits.effects import check_positions
        from circuits.tasks import load_task

        if len(prompt_set.files) != 1:
            raise InputError("head_patching: a task is one prompt file; got "
                             f"{len(prompt_set.files)}")
        task = load_task(prompt_set.files[0].path, model)
        check_positions(task, self.positions)
        return task

    def run(self, prepared: Any, model, ids: list[str]) -> dict[str, pa.Table]:
        from circuits.attribution import attribution_patching
        from circuits.patching import activation_patching
        from workbench.records import concat, records

        task = _subset(prepared, ids)
        common = dict(direction=self.direction, positions=self.positions,
                      batch_size=self.batch_size)
        if self.method == "activation":
            effects = activation_patching(model, task, heads_per_forward=self.heads_per_forward,
                                          **common)
        else:
            effects = attribution_patching(model, task, **common)
        rows = effects.records()
        per_prompt = rows.filter(pc.equal(rows["metric"], "logit_diff"))
        unpatched = [records(name, values, prompt_id=list(task.prompt_ids), segment=task.name,
                             condition=self.direction)
                     for name, values in zip(UNPATCHED, (effects.clean, effects.corrupted))]
        return {self.table: concat([per_prompt, *unpatched])}

    def summarize(self, name: str, table: pa.Table) -> pa.Table | None:
        from circuits.effects import HeadEffects

        effects = _effects_from_rows(table, HeadEffects, self)
        rows = effects.records()
        return rows.filter(pc.is_in(rows["metric"], pa.array(["effect", "score"])))

    def units(self) -> dict[str, str]:
        from circuits.options import UNITS

        return {**{k: UNITS[k] for k in ("logit_diff", "effect", "score")},
                **{k: "logits" for k in UNPATCHED}}


def _subset(task, ids: list[str]):
    """The task restricted to the prompts ``ids`` (in that order)."""
    import torch

    index = {p: i for i, p in enumerate(task.prompt_ids)}
    keep = [index[i] for i in ids]
    at = torch.tensor(keep, dtype=torch.long)
    prompts = PromptSet(tuple(task.prompt_set.prompts[i] for i in keep), task.prompt_set.files)
    return replace(task, prompt_set=prompts, clean=[task.clean[i] for i in keep],
                   corrupted=[task.corrupted[i] for i in keep], answer=task.answer[at],
                   distractor=task.distractor[at])


def _effects_from_rows(table: pa.Table, cls, job: HeadPatchingJob):
    """A :class:`HeadEffects` rebuilt from the joined per-prompt rows (prompts in table order)."""
    df = table.select(["metric", "layer", "head", "prompt_id", "value", "segment"]).to_pandas()
    clean = df[df.metric == UNPATCHED[0]].set_index("prompt_id").value
    corrupted = df[df.metric == UNPATCHED[1]].set_index("prompt_id").value
    ids = list(clean.index)
    patched_rows = df[df.metric == "logit_diff"]
    n_layers, n_heads = int(patched_rows.layer.max()) + 1, int(patched_rows["head"].max()) + 1
    patched = np.full((len(ids), n_layers, n_heads), np.nan)
    row = patched_rows.prompt_id.map({p: i for i, p in enumerate(ids)}).to_numpy()
    patched[row, patched_rows["layer"].astype(int), patched_rows["head"].astype(int)] = \
        patched_rows.value.to_numpy()
    method = {"activation": "activation_patching", "attribution": "attribution_patching"}
    return cls(method[job.method], str(df.segment.iloc[0]), job.direction, patched,
               clean.to_numpy(), corrupted[ids].to_numpy(), ids)
