"""Attention entropy per (prompt, layer, head, query position), raw and normalised, and restricted
to a named segment (CARVE, Ge et al. 2025, arXiv 2509.06461; see METHODS.md section 1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from probes.base import Probe
from workbench.attention import key_mask, query_blocks, visible_keys
from workbench.errors import InputError
from workbench.records import concat, records, string_column


def attention_entropy(pattern: Float[Tensor, "batch head_index query_pos key_pos"]
                      ) -> Float[Tensor, "batch head_index query_pos"]:
    """Shannon entropy of each query's attention distribution, in nats (0 ln 0 = 0).

    ``pattern`` rows are post-softmax (sum to 1). Computed in the pattern's dtype; pass fp32.
    Source: Ge et al. 2025 (CARVE), arXiv 2509.06461, Eq. 3.3.
    """
    return -torch.xlogy(pattern, pattern).sum(-1)


def segment_entropy(rows: Float[Tensor, "batch head_index query_pos key_pos"],
                    in_segment: Bool[Tensor, "batch key_pos"], *, renormalise: bool = True
                    ) -> tuple[Float[Tensor, "batch head_index query_pos"],
                               Float[Tensor, "batch head_index query_pos"]]:
    """Entropy of attention restricted to a segment's keys, and the attention mass on them.

    Each row is restricted to the keys where ``in_segment`` is True; with ``renormalise`` (CARVE's
    reading, which the paper does not state) the slice is divided by its mass before the entropy is
    taken, so the entropy is in [0, ln(#segment keys)]. A row with zero mass on the segment has
    entropy 0.

    Returns:
        (entropy in nats, mass on the segment as a fraction of the row).
    """
    restricted = rows * in_segment[:, None, None, :].to(rows.dtype)
    mass = restricted.sum(-1)
    if renormalise:
        restricted = restricted / mass.clamp_min(torch.finfo(rows.dtype).tiny)[..., None]
    return -torch.xlogy(restricted, restricted).sum(-1), mass


@dataclass
class _State:
    batch: Any
    windows: list[int | None]
    neg_entropy: Tensor  # [layer, batch, head, query]: sum_j p ln p, filled by the hooks
    scratch: Tensor | None = None  # [batch, head, query block, key] fp32, reused by every layer
    segment_rows: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


def _scratch(state: _State, block: Tensor) -> Tensor:
    """A view shaped like ``block`` of the batch's fp32 scratch buffer. The first query block of a
    layer is the largest, so the buffer is allocated once per batch (and per device)."""
    if state.scratch is None or state.scratch.shape[2] < block.shape[2] or \
            state.scratch.device != block.device:
        state.scratch = torch.empty_like(block)
    return state.scratch[:, :, :block.shape[2]]


@dataclass(frozen=True)
class AttentionEntropy(Probe):
    """Attention entropy of every real query position (hook ``attn.hook_pattern``).

    Records (``query_pos`` set, ``key_pos`` null):

    * ``entropy`` (nats) and ``entropy_norm`` (entropy / ln(number of visible keys), in [0, 1]) per
      (prompt, layer, head, query_pos). Queries that see one key (position 0 under a causal mask)
      have zero entropy by construction and are not recorded; padding never is.
    * with ``segment``: ``segment_entropy`` (nats), ``segment_entropy_norm`` (divided by
      ln(number of visible segment keys); null-free, recorded when at least 2 are visible) and
      ``segment_mass`` (fraction of the row on the segment) at the last prompt token
      (``segment_query="last"``, CARVE's choice) or at every query that sees the segment (``"all"``).
    * summaries with ``prompt_id`` null: ``mean_entropy``, ``mean_entropy_norm`` (and
      ``mean_segment_*``) per (layer, head): the mean over every recorded (prompt, query).

    Raises (in :meth:`check`): InputError when a prompt lacks the named segment.
    """

    name: ClassVar[str] = "attention_entropy"
    hook_points: ClassVar[tuple[str, ...]] = ("attn.hook_pattern",)
    headline: ClassVar[tuple[str, ...]] = ("mean_entropy_norm", "mean_entropy")
    units: ClassVar[dict[str, str]] = {
        "entropy": "nats", "entropy_norm": "fraction of ln(visible keys)",
        "segment_entropy": "nats", "segment_entropy_norm": "fraction of ln(visible segment keys)",
        "segment_mass": "fraction of attention",
        "mean_entropy": "nats", "mean_entropy_norm": "fraction of ln(visible keys)",
        "mean_segment_entropy": "nats",
        "mean_segment_entropy_norm": "fraction of ln(visible segment keys)",
        "mean_segment_mass": "fraction of attention",
    }

    segment: str | None = None  # restrict to this named segment as well
    segment_query: Literal["last", "all"] = "last"  # which queries get segment entropy
    segment_renormalise: bool = True  # renormalise the restricted row (CARVE code's reading)

    def check(self, tokenized: list, model: Any) -> None:
        if self.segment is None:
            return
        for tok in tokenized:
            if self.segment not in tok.segments:
                raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment "
                                 f"{self.segment!r} (probe attention_entropy, segment=)")

    def start(self, batch: Any, model: Any) -> _State:
        shape = (model.info.n_layers, batch.size, model.info.n_heads, batch.seq_len)
        return _State(batch, model.info.attention_windows,
                      torch.zeros(shape, dtype=torch.float32, device=batch.input_ids.device))

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        # Same quantity as attention_entropy(), block by block of query rows (query_blocks) into a
        # scratch buffer reused across layers: fp32 work whatever the model's dtype, and scratch
        # memory bounded by QUERY_BLOCK_BYTES instead of a second [batch, head, query, key] tensor.
        neg_entropy = state.neg_entropy[layer]
        for rows in query_blocks(activation.shape):
            block = activation[:, :, rows].float()  # a no-op view in fp32
            scratch = _scratch(state, block)
            torch.xlogy(block, block, out=scratch)
            neg_entropy[:, :, rows] = scratch.sum(-1).to(neg_entropy.device)
        if self.segment is not None:
            state.segment_rows[layer] = self._segment_rows(state.batch, activation)

    def _segment_rows(self, batch: Any, pattern: Tensor) -> tuple[Tensor, Tensor]:
        """Segment entropy and mass ``[batch, head, q']`` on the CPU, fp32, in query blocks."""
        in_seg = batch.segment_mask(self.segment).to(pattern.device)
        if self.segment_query == "last":
            rows = pattern[torch.arange(batch.size), :, batch.last_pos().to(pattern.device), :]
            ent, mass = segment_entropy(rows[:, :, None, :].float(), in_seg,
                                        renormalise=self.segment_renormalise)
            return ent.cpu(), mass.cpu()
        parts = [segment_entropy(pattern[:, :, rows].float(), in_seg,
                                 renormalise=self.segment_renormalise)
                 for rows in query_blocks(pattern.shape)]
        return (torch.cat([e for e, _ in parts], -1).cpu(),
                torch.cat([m for _, m in parts], -1).cpu())

    def finish(self, state: _State) -> pa.Table | None:
        batch = state.batch
        n_layers, _, n_heads, seq = state.neg_entropy.shape
        entropy = -state.neg_entropy.cpu() + 0.0  # + 0.0 turns -0.0 into 0.0
        valid = batch.valid().cpu()
        n_keys = torch.stack([visible_keys(seq, w) for w in state.windows])  # [layer, query]
        keep = valid[None, :, None, :] & (n_keys >= 2)[:, None, None, :]
        keep = keep.expand(n_layers, batch.size, n_heads, seq)
        idx = keep.nonzero().numpy()
        ent = entropy[keep].double().numpy()
        norm = (entropy / n_keys.double().log()[:, None, None, :])[keep].numpy()
        cols = dict(layer=idx[:, 0], head=idx[:, 2], query_pos=idx[:, 3],
                    prompt_id=string_column(batch.prompt_ids, idx[:, 1]))
        out = [records("entropy", ent, **cols), records("entropy_norm", norm, **cols)]
        if self.segment is not None:
            out.extend(self._segment_records(state))
        return concat(out)

    def _segment_records(self, state: _State) -> list[pa.Table]:
        batch = state.batch
        in_seg = batch.segment_mask(self.segment).cpu()
        out = []
        for layer in sorted(state.segment_rows):
            ent, mass = state.segment_rows[layer]  # [batch, head, q']
            allowed = key_mask(batch.seq_len, state.windows[layer])  # [query, key]
            n_seg = (allowed[None] & in_seg[:, None, :]).sum(-1)  # [batch, query]
            if self.segment_query == "last":
                qpos = batch.last_pos().cpu()[:, None]  # [batch, 1]
                n_vis = n_seg.gather(1, qpos)
            else:
                qpos = torch.arange(batch.seq_len)[None, :].expand(batch.size, -1)
                n_vis = n_seg.masked_fill(~batch.valid().cpu(), 0)
            keep = (n_vis >= 1)[:, None, :].expand_as(ent)
            idx = keep.nonzero().numpy()
            q = qpos[idx[:, 0], idx[:, 2]].numpy()
            nv = n_vis[idx[:, 0], idx[:, 2]].double()
            cols = dict(layer=layer, head=idx[:, 1], query_pos=q, segment=self.segment,
                        prompt_id=string_column(batch.prompt_ids, idx[:, 0]))
            e = ent[keep].double()
            out.append(records("segment_entropy", e.numpy(), **cols))
            out.append(records("segment_mass", mass[keep].double().numpy(), **cols))
            two = (nv >= 2).numpy()
            norm_cols = {k: (v[two] if isinstance(v, np.ndarray) else
                             (v.filter(pa.array(two)) if isinstance(v, pa.Array) else v))
                         for k, v in cols.items()}
            out.append(records("segment_entropy_norm", (e / nv.log()).numpy()[two], **norm_cols))
        return out

    def summarize(self, table: pa.Table) -> pa.Table | None:
        out = []
        for metric in ("entropy", "entropy_norm", "segment_entropy", "segment_entropy_norm",
                       "segment_mass"):
            rows = table.filter(pc.equal(table["metric"], metric))
            if rows.num_rows == 0:
                continue
            keys = ["layer", "head"] + (["segment"] if metric.startswith("segment") else [])
            agg = rows.group_by(keys, use_threads=False).aggregate([("value", "mean")])
            agg = agg.sort_by([(k, "ascending") for k in keys])
            cols = {k: agg[k] for k in keys}
            out.append(records(f"mean_{metric}", agg["value_mean"].to_numpy(), **cols))
        return concat(out)
