"""Which attention implementation a forward pass uses: the bridge's eager attention, or sdpa.

TransformerBridge reimplements attention (``PositionEmbeddingsAttentionBridge``,
``JointQKVAttentionBridge``) so that ``hook_attn_scores`` and ``hook_pattern`` fire: every layer
materialises the ``[batch, head_index, query_pos, key_pos]`` scores and pattern. Probes that read
no attention hook (``massive_activations`` reads ``hook_resid_pre``) do not need that, so the run
loop switches the bridge's attention modules, for the duration of one forward, to the wrapped
Hugging Face attention module under ``attn_implementation="sdpa"``
(``torch.nn.functional.scaled_dot_product_attention``, the fused kernel; O(seq) memory on the
flash path instead of O(seq^2)). Hooks outside the attention module (``hook_resid_pre``,
``hook_resid_mid``, ``hook_resid_post``, ``hook_mlp_out``, ``ln*``, ``mlp.*``) still fire;
``attn.*`` hooks do not.

The switch is decided automatically from the hook points the probes need
(:func:`choose_attention`) and is used only after :func:`check_sdpa` has verified once per model
that the residual stream of every layer matches the eager forward (relative tolerance 1e-4 in
fp32, 2e-2 in half precision); otherwise the run stays eager and records why.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from workbench.errors import InputError

EAGER, SDPA, AUTO = "eager", "sdpa", "auto"
ATTENTION_CHOICES = (AUTO, EAGER, SDPA)
# Hook points (suffixes of blocks.{layer}.) that fire inside the bridge's attention
# reimplementation.
_INSIDE_ATTENTION = ("attn.",)
_ATTENTION_INPUTS = {"hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"}
CHECK_TEXTS = ("The quick brown fox jumps over the lazy dog. Attention heads read the residual "
               "stream, and every layer composes what the earlier layers wrote.",
               "A shorter second prompt, padded on the right.")


def needs_eager(point: str) -> bool:
    """Whether hook point ``point`` (a ``blocks.{layer}.`` suffix) only fires under the bridge's
    eager attention (everything under ``attn.`` and the per-head attention inputs)."""
    return point.startswith(_INSIDE_ATTENTION) or point in _ATTENTION_INPUTS


@dataclass(frozen=True)
class SdpaCheck:
    """sdpa against eager on :data:`CHECK_TEXTS` (a right-padded batch of two): the largest
    absolute difference of the residual stream over every layer's ``hook_resid_pre`` and
    ``ln_final.hook_in`` at real tokens, and that divided by the eager values' standard
    deviation. ``ok`` is ``rel_diff <= tolerance``; ``error`` says why sdpa could not run."""

    ok: bool
    max_abs_diff: float | None
    rel_diff: float | None
    tolerance: float
    error: str | None = None


@dataclass(frozen=True)
class AttentionChoice:
    """The attention implementation a run uses and why (recorded in the run manifest)."""

    implementation: str  # "eager" | "sdpa"
    requested: str  # "auto" | "eager" | "sdpa"
    reason: str
    check: SdpaCheck | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _attention_modules(bridge) -> list:
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    blocks = getattr(bridge, "blocks", None) or []
    return [block.attn for block in blocks
            if isinstance(getattr(block, "attn", None), AttentionBridge)]


@contextmanager
def sdpa_attention(model) -> Iterator[None]:
    """Run the language model's attention through Hugging Face's sdpa kernel inside the block.

    Every ``blocks.{l}.attn`` bridge delegates to its wrapped Hugging Face module
    (``AttentionBridge.forward``: ``hook_in`` -> HF attention -> ``hook_out``) and the wrapped
    modules' configs say ``_attn_implementation = "sdpa"``; both are restored on exit. Not
    thread-safe (it changes the model in place for the duration).
    """
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    modules = _attention_modules(model.bridge)
    configs = {id(c): c for c in (getattr(m.original_component, "config", None) for m in modules)
               if c is not None}
    configs.update({id(c): c for c in _model_configs(model.bridge)})
    saved = {key: c._attn_implementation for key, c in configs.items()}
    try:
        for module in modules:
            # object.__setattr__: the bridge's __setattr__ forwards attributes to the wrapped module
            object.__setattr__(module, "forward", _delegating_forward(AttentionBridge, module))
        for config in configs.values():
            config._attn_implementation = SDPA
        yield
    finally:
        for module in modules:
            module.__dict__.pop("forward", None)
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def _delegating_forward(cls, module):
    def forward(*args: Any, **kwargs: Any) -> Any:
        return cls.forward(module, *args, **kwargs)
    return forward


def _model_configs(bridge) -> list:
    """The wrapped model's config and, for multimodal models, its text config (the decoder's
    causal mask is built from the config's attention implementation)."""
    config = getattr(getattr(bridge, "original_model", None), "config", None)
    if config is None:
        return []
    text = getattr(config, "text_config", None)
    return [c for c in (config, text) if c is not None and hasattr(c, "_attn_implementation")]


