"""Pure tensor functions behind the attention and value interventions (no hooks, no model).

Shapes follow TransformerLens: ``pattern`` ``[batch, head_index, query_pos, key_pos]`` (rows sum to
1 over the visible keys), ``z`` ``[batch, pos, head_index, d_head]`` and ``v``
``[batch, pos, head_index, d_head]`` (for grouped-query attention the caller first maps each query
head ``h`` to its key/value head ``h // (n_heads / n_key_value_heads)``, as ``repeat_kv`` does).
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def redistribute(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                 sink: Bool[Tensor, "batch key_pos"], target: Bool[Tensor, "batch key_pos"],
                 p: float, *, min_segment_mass: float = 0.2, rho: float = 0.8,
                 rows: Bool[Tensor, "batch query_pos"] | None = None
                 ) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """VAR attention redistribution (Kang et al., ICLR 2025, arXiv 2503.03321, Eq. 4-5).

    For every (head, query) row that qualifies, a fraction ``p`` of the attention on the sink
    keys is moved onto the target segment's non-sink keys, in proportion to their attention:
    ``a'_s = (1 - p) a_s`` on sinks, ``a'_t = a_t + p (sum_s a_s) a_t / (sum_t a_t)`` on targets.
    A row qualifies when its attention to the whole target segment is ``>= min_segment_mass`` and
    the non-sink share of that attention is ``>= rho`` (the paper's convention; the released
    code keeps a fraction p and thresholds the sink ratio ``<= rho``), it has attention on some
    target non-sink key, and ``rows`` (if given) marks it. Rows keep summing to 1; ``p = 0`` returns
    ``pattern`` itself.
    """
    if p == 0:
        return pattern
    a = pattern.float()
    sink_f = sink[:, None, None, :].to(a.dtype)
    seg = target[:, None, None, :].to(a.dtype)
    goal = (target & ~sink)[:, None, None, :].to(a.dtype)
    sink_mass = (a * sink_f).sum(-1, keepdim=True)
    seg_mass = (a * seg).sum(-1, keepdim=True)
    goal_mass = (a * goal).sum(-1, keepdim=True)
    ok = (seg_mass >= min_segment_mass) & (goal_mass >= rho * seg_mass) & (goal_mass > 0)
    if rows is not None:
        ok &= rows[:, None, :, None]
    moved = a - p * a * sink_f + p * sink_mass * a * goal / goal_mass.clamp_min(1e-30)
    return torch.where(ok, moved, a).to(pattern.dtype)


def mask_pattern(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                 knocked: Bool[Tensor, "batch key_pos"],
                 rows: Bool[Tensor, "batch query_pos"] | None = None
                 ) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """Zero the attention to ``knocked`` keys and renormalise each row over the remaining keys
    (the same as a softmax with those scores at -inf). A row with no attention left, or not in
    ``rows``, is returned unchanged."""
    keep = (~knocked)[:, None, None, :].to(pattern.dtype)
    kept = pattern * keep
    mass = kept.sum(-1, keepdim=True)
    ok = mass > 0
    if rows is not None:
        ok = ok & rows[:, None, :, None]
    return torch.where(ok, kept / mass.clamp_min(1e-30), pattern)


def temper_scores(scores: Float[Tensor, "batch head_index query_pos key_pos"], temperature: float
                  ) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """``scores / temperature`` on the visible keys; masked keys (scores at the dtype's minimum,
    as the model masks them) stay masked. ``temperature = 1`` returns ``scores`` itself."""
    if temperature == 1:
        return scores
    low = torch.finfo(scores.dtype).min
    return torch.where(scores > low / 2, scores / temperature, scores)


def noisy_z(z: Float[Tensor, "batch pos head d_head"],
            pattern: Float[Tensor, "batch head query_pos key_pos"],
            v: Float[Tensor, "batch key_pos head d_head"],
            noise: Float[Tensor, "batch key_pos head d_head"],
            sigma: float) -> Float[Tensor, "batch pos head d_head"]:
    """``z`` as if each head's values were ``v_k + sigma ||v_k|| / sqrt(d_head) * noise_k``:
    ``z + pattern @ (sigma ||v|| / sqrt(d_head) * noise)`` (``noise`` standard normal).

    Source: Indirect Attention, arXiv 2509.26015 (noise relative to the value norm; the noise
    norm is about ``sigma ||v_k||``, so sigma = 1 is noise as large as the value).
    """
    scale = sigma * v.float().norm(dim=-1, keepdim=True) / v.shape[-1] ** 0.5
    delta = torch.einsum("bhqk,bkhd->bqhd", pattern.float(), scale * noise.float())
    return (z.float() + delta).to(z.dtype)


def misaligned_z(pattern: Float[Tensor, "batch head query_pos key_pos"],
                 v_other: Float[Tensor, "batch key_pos head d_head"]
                 ) -> Float[Tensor, "batch query_pos head d_head"]:
    """Each head's output with its own attention pattern over another sequence's values:
    ``z'_q = sum_k pattern[q, k] v_other[k]`` (Indirect Attention, arXiv 2509.26015)."""
    return torch.einsum("bhqk,bkhd->bqhd", pattern.float(), v_other.float())
