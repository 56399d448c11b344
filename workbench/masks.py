"""Attention-mask variants applied to a model's pre-softmax scores (``attn.hook_attn_scores``).

The mask is a directed graph over positions (Wu et al., ICML 2025, arXiv 2502.01951, section 3;
METHODS.md section 4): query ``i`` may attend to key ``j`` when ``allowed[i, j]``. The variants are
those of the paper's released code (``utils.py``), written ``kind[:argument]``:

* ``causal``: ``j <= i``.
* ``window:w``: sliding window of ``w`` keys, the query included: ``i - w < j <= i`` (``w >= 1``).
* ``prefix:K``: the first ``K`` positions attend to each other both ways, the rest causally:
  ``j <= i or (i < K and j < K)`` (``K >= 1``; ``prefix:1`` is ``causal``).
* ``decay:gamma``: causal, and ``(i - j) ln gamma`` added to the score of every visible key, i.e.
  attention weights multiplied by ``gamma ** (i - j)`` before renormalising (``0 < gamma <= 1``;
  ALiBi-like; ``decay:1`` is ``causal``).

A mask is applied on top of the model's own masking (causal, padding, the model's sliding windows):
disallowed scores are set to the dtype's most negative finite value (never ``-inf``, so no
softmax row is ever all ``-inf``). A causal model hands ``hook_attn_scores`` with future keys masked,
so ``prefix:K`` recomputes the scores of the future keys inside the prefix from the layer's
positional queries and keys (``attn.hook_rot_q``/``hook_rot_k`` on rotary models, else
``attn.hook_q``/``hook_k``) as ``q . k * scale``; :func:`verify_mask` checks that this reproduces
the model's own scores. Padding keys stay masked: a key is real when the query at the same position
sees it (the model masks a padding position from itself).

:func:`mask_hooks` returns forward hooks for ``bridge.hooks(fwd_hooks=...)``; the run loop applies
them to every forward of a run (``workbench run --attention-mask window:16``), and interventions can
reuse them. :func:`verify_mask` checks once per model that the mask takes effect.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from workbench.errors import InputError, WorkbenchError

MASK_KINDS = ("causal", "window", "prefix", "decay")
CHECK_TEXT = ("The quick brown fox jumps over the lazy dog. Attention heads read the residual "
              "stream, and every layer composes what the earlier layers wrote. ")


@dataclass(frozen=True)
class AttentionMask:
    """One mask variant; build with :meth:`parse` (``"window:16"``) or directly.

    ``arg`` is the window size ``w`` (int), the prefix size ``K`` (int), ``gamma`` (float) for
    ``decay``, and ``None`` for ``causal``.
    """

    kind: str
    arg: float | int | None = None

    def __post_init__(self) -> None:
        kind, arg = self.kind, self.arg
        if kind not in MASK_KINDS:
            raise InputError(f"attention mask {kind!r} is unknown; choose one of "
                             f"{', '.join(MASK_KINDS)} (e.g. window:16, prefix:4, decay:0.9)")
        if kind == "causal" and arg is not None:
            raise InputError(f"attention mask 'causal' takes no argument, got {arg!r}")
        if kind in ("window", "prefix") and (not isinstance(arg, int) or isinstance(arg, bool)
                                             or arg < 1):
            raise InputError(f"attention mask {kind!r} needs a whole number >= 1 "
                             f"({kind}:16), got {arg!r}")
        if kind == "decay" and (not isinstance(arg, (int, float)) or not 0 < arg <= 1):
            raise InputError(f"attention mask 'decay' needs 0 < gamma <= 1 (decay:0.9), "
                             f"got {arg!r}")

    @classmethod
    def parse(cls, text: str) -> "AttentionMask":
        """``"causal"``, ``"window:16"``, ``"prefix:4"``, ``"decay:0.9"`` -> a mask.

        Raises:
            InputError: an unknown kind or a missing / bad argument.
        """
        kind, sep, raw = str(text).strip().partition(":")
        kind = kind.strip().lower()
        if kind == "causal":
            return cls("causal", None if not sep else raw.strip() or None)
        if not sep or not raw.strip():
            raise InputError(f"attention mask {text!r} needs an argument: window:16, prefix:4 or "
                             "decay:0.9")
        try:
            arg: float | int = float(raw) if kind == "decay" else int(raw)
        except ValueError:
            raise InputError(f"attention mask {text!r}: {raw.strip()!r} is not a number") from None
        return cls(kind, arg)

    def __str__(self) -> str:
        return self.kind if self.arg is None else f"{self.kind}:{self.arg:g}"

    def allowed(self, seq_len: int, device=None) -> Bool[Tensor, "query_pos key_pos"]:
        """``[query_pos, key_pos]`` bool: True where query i may attend to key j."""
        i = torch.arange(seq_len, device=device)[:, None]
        j = torch.arange(seq_len, device=device)[None, :]
        allowed = j <= i
        if self.kind == "window":
            allowed &= j > i - int(self.arg)
        elif self.kind == "prefix":
            allowed |= (i < self.arg) & (j < self.arg)
        return allowed

    def bias(self, seq_len: int, dtype=torch.float32, device=None
             ) -> Float[Tensor, "query_pos key_pos"]:
        """``[query_pos, key_pos]`` additive score bias on allowed keys: ``(i - j) ln gamma`` for
        ``decay``, zero otherwise (disallowed entries are 0 here; :func:`apply_mask` masks them)."""
        if self.kind != "decay":
            return torch.zeros(seq_len, seq_len, dtype=dtype, device=device)
        pos = torch.arange(seq_len, device=device, dtype=dtype)
        return ((pos[:, None] - pos[None, :]) * math.log(self.arg)).clamp(max=0)

    def is_trivial_for_causal(self, seq_len: int) -> bool:
        """True when on ``seq_len`` positions this mask equals the plain causal mask."""
        if self.kind == "causal":
            return True
        if self.kind == "decay":
            return self.arg == 1 or seq_len < 2
        return bool(torch.equal(self.allowed(seq_len), AttentionMask("causal").allowed(seq_len)))


def apply_mask(scores: Float[Tensor, "batch head_index query_pos key_pos"], mask: AttentionMask,
               future: Float[Tensor, "batch head_index prefix prefix"] | None = None
               ) -> Float[Tensor, "batch head_index query_pos key_pos"]:
    """Scores with ``mask`` applied on top of the model's own masking (a new tensor).

    Args:
        scores: pre-softmax scores as ``hook_attn_scores`` hands them (model masks applied).
        mask: the variant.
        future: for ``prefix:K``, the unmasked scores of the first ``min(K, seq)`` queries and keys
            (``q . k * scale``); their entries above the diagonal replace the model's masked ones
            wherever the key is real. Ignored for other kinds.

    Disallowed entries become ``torch.finfo(scores.dtype).min``.
    """
    seq = scores.shape[-1]
    low = torch.finfo(scores.dtype).min
    out = scores.masked_fill(~mask.allowed(seq, scores.device), low)
    if mask.kind == "decay":
        out = out + mask.bias(seq, scores.dtype, scores.device)
    elif mask.kind == "prefix" and future is not None:
        k = future.shape[-1]
        real_key = scores.diagonal(dim1=-2, dim2=-1)[..., :k] > low / 2  # [batch, head, k]
        upper = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)
        fill = upper & real_key[..., None, :]
        out[..., :k, :k] = torch.where(fill, future.to(out.dtype), out[..., :k, :k])
    return out


def _qk_points(model) -> tuple[str, str]:
    names = model.bridge.hook_dict
    if "blocks.0.attn.hook_rot_q" in names and "blocks.0.attn.hook_rot_k" in names:
        return "attn.hook_rot_q", "attn.hook_rot_k"
    return "attn.hook_q", "attn.hook_k"


def _score_scale(model, layer: int) -> float:
    hf_attn = getattr(model.bridge.blocks[layer].attn, "original_component", None)
    scale = getattr(hf_attn, "scaling", None)
    return float(scale) if scale is not None else model.info.d_head ** -0.5


def prefix_scores(q: Float[Tensor, "batch pos head_index d_head"],
                  k: Float[Tensor, "batch pos kv_head d_head"], size: int, scale: float
                  ) -> Float[Tensor, "batch head_index prefix prefix"]:
    """Unmasked scores ``q_i . k_j * scale`` of the first ``size`` queries and keys; key/value
    heads are repeated to the query heads as in grouped-query attention (head h reads kv head
    ``h // (n_heads / n_kv_heads)``)."""
    q, k = q[:, :size], k[:, :size]
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    return torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale


def mask_hooks(model, mask: AttentionMask) -> list[tuple[str, Callable]]:
    """Forward hooks applying ``mask`` at every layer's ``attn.hook_attn_scores``.

    For ``prefix`` the hooks also read the layer's positional queries and keys (see the module
    docstring); they keep only the current layer's prefix rows. Hooks never modify in place.
    """
    hooks: list[tuple[str, Callable]] = []
    qk: dict[str, Tensor] = {}
    q_point, k_point = _qk_points(model)
    for layer in range(model.info.n_layers):
        scale = _score_scale(model, layer)

        def on_scores(scores, hook, scale=scale):
            future = None
            if mask.kind == "prefix" and "q" in qk:
                future = prefix_scores(qk.pop("q"), qk.pop("k"), int(mask.arg), scale)
            return apply_mask(scores, mask, future)

        if mask.kind == "prefix":
            hooks.append((f"blocks.{layer}.{q_point}", _keep(qk, "q", int(mask.arg))))
            hooks.append((f"blocks.{layer}.{k_point}", _keep(qk, "k", int(mask.arg))))
        hooks.append((f"blocks.{layer}.attn.hook_attn_scores", on_scores))
    return hooks


def _keep(store: dict, key: str, size: int) -> Callable:
    def hook(act, hook):
        store[key] = act[:, :size]
        return None
    return hook


class MaskNotApplied(WorkbenchError):
    """An attention mask did not take effect on this model (pass-through attention)."""

    exit_code = 2


_VERIFIED: "weakref.WeakKeyDictionary[object, dict[str, dict]]" = weakref.WeakKeyDictionary()


def verify_mask(model, mask: AttentionMask, *, atol: float | None = None) -> dict:
    """Check once per (model, mask) that ``mask`` takes effect, before any run uses it.

    On a fixed text (long enough for the mask to bite), compares (1) layer 0's masked pattern with
    ``softmax(apply_mask(unmasked layer-0 scores))`` (for ``prefix``, the recomputed future scores
    must also match the model's own scores where both exist) and (2) the logits with and without the
    mask, which must differ when the mask differs from causal on that text.

    The result is cached per model (bridge object) and mask, so a model is checked once.

    Args:
        atol: tolerance on attention weights; default 1e-4 in fp32, 2e-2 in half precision.

    Returns:
        what was checked: ``{"mask", "n_tokens", "pattern_max_abs_diff", "logits_max_abs_diff",
        "prefix_score_max_abs_diff"}``.

    Raises:
        MaskNotApplied: the mask did not change the pattern or the output as it should.
    """
    from workbench.models import encode

    done = _VERIFIED.setdefault(model.bridge, {})
    if str(mask) in done:
        return done[str(mask)]
    if "blocks.0.attn.hook_attn_scores" not in model.bridge.hook_dict:
        raise MaskNotApplied(f"attention mask {mask}: model {model.info.name!r} has no hook "
                             "blocks.0.attn.hook_attn_scores to apply it at")
    if atol is None:
        atol = 1e-4 if model.info.dtype == "float32" else 2e-2
    n = min(model.info.n_ctx, max(32, int(mask.arg or 0) + 16))
    ids = encode(model.tokenizer, CHECK_TEXT * (n // 16 + 2), prepend_bos=model.info.prepend_bos)
    ids = ids[:n]
    ids_t = torch.tensor([ids], device=model.device)
    seen: dict[str, Tensor] = {}

    def grab(name):
        def hook(act, hook):
            seen[name] = act.detach().float().clone()
        return hook

    q_point, k_point = _qk_points(model)
    clean_hooks = [("blocks.0.attn.hook_attn_scores", grab("scores"))]
    if mask.kind == "prefix":
        clean_hooks += [(f"blocks.0.{q_point}", grab("q")), (f"blocks.0.{k_point}", grab("k"))]
    with torch.inference_mode():
        with model.bridge.hooks(fwd_hooks=clean_hooks):
            clean = model.bridge(ids_t).float()
        with model.bridge.hooks(fwd_hooks=mask_hooks(model, mask)
                                + [("blocks.0.attn.hook_pattern", grab("pattern"))]):
            masked = model.bridge(ids_t).float()
    done[str(mask)] = _compare(model, mask, seen, clean, masked, len(ids), atol)
    return done[str(mask)]


def _compare(model, mask, seen, clean, masked, n, atol) -> dict:
    name = f"attention mask {mask} on model {model.info.name!r}"
    future, prefix_diff = None, None
    if mask.kind == "prefix":
        size = min(int(mask.arg), n)
        future = prefix_scores(seen["q"], seen["k"], size, _score_scale(model, 0))
        lower = torch.ones(size, size, dtype=torch.bool, device=future.device).tril()
        model_scores = seen["scores"][..., :size, :size]
        prefix_diff = float((future - model_scores)[..., lower].abs().max())
        if prefix_diff > atol * max(1.0, float(model_scores[..., lower].abs().max())):
            raise MaskNotApplied(f"{name}: recomputed q.k scores differ from the model's by "
                                 f"{prefix_diff:.2e}; this model's scores are not q.k * scale "
                                 "(softcapping, ALiBi ...), so prefix masks are not supported")
    want = torch.softmax(apply_mask(seen["scores"], mask, future), dim=-1)
    pattern_diff = float((want - seen["pattern"]).abs().max())
    logit_diff = float((masked - clean).abs().max())
    if pattern_diff > atol:
        raise MaskNotApplied(f"{name}: layer 0's attention pattern is off the masked pattern by "
                             f"{pattern_diff:.2e}; edits to hook_attn_scores do not reach "
                             "hook_pattern on this bridge")
    if not mask.is_trivial_for_causal(n) and logit_diff <= 1e-6:
        raise MaskNotApplied(f"{name}: the logits did not change; edits to hook_attn_scores do "
                             "not reach the output on this bridge (pass-through attention)")
    return {"mask": str(mask), "n_tokens": n, "pattern_max_abs_diff": pattern_diff,
            "logits_max_abs_diff": logit_diff, "prefix_score_max_abs_diff": prefix_diff}


__all__ = ["MASK_KINDS", "AttentionMask", "MaskNotApplied", "apply_mask", "mask_hooks",
           "prefix_scores", "verify_mask"]