_CHECKED: "weakref.WeakKeyDictionary[object, SdpaCheck]" = weakref.WeakKeyDictionary()


def check_sdpa(model) -> SdpaCheck:
    """Check once per model that :func:`sdpa_attention` reproduces the eager residual stream.

    Never raises: a failure (an architecture whose Hugging Face attention cannot run inside the
    bridge, or numbers that disagree) comes back as ``ok=False`` with the reason.
    """
    if model.bridge in _CHECKED:
        return _CHECKED[model.bridge]
    tol = 1e-4 if model.info.dtype == "float32" else 2e-2
    if not _attention_modules(model.bridge):
        result = SdpaCheck(False, None, None, tol, "the model has no blocks.{l}.attn bridges")
    else:
        result = _compare(model, tol)
    _CHECKED[model.bridge] = result
    return result


def _compare(model, tol: float) -> SdpaCheck:
    from workbench.models import encode

    rows = [encode(model.tokenizer, t, prepend_bos=model.info.prepend_bos) for t in CHECK_TEXTS]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, :len(r)], mask[b, :len(r)] = torch.tensor(r), 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    try:
        eager = _residuals(model, ids, mask)
        with sdpa_attention(model):
            fast = _residuals(model, ids, mask)
    except Exception as err:  # noqa: BLE001 - reported in the manifest, the run stays eager
        return SdpaCheck(False, None, None, tol, f"{type(err).__name__}: {err}")
    valid = mask.bool().cpu()
    diff = max(float((e - f)[valid].abs().max()) for e, f in zip(eager, fast))
    scale = max(float(torch.cat([e[valid] for e in eager]).std()), 1e-12)
    return SdpaCheck(diff / scale <= tol, diff, diff / scale, tol)


def _residuals(model, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    names = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.info.n_layers)]
    names += [n for n in ("ln_final.hook_in",) if n in model.bridge.hook_dict]
    seen: dict[str, torch.Tensor] = {}

    def keeper(name: str):  # keyed by the name asked for: hook.name is the bridge's alias target
        def keep(act, hook):
            seen[name] = act.detach().float().cpu()
        return keep
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[(n, keeper(n)) for n in names]):
        model.bridge(ids, attention_mask=mask, return_type=None)
    return [seen[n] for n in names]


def choose_attention(model, hook_points: Iterable[str], requested: str = AUTO, *,
                     masked: bool = False) -> AttentionChoice:
    """The attention implementation of a shared forward that registers ``hook_points``.

    ``auto`` picks sdpa when no hook point needs eager attention (:func:`needs_eager`), no
    attention mask is applied (masks edit ``hook_attn_scores``) and :func:`check_sdpa` passes;
    otherwise eager. ``eager`` is always honoured.

    Raises:
        InputError: ``requested`` is not auto/eager/sdpa, or is ``sdpa`` while a probe needs an
            attention hook, a mask is applied, or the sdpa check fails on this model.
    """
    if requested not in ATTENTION_CHOICES:
        raise InputError(f"--attention {requested!r}: choose one of {', '.join(ATTENTION_CHOICES)}")
    if requested == EAGER:
        return AttentionChoice(EAGER, requested, "asked for")
    eager_points = sorted({p for p in hook_points if needs_eager(p)})
    why_not = None
    if eager_points:
        why_not = f"hook point(s) {', '.join(eager_points)} fire only under eager attention"
    elif masked:
        why_not = "an attention mask edits hook_attn_scores, which needs eager attention"
    check = None if why_not else check_sdpa(model)
    if check is not None and not check.ok:
        why_not = (f"sdpa failed the check against eager on {model.info.name!r}: "
                   f"{check.error or f'relative difference {check.rel_diff:.1e}'}")
    if why_not is None:
        return AttentionChoice(SDPA, requested, "no probe reads an attention hook; sdpa matches "
                               "eager on this model", check)
    if requested == SDPA:
        raise InputError(f"--attention sdpa cannot be used: {why_not}")
    return AttentionChoice(EAGER, requested, why_not, check)
