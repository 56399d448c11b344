"""Small helpers shared by attention probes: which keys a query can see, which queries are real."""

from __future__ import annotations

import torch


def visible_keys(seq_len: int, window: int | None, device=None) -> torch.Tensor:
    """``[query_pos]`` int64: how many keys each query may attend to under a causal mask
    (``i + 1``), or a sliding window of ``window`` keys (``min(i + 1, window)``). With right padding
    this holds for every real token of every prompt in a batch."""
    n = torch.arange(1, seq_len + 1, device=device)
    return n.clamp(max=window) if window else n


def key_mask(seq_len: int, window: int | None, device=None) -> torch.Tensor:
    """``[query_pos, key_pos]`` bool: True where query i may attend to key j (causal, windowed)."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    allowed = j <= i
    if window:
        allowed &= j > i - window
    return allowed


QUERY_BLOCK_BYTES = 64 * 2 ** 20  # fp32 scratch a probe may use per block of query rows


def query_blocks(shape: tuple[int, ...], budget_bytes: int | None = None) -> list[slice]:
    """Slices of the query axis of a ``[batch, head_index, query_pos, key_pos]`` pattern such that
    an fp32 temporary of one block (``batch * head_index * rows * key_pos * 4`` bytes) stays within
    ``budget_bytes`` (default :data:`QUERY_BLOCK_BYTES`); at least one row per block.

    Probes reduce a layer's pattern block by block so that their own scratch memory does not grow
    with ``query_pos * key_pos``; one block when the whole pattern fits.
    """
    budget = QUERY_BLOCK_BYTES if budget_bytes is None else budget_bytes
    n_batch, n_heads, n_query, n_key = shape
    rows = max(1, budget // max(n_batch * n_heads * n_key * 4, 1))
    return [slice(start, min(start + rows, n_query)) for start in range(0, n_query, rows)]
