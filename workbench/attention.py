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
