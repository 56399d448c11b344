"""The full attention pattern [query_pos, key_pos] of chosen heads on the first few prompts, so that
a run can show what a head attends to (the app's Heads and Position pages, ``workbench figures``).

This is storage, not a statistic: the value is ``blocks.{layer}.attn.hook_pattern`` itself (Vaswani
et al. 2017, arXiv 1706.03762: softmax(q k^T / sqrt(d_head)) under the causal mask). It is bounded
on purpose: ``n_prompts`` prompts (default 2) and the first ``max_tokens`` positions (default 128).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from jaxtyping import Float
from torch import Tensor

from probes.base import Probe, rule
from workbench.attention import key_mask
from workbench.errors import InputError
from workbench.heads import by_layer, check_heads, parse_heads
from workbench.records import concat, records


def pattern_entries(pattern: Float[Tensor, "head_index query_pos key_pos"], window: int | None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The entries of one prompt's pattern that a query can see (causal, sliding ``window``).

    Returns:
        ``(head_slot, query_pos, key_pos, value)``, int64 / float64 arrays of equal length, in
        (head, query, key) order; ``head_slot`` indexes ``pattern``'s first axis.
    """
    n_heads, n_query, _ = pattern.shape
    allowed = key_mask(n_query, window)  # [query, key]
    query, key = allowed.nonzero(as_tuple=True)
    values = pattern[:, query, key].double().numpy()  # [head, entries]
    slot = np.repeat(np.arange(n_heads), len(query))
    return slot, np.tile(query.numpy(), n_heads), np.tile(key.numpy(), n_heads), values.ravel()


@dataclass
class _State:
    batch: Any
    windows: list[int | None]
    rows: list[tuple[int, str, int]]  # (batch row, prompt id, positions kept) of chosen prompts
    patterns: dict[tuple[int, int], Tensor] = field(default_factory=dict)  # (row, layer) -> [h,q,k]


@dataclass(frozen=True)
class AttentionPattern(Probe):
    """Stores ``attn.hook_pattern`` of chosen heads for the first ``n_prompts`` prompts.

    Records ``pattern`` (fraction of attention) per (prompt, layer, head, query_pos, key_pos) for
    every key the query can see (``key_pos <= query_pos``, within a sliding window if the layer has
    one), for the first ``max_tokens`` positions; padding is never recorded. Each stored row sums to
    1 because a query never sees a key after it. No summaries.

    Parameters:
        heads: ``"L.H,L.H"``; empty means every head.
        n_prompts: how many prompts, in prompt-file order, when ``prompt_ids`` is empty.
        prompt_ids: comma-separated prompt ids (filled in from ``n_prompts`` by :meth:`prepare`,
            so the manifest names the prompts stored).
        max_tokens: positions kept per prompt (a bound on the table: heads x prompts x
            max_tokens^2 / 2 rows at most).

    Raises (in :meth:`check`): InputError for a head outside the model, an unknown prompt id, or
    ``n_prompts`` / ``max_tokens`` below 1.
    """

    name: ClassVar[str] = "attention_pattern"
    hook_points: ClassVar[tuple[str, ...]] = ("attn.hook_pattern",)
    headline: ClassVar[tuple[str, ...]] = ()  # per (query, key): drawn as patterns, not ranked
    units: ClassVar[dict[str, str]] = {"pattern": "fraction of attention"}

    heads: str = ""
    n_prompts: Annotated[int, rule(ge=1)] = 2
    prompt_ids: str = ""
    max_tokens: Annotated[int, rule(ge=1)] = 128

    def _ids(self) -> list[str]:
        return [p.strip() for p in self.prompt_ids.split(",") if p.strip()]

    def check(self, tokenized: list, model: Any) -> None:
        if self.n_prompts < 1 or self.max_tokens < 1:
            raise InputError(f"probe attention_pattern: n_prompts ({self.n_prompts}) and "
                             f"max_tokens ({self.max_tokens}) must be at least 1")
        check_heads(parse_heads(self.heads), model.info.n_layers, model.info.n_heads,
                    where="probe attention_pattern, heads=")
        known = {tok.id for tok in tokenized}
        unknown = [p for p in self._ids() if p not in known]
        if unknown:
            raise InputError(f"probe attention_pattern, prompt_ids=: no prompt(s) {unknown} in "
                             "the prompt set")

    def prepare(self, model: Any, tokenized: list) -> "AttentionPattern":
        if self._ids():
            return self
        return dataclasses.replace(self, prompt_ids=",".join(t.id for t in
                                                             tokenized[:self.n_prompts]))

    def _layer_heads(self) -> dict[int, list[int]] | None:
        heads = parse_heads(self.heads)
        return by_layer(heads) if heads else None

    def start(self, batch: Any, model: Any) -> _State:
        wanted = set(self._ids())
        lengths = batch.lengths.tolist()
        rows = [(b, pid, min(lengths[b], self.max_tokens))
                for b, pid in enumerate(batch.prompt_ids) if pid in wanted]
        return _State(batch, model.info.attention_windows, rows)

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        chosen = self._layer_heads()
        if not state.rows or (chosen is not None and layer not in chosen):
            return
        heads = slice(None) if chosen is None else chosen[layer]
        for row, _, n in state.rows:
            state.patterns[row, layer] = activation[row, heads, :n, :n].to(
                device="cpu", dtype=torch.float32, copy=True)  # a copy: never a view of the batch

    def finish(self, state: _State) -> pa.Table | None:
        chosen = self._layer_heads()
        out = []
        for (row, layer), pattern in sorted(state.patterns.items()):
            heads = np.arange(pattern.shape[0]) if chosen is None else np.array(chosen[layer])
            slot, query, key, value = pattern_entries(pattern, state.windows[layer])
            prompt_id = next(pid for b, pid, _ in state.rows if b == row)
            out.append(records("pattern", value, layer=layer, head=heads[slot], prompt_id=prompt_id,
                               query_pos=query, key_pos=key))
        return concat(out)
