"""Head divergence: how far each head's output moves when a named segment of the input is removed
(VHD, He et al. 2024, arXiv 2412.13949; METHODS.md section 3).

For every (prompt, layer, head) and query position ``i`` of interest (the last prompt token by
default)::

    vhd[l, h, i] = || out[l, h](with segment)[i] - out[l, h](without segment)[i'] ||_2

``out`` is the head's output before W_O (``hook_z``, default) or after it (``hook_result``), and
``i'`` is the same token in the run without the segment (``workbench/removal.py``). Three ways to
remove the segment (``removal``):

* ``drop`` (default; "remove the image"): the segment's tokens are deleted, later tokens move
  left (``i' = i - #segment tokens before i``; RoPE phases change with them);
* ``filler``: the segment's ``n`` tokens are replaced by the filler text's tokens repeated to
  exactly ``n`` tokens (default ``"."``: ``n`` dots, the "filler tokens" of Pfau et al. 2024,
  arXiv 2404.15758), so the length and all positions are kept (``i' = i``);
* ``mean_embed``: the segment's token embeddings (``hook_embed``) are replaced by their mean over
  every segment token of the prompt set (positions kept; text segments only).

Queries inside the segment have no counterpart and are never used; a segment of zero tokens leaves
the input unchanged and gives exactly zero. A prompt's image (LLaVA-style models) is the automatic
segment ``"image"``; dropping it (or filling it) runs the model without that image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Float
from torch import Tensor

from probes.base import Probe, rule
from workbench.errors import InputError
from workbench.records import concat, records, string_column
from workbench.removal import (POSITIONS, REMOVALS, WithoutSegment, check_removable,
                               without_segment)
from workbench.selection import DIVERGENCE_METRIC, NORM_WITHOUT_METRIC
from workbench.tokens import Batch, TokenizedPrompt, pad_token_id

OUTPUTS = ("hook_z", "hook_result")
EMBED_HOOK = "hook_embed"
STOP_HOOK = "ln_final.hook_in"


def head_divergence(out_with: Float[Tensor, "n head_index d"],
                    out_without: Float[Tensor, "n head_index d"]
                    ) -> tuple[Float[Tensor, "n head_index"], Float[Tensor, "n head_index"],
                               Float[Tensor, "n head_index"]]:
    """L2 distance between two head outputs, and the norm of each, in fp32.

    ``d`` is d_head for ``hook_z`` and d_model for ``hook_result``; the unit is that of the
    activation (no normalisation). Source: He et al. 2024 (VHD), arXiv 2412.13949.
    """
    with_, without = out_with.float(), out_without.float()
    return (torch.linalg.vector_norm(with_ - without, dim=-1),
            torch.linalg.vector_norm(with_, dim=-1), torch.linalg.vector_norm(without, dim=-1))


def token_vhd(vhd: Float[Tensor, "n heads"], top_k: int) -> Float[Tensor, " n"]:
    """T-VHD: the mean of the ``top_k`` largest head divergences of each row (every head of every
    layer); all heads when there are fewer. k = 8 follows a re-implementation of He et al. 2024
    (arXiv 2412.13949); unverified against the paper's code."""
    return vhd.topk(min(top_k, vhd.shape[-1]), dim=-1).values.mean(-1)


class _Stop(Exception):
    """Raised at the final norm: every head output needed has been seen."""


