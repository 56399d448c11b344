"""Attention sinks: attention received per key, sink heads, and VAR sink tokens and segment shares.

Sources (METHODS.md section 2): StreamingLLM (Xiao et al., arXiv 2309.17453) for the first-token
sink; Gu et al. (ICLR 2025, arXiv 2410.10781) for attention received and the sink-head metric;
Sun et al. (arXiv 2402.17762) for the massive activations behind sinks; VAR (Kang et al., ICLR 2025,
arXiv 2503.03321, code ``DimProspector`` / ``HeadFork``) for sink tokens found through sink
dimensions of the residual stream and the segment-centric head statistics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.base import Probe, rule
from probes.massive import MassiveActivations, sink_dims_from_records
from workbench.attention import query_blocks
from workbench.errors import InputError
from workbench.records import concat, records, string_column
from workbench.run import BatchHooks
from workbench.tokens import make_batches, pad_token_id


def query_sums(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
               lengths: Int[Tensor, " batch"]) -> Float[Tensor, "batch head_index key_pos"]:
    """``sum over real queries i of A[i, j]`` for every key ``j`` (padded query rows never count).

    Under a causal (or windowed) mask ``A[i, j] = 0`` for keys a query cannot see, so the sum runs
    over exactly the queries that see ``j``. Accumulated in fp32 over blocks of query rows
    (:func:`workbench.attention.query_blocks`), so a half-precision pattern is never copied whole.
    """
    real = (torch.arange(pattern.shape[-2], device=pattern.device)[None, :]
            < lengths.to(pattern.device)[:, None]).float()
    out = torch.zeros(pattern.shape[0], pattern.shape[1], pattern.shape[3], device=pattern.device)
    for rows in query_blocks(pattern.shape):
        out += torch.matmul(real[:, None, None, rows], pattern[:, :, rows].float())[:, :, 0, :]
    return out


def queries_seeing(lengths: Int[Tensor, " batch"], seq_len: int, window: int | None
                   ) -> Int[Tensor, "batch key_pos"]:
    """How many real queries can see key ``j``: ``i`` in ``[j, min(length, j + window))`` under a
    causal mask with an optional sliding window of ``window`` keys; 0 for padded keys."""
    j = torch.arange(seq_len, device=lengths.device)[None, :]
    end = lengths[:, None].expand(-1, seq_len)
    if window:
        end = torch.minimum(end, j + window)
    return (end - j).clamp_min(0)


def attention_received(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                       lengths: Int[Tensor, " batch"], window: int | None = None
                       ) -> Float[Tensor, "batch head_index key_pos"]:
    """Attention received by each key: the mean of ``A[i, j]`` over the real queries ``i >= j``
    that can see it (Gu et al. 2025, arXiv 2410.10781, Sec. 3: ``alpha_k``). A fraction in [0, 1];
    0 for padded keys."""
    count = queries_seeing(lengths.to(pattern.device), pattern.shape[-1], window)
    return query_sums(pattern, lengths) / count.clamp_min(1)[:, None, :].float()


def var_phi(resid_pre: Float[Tensor, "batch pos d_model"], sink_dims: list[int],
            eps: float = 1e-6) -> Float[Tensor, "batch pos"]:
    """VAR's sink score ``phi(x) = max over sink dims d of |x[d] / RMS(x)|`` with
    ``RMS(x) = sqrt(mean(x^2) + eps)`` (no learned weight), in fp32. Dimensionless; at most
    ``sqrt(d_model)``. Source: VAR code, ``DimProspector.rmsnorm`` / ``run_logic``."""
    x = resid_pre.float()
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # only the sink dims are scaled
    return (x[..., sink_dims] * scale).abs().amax(-1)


def segment_shares(rows: Float[Tensor, "batch head_index query_pos key_pos"],
                   in_segment: Bool[Tensor, "batch key_pos"], is_sink: Bool[Tensor, "batch key_pos"]
                   ) -> tuple[Float[Tensor, "batch head_index query_pos"],
                              Float[Tensor, "batch head_index query_pos"]]:
    """Attention mass on a segment and the share of it on the segment's non-sink tokens.

    Returns ``(mass, nonsink_share)``: ``mass = sum over segment keys of A[i, j]``;
    ``nonsink_share = sum over segment keys that are not sinks / mass`` (NaN where mass is 0).
    VAR's ``HeadFork`` computes the sink ``portion = 1 - nonsink_share`` and keeps a head as
    segment-centric when ``portion <= rho`` (0.5) and ``mass >= 0.2``. fp32, in blocks of query
    rows.
    """
    keys = torch.stack([in_segment, in_segment & ~is_sink], -1).to(rows.device)  # [batch, key, 2]
    keys = keys[:, None].float()
    both = torch.cat([torch.matmul(rows[:, :, block].float(), keys)  # [batch, head, query, 2]
                      for block in query_blocks(rows.shape)], dim=2)
    mass = both[..., 0]
    return mass, both[..., 1] / mass


@dataclass
class _State:
    batch: Any
    windows: list[int | None]
    sums: dict[int, Tensor] = field(default_factory=dict)  # layer -> [batch, head, key]
    phi: dict[int, Tensor] = field(default_factory=dict)  # layer -> [batch, pos] (VAR layers)
    segment_rows: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttentionSink(Probe):
    """Attention sinks (hooks ``hook_resid_pre`` and ``attn.hook_pattern``).

    Per (prompt, layer, head), fractions of attention:

    * ``received`` per ``key_pos``: mean attention the key receives from the real queries that can
      see it (:func:`attention_received`), for the first ``received_keys`` keys (``None``: every
      key) and for every VAR sink token of that layer. The default 8 keeps long prompts bounded
      (8k tokens would otherwise give 8k rows per head).
    * ``sink_head`` (``key_pos`` 0): 1.0 when token 0 receives more than ``eps`` (Gu et al.'s
      indicator, eps = 0.3), else 0.0.
    * ``sink_share_first``: mean over real queries of ``A[i, 0]`` (equal to ``received`` at key 0
      for full causal attention; smaller under a sliding window).
    * ``sink_share_var``: mean over real queries of the attention on the layer's VAR sink tokens
      (layers ``var_first_layer`` .. L-1, only when there are sink dimensions).
    * ``var_sink_phi`` (``head`` null) per (prompt, layer, ``key_pos``): ``phi`` of each VAR sink
      token, i.e. a token whose :func:`var_phi` on ``resid_pre`` exceeds ``tau`` (VAR's code uses
      ``>``) in the ``sink_dims``.
    * with ``segment``: ``segment_mass`` (attention on the segment) and ``segment_nonsink_share``
      (the part of it on non-sink segment tokens; VAR layers, when the mass is > 0) at the last
      token (``segment_query="last"``) or every query after the segment (``"after"``).

    Summaries (``prompt_id`` null): ``sink_head_rate`` per (layer, head) (fraction of prompts),
    ``sink_head_frac`` per layer and for the run (layer null): the fraction of (prompt, head) pairs
    for which token 0 is a sink, Gu et al.'s ``Sink_1^eps``; ``mean_received`` per (layer, head,
    key_pos < received_keys), ``mean_sink_share_first``, ``mean_sink_share_var``,
    ``mean_segment_mass``, ``mean_segment_nonsink_share`` per (layer, head).

    ``sink_dims``: residual dimensions for VAR; ``None`` (default) discovers them in
    :meth:`prepare` from the first ``discover_prompts`` prompts of the set (file order) with
    :class:`probes.massive.MassiveActivations` at its defaults; ``[]`` turns VAR off. The resolved
    list is what the manifest records.

    Raises (in :meth:`check`): InputError for a missing segment or a sink dimension outside the
    model's ``d_model``.
    """

    name: ClassVar[str] = "attention_sink"
    hook_points: ClassVar[tuple[str, ...]] = ("hook_resid_pre", "attn.hook_pattern")
    headline: ClassVar[tuple[str, ...]] = ("mean_sink_share_first", "sink_head_rate")
    units: ClassVar[dict[str, str]] = {
        "received": "fraction of attention", "sink_head": "indicator (0/1)",
        "sink_share_first": "fraction of attention", "sink_share_var": "fraction of attention",
        "var_sink_phi": "|x[d]| / RMS(x)", "segment_mass": "fraction of attention",
        "segment_nonsink_share": "fraction of segment attention",
        "sink_head_rate": "fraction of prompts", "sink_head_frac": "fraction of (prompt, head)",
        "mean_received": "fraction of attention",
        "mean_sink_share_first": "fraction of attention",
        "mean_sink_share_var": "fraction of attention",
        "mean_segment_mass": "fraction of attention",
        "mean_segment_nonsink_share": "fraction of segment attention",
    }

    # Gu et al.: token 0 is a sink for a head when it receives more than eps (a fraction)
    eps: Annotated[float, rule(gt=0, lt=1)] = 0.3
    # record `received` for key_pos < this (None: all) + sinks
    received_keys: Annotated[int | None, rule(ge=1)] = 8
    sink_dims: list[Annotated[int, rule(ge=0)]] | None = None  # VAR sink dimensions; None: discover
    discover_prompts: Annotated[int, rule(ge=1)] = 16  # first prompts used to discover sink_dims
    tau: Annotated[float, rule(gt=0)] = 20.0  # VAR: a token is a sink when phi > tau
    var_first_layer: Annotated[int, rule(ge=0)] = 2  # VAR sink tokens on layers var_first_layer..
    segment: str | None = None  # segment-centric statistics for this named segment
    segment_query: Literal["last", "after"] = "last"  # queries for the segment statistics

    def check(self, tokenized: list, model: Any) -> None:
        d_model = model.info.d_model
        bad = [d for d in self.sink_dims or [] if not 0 <= d < d_model]
        if bad:
            raise InputError(f"attention_sink: sink_dims {bad} are outside the model's residual "
                             f"stream (d_model = {d_model})")
        if self.segment is not None:
            for tok in tokenized:
                if self.segment not in tok.segments:
                    raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment "
                                     f"{self.segment!r} (probe attention_sink, segment=)")

    def prepare(self, model: Any, tokenized: list) -> "AttentionSink":
        if self.sink_dims is not None:
            return self
        found = discover_sink_dims(model, tokenized[:self.discover_prompts])
        return dataclasses.replace(self, sink_dims=[d for d, _ in found])

    def start(self, batch: Any, model: Any) -> _State:
        return _State(batch, model.info.attention_windows)

    def _var_layer(self, state: _State, layer: int) -> bool:
        return bool(self.sink_dims) and self.var_first_layer <= layer < len(state.windows)

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        batch = state.batch
        if point == "hook_resid_pre":
            if self._var_layer(state, layer):
                state.phi[layer] = var_phi(activation, list(self.sink_dims)).cpu()
            return
        state.sums[layer] = query_sums(activation, batch.lengths).cpu()
        if self.segment is None:
            return
        if self.segment_query == "last":
            last = batch.last_pos().to(activation.device)
            rows = activation[torch.arange(batch.size), :, last, :][:, :, None, :]
        else:
            rows = activation
        in_seg = batch.segment_mask(self.segment).to(activation.device)
        sinks = self._sinks(state, layer).to(in_seg.device)
        mass, share = segment_shares(rows, in_seg, sinks)
        state.segment_rows[layer] = (mass.cpu(), share.cpu())

    def _sinks(self, state: _State, layer: int) -> Tensor:
        """``[batch, pos]`` bool: VAR sink tokens of ``layer`` (all False outside VAR layers)."""
        batch = state.batch
        if layer not in state.phi:
            return torch.zeros(batch.size, batch.seq_len, dtype=torch.bool)
        return (state.phi[layer] > self.tau) & batch.valid().cpu()

    def finish(self, state: _State) -> pa.Table | None:
        batch, layers = state.batch, sorted(state.sums)
        lengths, ids = batch.lengths.cpu(), batch.prompt_ids
        sums = torch.stack([state.sums[layer] for layer in layers]).double()  # [L, b, head, key]
        count = torch.stack([queries_seeing(lengths, batch.seq_len, state.windows[layer])
                             for layer in layers])
        received = sums / count.clamp_min(1)[:, :, None, :]
        sinks = torch.stack([self._sinks(state, layer) for layer in layers])  # [L, batch, key]
        n_first = batch.seq_len if self.received_keys is None else self.received_keys
        first = torch.arange(batch.seq_len) < n_first
        keep = batch.valid().cpu()[None] & (first[None, None] | sinks)
        keep = keep[:, :, None, :].expand_as(received)
        lay = np.asarray(layers)
        idx = keep.nonzero().numpy()
        out = [records("received", received[keep].numpy(), layer=lay[idx[:, 0]], head=idx[:, 2],
                       key_pos=idx[:, 3], prompt_id=string_column(ids, idx[:, 1]))]
        per_head = _per_head_columns(lay, len(ids), received.shape[2], ids)
        out.append(records("sink_head", (received[..., 0] > self.eps).double().numpy().ravel(),
                           key_pos=0, **per_head))
        share_first = sums[..., 0] / lengths[None, :, None]
        out.append(records("sink_share_first", share_first.numpy().ravel(), key_pos=0, **per_head))
        var = [i for i, layer in enumerate(layers) if layer in state.phi]
        if var:
            share = (sums[var] * sinks[var][:, :, None, :]).sum(-1) / lengths[None, :, None]
            out.append(records("sink_share_var", share.numpy().ravel(),
                               **_per_head_columns(lay[var], len(ids), received.shape[2], ids)))
            phi = torch.stack([state.phi[layers[i]] for i in var]).double()
            hit = sinks[var]
            pidx = hit.nonzero().numpy()
            out.append(records("var_sink_phi", phi[hit].numpy(), layer=lay[var][pidx[:, 0]],
                               key_pos=pidx[:, 2], prompt_id=string_column(ids, pidx[:, 1])))
        if self.segment is not None:
            out.extend(self._segment_records(state))
        return concat(out)

    def _segment_records(self, state: _State) -> list[pa.Table]:
        batch = state.batch
        in_seg = batch.segment_mask(self.segment).cpu()
        pos = torch.arange(batch.seq_len)
        seg_last = torch.where(in_seg, pos[None, :], -1).amax(-1)  # [batch], -1: empty segment
        if self.segment_query == "last":
            qpos = batch.last_pos().cpu()[:, None]  # [batch, 1]
            use = (seg_last >= 0)[:, None]
        else:
            qpos = pos[None, :].expand(batch.size, -1)
            use = (qpos > seg_last[:, None]) & (seg_last >= 0)[:, None] & batch.valid().cpu()
        out = []
        for layer in sorted(state.segment_rows):
            mass, share = state.segment_rows[layer]  # [batch, head, q']
            for metric, values, keep in (
                    ("segment_mass", mass, use[:, None, :].expand_as(mass)),
                    ("segment_nonsink_share", share, use[:, None, :] & (mass > 0))):
                if metric == "segment_nonsink_share" and layer not in state.phi:
                    continue
                idx = keep.nonzero().numpy()
                out.append(records(metric, values[keep].double().numpy(), layer=layer,
                                   head=idx[:, 1], query_pos=qpos[idx[:, 0], idx[:, 2]].numpy(),
                                   segment=self.segment,
                                   prompt_id=string_column(batch.prompt_ids, idx[:, 0])))
        return out

    def summarize(self, table: pa.Table) -> pa.Table | None:
        per_prompt = table.filter(pc.is_valid(table["prompt_id"]))
        out = [_group_mean(per_prompt, "sink_head", ["layer", "head"], "sink_head_rate"),
               _group_mean(per_prompt, "sink_head", ["layer"], "sink_head_frac"),
               _group_mean(per_prompt, "sink_head", [], "sink_head_frac")]
        received = per_prompt.filter(pc.equal(per_prompt["metric"], "received"))
        if self.received_keys is not None:
            received = received.filter(pc.less(received["key_pos"], self.received_keys))
        out.append(_group_mean(received, "received", ["layer", "head", "key_pos"],
                               "mean_received"))
        for metric in ("sink_share_first", "sink_share_var"):
            out.append(_group_mean(per_prompt, metric, ["layer", "head"], f"mean_{metric}"))
        for metric in ("segment_mass", "segment_nonsink_share"):
            out.append(_group_mean(per_prompt, metric, ["layer", "head", "segment"],
                                   f"mean_{metric}"))
        return concat(out)


def _per_head_columns(layers: np.ndarray, n_batch: int, n_heads: int, ids: list[str]) -> dict:
    """Columns for a ``[layer, batch, head]`` tensor flattened in C order."""
    lay, b, head = np.indices((len(layers), n_batch, n_heads)).reshape(3, -1)
    return dict(layer=layers[lay], head=head, prompt_id=string_column(ids, b))


def _group_mean(table: pa.Table, metric: str, keys: list[str], out_metric: str
                ) -> pa.Table | None:
    """Mean ``value`` of ``metric`` rows grouped by ``keys`` (all rows when empty), as records."""
    rows = table.filter(pc.equal(table["metric"], metric))
    if rows.num_rows == 0:
        return None
    agg = rows.group_by(keys, use_threads=False).aggregate([("value", "mean")])
    if keys:
        agg = agg.sort_by([(k, "ascending") for k in keys])
    return records(out_metric, agg["value_mean"].to_numpy(), **{k: agg[k] for k in keys})


def discover_sink_dims(model: Any, tokenized: list, batch_size: int = 8
                       ) -> list[tuple[int, float]]:
    """Sink dimensions of ``model`` on ``tokenized`` prompts: one pass of
    :class:`probes.massive.MassiveActivations` (default thresholds, ``top_k=1``) over them, then
    :func:`probes.massive.sink_dims_from_records`. Returns ``[(dim, fraction of prompts)]``."""
    probe = MassiveActivations(top_k=1)
    hooks = BatchHooks(model, [probe])
    tables = [hooks.run_batch(b).get(probe.name)
              for b in make_batches(tokenized, batch_size, pad_token_id(model.tokenizer))]
    table = concat(tables)
    return [] if table is None else sink_dims_from_records(table, probe.min_prompt_frac)
