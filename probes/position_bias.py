"""Position bias of attention composed across layers: cumulative attention per prompt and depth,
position profiles of the last token and summary numbers (primacy, recency).

Sources: Wu et al., "On the Emergence of Position Bias in Transformers", ICML 2025, arXiv
2502.01951 (the pure product, Theorem 4.1: under a causal mask it converges to the first token);
the residual-aware rollout of Abnar & Zuidema 2020 (arXiv 2005.00928) as used by Herasimchyk et
al. 2026 (arXiv 2602.16837). See METHODS.md section 4.

Convention (the ``condition`` column): ``product`` is the paper's pure product ``P_l = A_l ...
A_0`` (no residual), ``rollout`` the residual-aware ``P_l = R_l ... R_0`` with ``R = rownorm(w A +
(1 - w) I)``, ``w = rollout_weight = 0.5``. The released code's ``--not_res`` flag is inverted
(``store_false`` with default True: residual connections are OFF unless ``--not_res`` is given);
here nothing is inverted: ``product`` never has the residual term, ``rollout`` always has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.base import Probe, rule
from workbench.errors import InputError
from workbench.heads import check_heads, parse_heads
from workbench.masks import AttentionMask, mask_hooks
from workbench.models import encode
from workbench.records import concat, records, string_column

CONDITIONS = ("product", "rollout")
_SUMMARY_UNITS = {
    "first_token_mass": "fraction of attention", "first_k_mass": "fraction of attention",
    "last_k_mass": "fraction of attention", "middle_mass": "fraction of attention",
    "primacy_index": "index in [-1, 1]", "relative_position": "fraction of prompt length",
    "segment_mass": "fraction of attention",
}
SUMMARY_METRICS = tuple(_SUMMARY_UNITS)


def layer_attention(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                    valid: Bool[Tensor, "batch pos"], head: int | None = None
                    ) -> Float[Tensor, "batch query_pos key_pos"]:
    """One layer's attention matrix ``A`` per prompt, float64: the head average (or one head),
    on ``valid``'s device. The heads are summed in the pattern's dtype (float32 for half
    precision: a sum of ``n_heads`` values, about 1e-7 relative in fp32), then the average and
    everything after it is float64.

    Rows and columns of padding are zero; each real row is renormalised to sum to 1 over the
    prompt's real keys (a no-op in exact arithmetic: it keeps half-precision products
    row-stochastic and guarantees that padding never leaks into a real row).
    """
    if head is not None:
        a, n_heads = pattern[:, head].to(torch.float64, copy=True), 1
    else:
        half = pattern.dtype in (torch.float16, torch.bfloat16)
        a = pattern.sum(1, dtype=torch.float32 if half else None).to(torch.float64)
        n_heads = pattern.shape[1]
    a = a.to(valid.device).div_(n_heads)  # layers of a model split over devices (device_map)
    a.masked_fill_(~(valid[:, :, None] & valid[:, None, :]), 0.0)
    return a.div_(a.sum(-1, keepdim=True).clamp_min(1e-300))


def rollout_matrix(attention: Float[Tensor, "batch query_pos key_pos"],
                   valid: Bool[Tensor, "batch pos"], weight: float = 0.5
                   ) -> Float[Tensor, "batch query_pos key_pos"]:
    """Residual-aware ``R = rownorm(w A + (1 - w) I)`` with the identity on real positions only."""
    r = weight * attention + (1 - weight) * torch.diag_embed(valid.to(attention.dtype))
    return r / r.sum(-1, keepdim=True).clamp_min(1e-300)


def compose(cumulative: Float[Tensor, "batch query_pos key_pos"],
            step: Float[Tensor, "batch query_pos key_pos"]
            ) -> Float[Tensor, "batch query_pos key_pos"]:
    """``P_l = A_l P_{l-1}``: row i of the result is how much position i, after this layer, draws
    from each input position. Row-stochastic inputs give a row-stochastic result."""
    return torch.bmm(step, cumulative)


def position_summary(row: Float[Tensor, "n key_pos"], lengths: Int[Tensor, " n"], k: int
                     ) -> dict[str, Tensor]:
    """Summary numbers of last-token cumulative rows (zero beyond each prompt's length ``n``).

    * ``first_token_mass`` = ``row[0]``; ``first_k_mass`` = ``sum(row[:k])``;
      ``last_k_mass`` = ``sum(row[n-k:])`` (the last token included);
      ``middle_mass`` = ``sum(row[k:n-k])`` (so the three add up to 1 when ``n >= 2k``);
    * ``primacy_index`` = ``(first_k_mass - last_k_mass) / (first_k_mass + last_k_mass)`` in
      [-1, 1]: +1 all of the ends' mass on the first k tokens (primacy), -1 all on the last k
      (recency), 0 balanced (a U-shape is a balanced index with a small ``middle_mass``); 0 when
      both are 0;
    * ``relative_position`` = ``sum_j row[j] * j / (n - 1)``: the mean source position as a fraction
      of the prompt, 0 = first token, 1 = last token.
    """
    pos = torch.arange(row.shape[-1], device=row.device)[None, :]
    n = lengths.to(row.device)[:, None]
    first_k = (row * (pos < k)).sum(-1)
    last_k = (row * ((pos >= n - k) & (pos < n))).sum(-1)
    ends = first_k + last_k
    return {
        "first_token_mass": row[:, 0],
        "first_k_mass": first_k,
        "last_k_mass": last_k,
        "middle_mass": (row * ((pos >= k) & (pos < n - k))).sum(-1),
        "primacy_index": torch.where(ends > 0, (first_k - last_k) / ends.clamp_min(1e-300), 0.0),
        "relative_position": (row * pos).sum(-1) / (n[:, 0] - 1).clamp_min(1),
    }


def head_path(spec: str, n_layers: int, n_heads: int) -> list[int] | None:
    """``"mean"`` -> None (average heads); ``"3"`` -> head 3 in every layer; ``"0.3,1.5,..."`` ->
    one ``layer.head`` per layer, every layer exactly once.

    Raises:
        InputError: a malformed spec, a head out of range, a layer missing or given twice.
    """
    spec = spec.strip()
    if spec == "mean":
        return None
    if spec.isdigit():
        if int(spec) >= n_heads:
            raise InputError(f"position_bias heads={spec!r}: head index {spec} is out of range "
                             f"(the model has heads 0-{n_heads - 1})")
        return [int(spec)] * n_layers
    heads = parse_heads(spec)
    check_heads(heads, n_layers, n_heads, "position_bias heads=")
    layers = [layer for layer, _ in heads]
    if sorted(layers) != list(range(n_layers)):
        raise InputError(f"position_bias heads={spec!r}: give exactly one layer.head for each of "
                         f"the {n_layers} layers (got layers {layers})")
    return [h for _, h in sorted(heads)]


CHAIN_BYTES = 64 * 2**20  # keep every layer's matrix (and skip the n^3 products) up to this size


def chain_rows(matrices: list[Tensor], starts: Tensor) -> Tensor:
    """``starts[:, r] @ M_l @ M_{l-1} @ ... @ M_0`` for every depth ``l``: the rows of the
    cumulative products ``P_l = M_l ... M_0`` that ``starts`` select, without forming ``P_l``.

    Args:
        matrices: ``M_0 .. M_{L-1}``, each ``[batch, pos, pos]``.
        starts: ``[batch, r, pos]`` row vectors (e.g. the last token's indicator).

    Returns:
        ``[L, batch, r, pos]``. Cost: ``L (L + 1) / 2`` vector-matrix products per start row
        (``O(L^2 n^2)``) instead of ``L`` matrix products (``O(L n^3)``); equal to composing the
        matrices up to rounding (another order of the same float64 sums).
    """
    n_layers, (n_batch, r, n) = len(matrices), starts.shape
    chains = starts.new_zeros(n_batch, n_layers * r, n)  # rows l*r .. l*r+r-1: depth l
    for m in range(n_layers - 1, -1, -1):  # depth l's chain starts at M_l, goes down to M_0
        chains[:, m * r:(m + 1) * r] = starts
        chains[:, m * r:] = torch.bmm(chains[:, m * r:], matrices[m])
    return chains.view(n_batch, n_layers, r, n).transpose(0, 1)


def chain_rows_both(matrices: list[Tensor], starts: Tensor, valid: Tensor, weight: float
                    ) -> tuple[Tensor, Tensor]:
    """:func:`chain_rows` of the pure product and of the rollout at once, without forming the
    rollout matrices: a start row times ``R = w A + (1 - w) I`` (on real positions; the rows of
    ``A`` sum to 1, so the row normalisation of :func:`rollout_matrix` is a no-op up to
    rounding) is ``w (row A) + (1 - w) row``, so one ``bmm`` per layer serves both.

    Returns:
        ``(product, rollout)``, each ``[L, batch, r, pos]``.
    """
    n_layers, (n_batch, r, n) = len(matrices), starts.shape
    chains = starts.new_zeros(n_batch, n_layers, 2, r, n)  # depth, (product, rollout), row
    keep = valid.to(starts.dtype)[:, None, None, :]
    for m in range(n_layers - 1, -1, -1):  # depth l's chain starts at M_l, goes down to M_0
        chains[:, m] = starts[:, None]
        active = chains[:, m:]
        moved = torch.bmm(active.reshape(n_batch, -1, n), matrices[m]).view(active.shape)
        moved[:, :, 1] = weight * moved[:, :, 1] + (1 - weight) * active[:, :, 1] * keep
        chains[:, m:] = moved
    chains = chains.permute(1, 2, 0, 3, 4)  # [layer, condition, batch, r, pos]
    return chains[:, 0], chains[:, 1]


@dataclass
class _State:
    batch: Any
    valid: Tensor  # [batch, pos] bool
    path: list[int] | None
    cumulative: dict[str, Tensor]  # condition -> [batch, pos, pos] float64 (composing only)
    last_rows: Tensor  # [layer, condition, batch, pos] float64, filled by the hooks
    col_sums: Tensor  # [layer, condition, batch, pos] float64
    stored: list[Tensor] | None = None  # every layer's A (small prompts: see CHAIN_BYTES)


@dataclass(frozen=True)
class PositionBias(Probe):
    """Cumulative attention across layers per prompt (hook ``attn.hook_pattern``).

    Inside the forward each layer's head-averaged pattern (or the head ``heads`` names for that
    layer) updates one [query, key] matrix per prompt and condition; nothing else is kept.
    ``layer`` in the records is the depth: the value after composing layers 0..layer.

    Records, for ``condition`` in ``product`` (pure product) and ``rollout`` (residual-aware), per
    prompt and layer (``head`` = the path's head at that layer, null for the head average):

    * with ``profiles``: ``last_token_profile`` (key_pos set, query_pos = last token): the last
      token's cumulative attention ``P_l[n-1, j]``; ``column_sum`` (key_pos set):
      ``sum_i P_l[i, j]`` over the prompt's real queries (sums to n over j);
    * ``first_token_mass``, ``first_k_mass``, ``last_k_mass``, ``middle_mass``, ``primacy_index``,
      ``relative_position`` of the last-token row (see :func:`position_summary`), and with
      ``segment`` the row's ``segment_mass`` on that segment;
    * summaries ``mean_<metric>`` of those per (layer, head, condition), prompt_id null.

    Raises (in :meth:`check`): InputError for a bad ``heads`` spec, a prompt shorter than
    ``2 k + 1`` tokens, or a prompt without ``segment``.
    """

    name: ClassVar[str] = "position_bias"
    hook_points: ClassVar[tuple[str, ...]] = ("attn.hook_pattern",)
    headline: ClassVar[tuple[str, ...]] = ("mean_first_token_mass", "mean_primacy_index")
    units: ClassVar[dict[str, str]] = {
        "last_token_profile": "fraction of attention", "column_sum": "attention (sums to n)",
        **_SUMMARY_UNITS, **{f"mean_{m}": unit for m, unit in _SUMMARY_UNITS.items()},
    }

    heads: str = "mean"  # "mean", a head index for every layer ("3"), or "0.3,1.5,..." per layer
    rollout_weight: Annotated[float, rule(gt=0, le=1)] = 0.5  # w in R = rownorm(w A + (1 - w) I)
    k: Annotated[int, rule(ge=1)] = 3  # first / last k tokens in the summary numbers
    segment: str | None = None  # also the last token's cumulative mass on this segment
    profiles: bool = True  # store last_token_profile and column_sum (one row per key position)

    def check(self, tokenized: list, model: Any) -> None:
        head_path(self.heads, model.info.n_layers, model.info.n_heads)
        for tok in tokenized:
            if tok.n_tokens < 2 * self.k + 1:
                raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has {tok.n_tokens} "
                                 f"tokens; position_bias with k={self.k} needs at least "
                                 f"{2 * self.k + 1} (lower k=)")
            if self.segment is not None and self.segment not in tok.segments:
                raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment "
                                 f"{self.segment!r} (probe position_bias, segment=)")

    def start(self, batch: Any, model: Any) -> _State:
        valid = batch.valid()
        shape = (model.info.n_layers, len(CONDITIONS), batch.size, batch.seq_len)
        small = model.info.n_layers * batch.size * batch.seq_len ** 2 * 8 <= CHAIN_BYTES
        eye = None if small else torch.diag_embed(valid.double())  # P_{-1} when composing
        return _State(batch, valid, head_path(self.heads, model.info.n_layers, model.info.n_heads),
                      {} if small else {c: eye for c in CONDITIONS},
                      torch.zeros(shape, dtype=torch.float64, device=valid.device),
                      torch.zeros(shape, dtype=torch.float64, device=valid.device),
                      [] if small else None)

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        head = state.path[layer] if state.path is not None else None
        a = layer_attention(activation, state.valid, head)
        if state.stored is not None:  # composed in finish() by chain_rows
            state.stored.append(a)
            return
        steps = {"product": a, "rollout": rollout_matrix(a, state.valid, self.rollout_weight)}
        rows = torch.arange(state.batch.size, device=a.device)
        last = state.batch.last_pos().to(a.device)
        for c, cond in enumerate(CONDITIONS):
            p = compose(state.cumulative[cond], steps[cond])
            state.cumulative[cond] = p
            state.last_rows[layer, c] = p[rows, last]
            state.col_sums[layer, c] = p.sum(1)

    def _compose_stored(self, state: _State) -> None:
        """Fill ``last_rows`` and ``col_sums`` from the stored layers: the last token's row and
        the sum of the real rows of every ``P_l``, as :meth:`observe` would have composed them."""
        valid = state.valid
        starts = torch.zeros(state.batch.size, 2, state.batch.seq_len, dtype=torch.float64,
                             device=valid.device)
        starts[torch.arange(state.batch.size), 0, state.batch.last_pos().to(valid.device)] = 1.0
        starts[:, 1] = valid.double()
        keep = valid.double()[None, :, None, :]  # P_{-1} is the identity on real positions
        both = chain_rows_both(state.stored, starts, valid, self.rollout_weight)
        for c, rows in enumerate(both):  # CONDITIONS order: product, rollout
            rows = rows * keep  # [layer, batch, 2, pos]
            state.last_rows[:, c], state.col_sums[:, c] = rows[:, :, 0], rows[:, :, 1]
        state.stored = []

    def finish(self, state: _State) -> pa.Table | None:
        batch = state.batch
        if state.stored:
            self._compose_stored(state)
        n_layers, n_cond, size, seq = state.last_rows.shape
        last_rows, col_sums = state.last_rows.cpu(), state.col_sums.cpu()
        lengths = batch.lengths.cpu()
        head = np.asarray(state.path) if state.path is not None else None
        flat = last_rows.reshape(-1, seq)
        summary = position_summary(flat, lengths.repeat(n_layers * n_cond), self.k)
        if self.segment is not None:
            seg = batch.segment_mask(self.segment).cpu().double()
            summary["segment_mass"] = (last_rows * seg).sum(-1).reshape(-1)
        idx = np.indices((n_layers, n_cond, size)).reshape(3, -1)
        cols = dict(layer=idx[0], condition=string_column(CONDITIONS, idx[1]),
                    prompt_id=string_column(batch.prompt_ids, idx[2]),
                    head=None if head is None else head[idx[0]],
                    query_pos=(lengths - 1).numpy()[idx[2]])
        out = [records(m, v.numpy(), **cols) for m, v in summary.items() if m != "segment_mass"]
        if self.segment is not None:  # no segment_mass row where the segment has no tokens
            has = (seg.sum(-1) > 0).numpy()[idx[2]]  # (as attention_entropy, attention_sink)
            kept = {k: (v.filter(pa.array(has)) if isinstance(v, pa.Array) else
                        v if v is None else np.asarray(v)[has]) for k, v in cols.items()}
            out.append(records("segment_mass", summary["segment_mass"].numpy()[has], **kept,
                               segment=self.segment))
        if self.profiles:
            out.extend(self._profile_records(state, last_rows, col_sums, head))
        return concat(out)

    def _profile_records(self, state: _State, last_rows: Tensor, col_sums: Tensor,
                         head: np.ndarray | None) -> list[pa.Table]:
        batch = state.batch
        keep = state.valid.cpu()[None, None].expand(last_rows.shape)
        idx = keep.nonzero().numpy()  # [rows, (layer, condition, batch, key_pos)]
        cols = dict(layer=idx[:, 0], condition=string_column(CONDITIONS, idx[:, 1]),
                    prompt_id=string_column(batch.prompt_ids, idx[:, 2]), key_pos=idx[:, 3],
                    head=None if head is None else head[idx[:, 0]])
        last = (batch.lengths.cpu() - 1).numpy()[idx[:, 2]]
        return [records("last_token_profile", last_rows[keep].numpy(), **cols, query_pos=last),
                records("column_sum", col_sums[keep].numpy(), **cols)]

    def summarize(self, table: pa.Table) -> pa.Table | None:
        out = []
        keys = ["layer", "head", "condition", "segment"]
        for metric in SUMMARY_METRICS:
            rows = table.filter(pc.equal(table["metric"], metric))
            if rows.num_rows == 0:
                continue
            agg = rows.group_by(keys, use_threads=False).aggregate([("value", "mean")])
            agg = agg.sort_by([("layer", "ascending"), ("condition", "ascending")])
            out.append(records(f"mean_{metric}", agg["value_mean"].to_numpy(),
                               **{k: agg[k] for k in keys}))
        return concat(out)


def prompt_matrices(model: Any, text: str, *, layers: list[int] | None = None,
                    heads: str = "mean", rollout_weight: float = 0.5,
                    mask: AttentionMask | None = None) -> dict[str, Any]:
    """One prompt's attention matrices on ``model``, for graphs (:mod:`workbench.graphs`).

    One forward with hooks on ``attn.hook_pattern`` (and ``mask``'s score hooks); keeps float64
    ``[n, n]`` numpy matrices for the requested ``layers`` only (default: all).

    Returns:
        ``{"tokens": [str] * n, "attention": {layer: A_l}, "product": {layer: P_l},
        "rollout": {layer: R_l ... R_0}}`` with ``A_l`` the head average (or ``heads`` path).

    Raises:
        InputError: a bad ``heads`` spec or a layer out of range.
    """
    n_layers = model.info.n_layers
    keep = set(range(n_layers)) if layers is None else set(layers)
    if not keep <= set(range(n_layers)):
        raise InputError(f"layers {sorted(keep)}: the model has layers 0-{n_layers - 1}")
    path = head_path(heads, n_layers, model.info.n_heads)
    ids = encode(model.tokenizer, text, prepend_bos=model.info.prepend_bos)
    valid = torch.ones(1, len(ids), dtype=torch.bool, device=model.device)
    out: dict[str, Any] = {"tokens": model.tokenizer.batch_decode([[i] for i in ids]),
                           "attention": {}, **{c: {} for c in CONDITIONS}}
    cumulative = {c: torch.diag_embed(valid.double()) for c in CONDITIONS}

    def hook(pattern, hook, layer):
        a = layer_attention(pattern, valid, None if path is None else path[layer])
        steps = {"product": a, "rollout": rollout_matrix(a, valid, rollout_weight)}
        for cond in CONDITIONS:
            cumulative[cond] = compose(cumulative[cond], steps[cond])
            if layer in keep:
                out[cond][layer] = cumulative[cond][0].cpu().numpy()
        if layer in keep:
            out["attention"][layer] = a[0].cpu().numpy()

    hooks = [(f"blocks.{layer}.attn.hook_pattern", partial(hook, layer=layer))
             for layer in range(n_layers)]
    hooks = (mask_hooks(model, mask) if mask is not None else []) + hooks
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
        model.bridge(torch.tensor([ids], device=model.device), return_type=None)
    return out


__all__ = ["CONDITIONS", "PositionBias", "chain_rows_both", "compose", "head_path",
           "layer_attention", "position_summary", "prompt_matrices", "rollout_matrix"]