@dataclass(frozen=True)
class HeadDivergence(Probe):
    """Per-head divergence when a named segment is removed (owns its two forward passes).

    Records (``segment`` = the segment, ``condition`` = ``"removal=<removal>;output=<output>"``):

    * per (prompt, layer, head, query_pos): ``vhd`` (L2 distance), ``vhd_rel`` (``vhd`` divided by
      ``norm_with``; NaN where that norm is 0), ``norm_with`` and ``norm_without`` (L2 norms of
      the head's output with and without the segment);
    * per (prompt, query_pos), layer and head null: ``t_vhd``, the mean of the ``top_k`` largest
      ``vhd`` over all heads;
    * summaries with ``prompt_id`` null: ``mean_vhd``, ``mean_vhd_rel``, ``mean_norm_with``,
      ``mean_norm_without`` per (layer, head) and ``mean_t_vhd``: the mean over prompts of each
      prompt's mean over its query positions.

    Raises (in :meth:`check`, before any forward): InputError when ``segment`` is not given, a
    prompt lacks it, it covers the whole prompt or every query position, it cuts an image, the
    filler has no tokens, or the model lacks the hook the options need.
    """

    name: ClassVar[str] = "head_divergence"
    hook_points: ClassVar[tuple[str, ...]] = ("attn.hook_z",)
    owns_forward: ClassVar[bool] = True
    headline: ClassVar[tuple[str, ...]] = ("mean_vhd", "mean_vhd_rel")
    units: ClassVar[dict[str, str]] = {
        "vhd": "L2 norm of the head output (hook_z: d_head space; hook_result: d_model space)",
        "vhd_rel": "fraction of norm_with", "norm_with": "L2 norm of the head output",
        "norm_without": "L2 norm of the head output", "t_vhd": "L2 norm (mean of top-k vhd)",
        "mean_vhd": "L2 norm of the head output", "mean_vhd_rel": "fraction of norm_with",
        "mean_norm_with": "L2 norm of the head output",
        "mean_norm_without": "L2 norm of the head output",
        "mean_t_vhd": "L2 norm (mean of top-k vhd)",
    }

    segment: str | None = None  # the named segment to remove (e.g. passage, image)
    removal: Literal["drop", "filler", "mean_embed"] = "drop"
    output: Literal["hook_z", "hook_result"] = "hook_z"  # before / after W_O
    positions: Literal["last", "after", "all"] = "last"  # query positions compared
    filler: str = "."  # removal=filler: text whose tokens, repeated, replace the segment's
    top_k: Annotated[int, rule(ge=1)] = 8  # heads averaged by t_vhd
    # Derived from the model and prompts by prepare() (not parameters; not in the manifest):
    _filler_ids: ClassVar[tuple[int, ...]] = ()  # removal=filler: the filler's token ids
    _mean_embed: ClassVar[Tensor | None] = None  # removal=mean_embed: [d_model] fp32

    def __post_init__(self) -> None:
        super().__post_init__()
        for value, allowed, what in ((self.removal, REMOVALS, "removal"),
                                     (self.output, OUTPUTS, "output"),
                                     (self.positions, POSITIONS, "positions")):
            if value not in allowed:
                raise ValueError(f"{what}={value!r} is not one of {', '.join(allowed)}")

    @property
    def condition(self) -> str:
        return f"removal={self.removal};output={self.output}"

    def derived(self, **values: Any) -> "HeadDivergence":
        """A copy carrying data-derived values (``_filler_ids``, ``_mean_embed``)."""
        probe = dataclasses.replace(self)
        for key, value in values.items():
            object.__setattr__(probe, key, value)
        return probe

    # --- validation and preparation ------------------------------------------------------------

    def check_prompts(self, prompts: list) -> None:
        if self.segment is None:
            raise InputError("probe head_divergence needs a segment to remove: "
                             "--param head_divergence.segment=NAME (e.g. passage, image)")
        super().check_prompts(prompts)

    def check(self, tokenized: list[TokenizedPrompt], model: Any) -> None:
        if self.segment is None:
            raise InputError("probe head_divergence needs a segment to remove: "
                             "--param head_divergence.segment=NAME (e.g. passage, image)")
        self._check_hooks(model)
        if self.removal == "filler":
            self._filler_tokens(model.tokenizer)
        for tok in tokenized:
            check_removable(tok, self.segment, self.removal, self.positions)

    def _check_hooks(self, model: Any) -> None:
        last = model.info.n_layers - 1
        needed = [f"blocks.{layer}.attn.{self.output}" for layer in (0, last)]
        needed += [EMBED_HOOK] if self.removal == "mean_embed" else []
        for hook in needed:
            if hook not in model.bridge.hook_dict:
                raise InputError(f"probe head_divergence (segment {self.segment!r}, removal="
                                 f"{self.removal}, output={self.output}) needs hook {hook!r}, "
                                 f"which model {model.info.name!r} does not have")
        if self.output == "hook_result":
            previous = bool(getattr(model.bridge.cfg, "use_attn_result", False))
            try:
                model.bridge.set_use_attn_result(True)
            except Exception as err:  # noqa: BLE001 - the bridge refuses: report, do not crash
                raise InputError(f"probe head_divergence: model {model.info.name!r} cannot "
                                 f"expose per-head hook_result ({err}); use output=hook_z"
                                 ) from None
            finally:
                model.bridge.set_use_attn_result(previous)

    def _filler_tokens(self, tokenizer) -> tuple[int, ...]:
        ids = tokenizer(self.filler, add_special_tokens=False).input_ids
        if not ids:
            raise InputError(f"probe head_divergence: filler {self.filler!r} has no tokens")
        return tuple(int(i) for i in ids)

    def prepare(self, model: Any, tokenized: list[TokenizedPrompt]) -> "HeadDivergence":
        if self.removal == "filler":
            return self.derived(_filler_ids=self._filler_tokens(model.tokenizer))
        if self.removal == "mean_embed":
            return self.derived(_mean_embed=self._segment_mean(model, tokenized))
        return self

    def _segment_mean(self, model: Any, tokenized: list[TokenizedPrompt]) -> Tensor:
        """Mean ``hook_embed`` vector over every segment token of the prompt set, ``[d_model]``
        fp32 (zeros when the segment is empty everywhere: then nothing is replaced)."""
        ids = np.concatenate([t.input_ids[t.segments[self.segment]] for t in tokenized])
        if ids.size == 0:
            return torch.zeros(model.info.d_model)
        unique, counts = np.unique(ids, return_counts=True)
        with torch.inference_mode():
            emb = model.bridge.embed(torch.as_tensor(unique, device=model.device)[None])[0]
        weights = torch.as_tensor(counts, dtype=torch.float32, device=emb.device)
        return (emb.float() * weights[:, None]).sum(0).cpu() / float(ids.size)

    # --- the two forward passes ------------------------------------------------------------------

    def run_batch(self, model: Any, batch: Batch) -> pa.Table | None:
        plan = without_segment(batch, self.segment, self.removal, self.positions,
                               pad_token_id(model.tokenizer), self._filler_ids)
        n_layers, n_heads = model.info.n_layers, model.info.n_heads
        stats = torch.zeros(3, n_layers, plan.rows.numel(), n_heads, device=batch.input_ids.device)
        saved: list[Tensor | None] = [None] * n_layers
        previous = bool(getattr(model.bridge.cfg, "use_attn_result", False))
        if self.output == "hook_result":
            model.bridge.set_use_attn_result(True)
        try:
            self._forward(model, plan.input_ids, plan.model_kwargs(),
                          self._hooks(model, plan, saved, stats, without=True))
            self._forward(model, batch.input_ids, batch.model_kwargs(),
                          self._hooks(model, plan, saved, stats, without=False))
        finally:
            model.bridge.set_use_attn_result(previous)
        return self._records(batch, plan, stats.cpu())

    def _hooks(self, model: Any, plan: WithoutSegment, saved: list, stats: Tensor, *,
               without: bool):
        def make(layer: int):
            def hook(act, hook):
                query = plan.q_without if without else plan.q_with
                picked = act[plan.rows.to(act.device), query.to(act.device)]
                if without:
                    saved[layer] = picked.clone()
                else:
                    dist, norm_with, norm_without = head_divergence(picked, saved[layer])
                    stats[:, layer] = torch.stack([dist, norm_with, norm_without]).to(
                        stats.device)
                    saved[layer] = None
            return hook
        hooks = [(f"blocks.{layer}.attn.{self.output}", make(layer))
                 for layer in range(model.info.n_layers)]
        if without and plan.embed_mask is not None:
            hooks.insert(0, (EMBED_HOOK, self._embed_hook(plan.embed_mask)))
        if STOP_HOOK in model.bridge.hook_dict:
            hooks.append((STOP_HOOK, _raise_stop))
        return hooks

    def _embed_hook(self, mask: Tensor):
        def hook(act, hook):
            out = act.clone()
            out[mask] = self._mean_embed.to(device=act.device, dtype=act.dtype)
            return out
        return hook

    @staticmethod
    def _forward(model: Any, input_ids: Tensor, kwargs: dict, hooks: list) -> None:
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            try:
                model.bridge(input_ids, return_type=None, **kwargs)
            except _Stop:
                pass

    # --- records ---------------------------------------------------------------------------------

    def _records(self, batch: Batch, plan: WithoutSegment, stats: Tensor) -> pa.Table:
        n_layers, n_pairs, n_heads = stats.shape[1:]
        vhd, norm_with, norm_without = stats.double()
        rel = torch.where(norm_with > 0, vhd / norm_with, torch.full_like(vhd, float("nan")))
        layer, pair, head = np.meshgrid(np.arange(n_layers), np.arange(n_pairs),
                                        np.arange(n_heads), indexing="ij")
        pair, rows = pair.ravel(), plan.rows.cpu().numpy()
        q = plan.q_with.cpu().numpy()
        common = dict(segment=self.segment, condition=self.condition)
        cols = dict(layer=layer.ravel(), head=head.ravel(), query_pos=q[pair],
                    prompt_id=string_column(batch.prompt_ids, rows[pair]), **common)
        out = [records(metric, values.reshape(-1).numpy(), **cols) for metric, values in
               ((DIVERGENCE_METRIC, vhd), ("vhd_rel", rel), ("norm_with", norm_with),
                (NORM_WITHOUT_METRIC, norm_without))]
        per_pair = vhd.permute(1, 0, 2).reshape(n_pairs, n_layers * n_heads)
        out.append(records("t_vhd", token_vhd(per_pair, self.top_k).numpy(), query_pos=q,
                           prompt_id=string_column(batch.prompt_ids, rows), **common))
        return concat(out)

    def summarize(self, table: pa.Table) -> pa.Table | None:
        out = []
        for metric in (DIVERGENCE_METRIC, "vhd_rel", "norm_with", NORM_WITHOUT_METRIC, "t_vhd"):
            rows = table.filter(pc.equal(table["metric"], metric))
            if rows.num_rows == 0:
                continue
            keys = ["layer", "head"] if metric != "t_vhd" else []
            per_prompt = rows.group_by(["prompt_id", *keys], use_threads=False).aggregate(
                [("value", "mean")])
            if keys:
                agg = per_prompt.group_by(keys, use_threads=False).aggregate(
                    [("value_mean", "mean")]).sort_by([(k, "ascending") for k in keys])
                values, cols = agg["value_mean_mean"], {k: agg[k] for k in keys}
            else:
                values, cols = [pc.mean(per_prompt["value_mean"]).as_py()], {}
            out.append(records(f"mean_{metric}", np.asarray(values, dtype=np.float64),
                               segment=self.segment, condition=self.condition, **cols))
        return concat(out)


def _raise_stop(activation, hook):
    raise _Stop
