"""Check once per model and edit kind that editing a hook point changes the output.

An attention bridge that computes attention in one fused call (e.g. sdpa) can fire
``hook_pattern`` / ``hook_attn_scores`` for reading while ignoring what a hook returns; an
intervention on such a model would be a silent no-op. :func:`verify_edits` edits layer 0 on a
fixed text and requires (1) the logits to move and, for ``hook_attn_scores``, (2) the pattern to be
the softmax of the edited scores.
"""

from __future__ import annotations

import weakref

import torch

from workbench.errors import WorkbenchError
from workbench.masks import CHECK_TEXT

EDIT_KINDS = ("hook_z", "hook_result", "hook_pattern", "hook_attn_scores")
_VERIFIED: "weakref.WeakKeyDictionary[object, dict[str, dict]]" = weakref.WeakKeyDictionary()


class EditNotApplied(WorkbenchError):
    """Edits at a hook point do not reach the model's output (pass-through attention)."""

    exit_code = 2


def _edit(kind: str):
    def hook(act, hook):
        if kind == "hook_pattern":  # uniform attention over the visible keys
            visible = (act > 0).to(act.dtype)
            return visible / visible.sum(-1, keepdim=True)
        if kind == "hook_attn_scores":  # the same, through the scores
            low = torch.finfo(act.dtype).min
            return torch.where(act > low / 2, torch.zeros_like(act), act)
        return torch.zeros_like(act)
    return hook


def verify_edits(model, kinds: set[str] | list[str]) -> dict[str, dict]:
    """For each kind not yet checked on this model (bridge object): edit layer 0's
    ``attn.{kind}`` on a fixed 24-token text and compare with the unedited run.

    Returns:
        ``{kind: {"logits_max_abs_diff", "pattern_max_abs_diff"}}`` for every kind asked.

    Raises:
        EditNotApplied: the logits did not change (> 1e-6), or (``hook_attn_scores``) the pattern
            is not the softmax of the edited scores (to 1e-4 in fp32, 2e-2 in half precision).
    """
    from workbench.interventions.hooks import attn_result
    from workbench.models import encode

    done = _VERIFIED.setdefault(model.bridge, {})
    todo = [k for k in kinds if k not in done]
    if todo:
        ids = encode(model.tokenizer, CHECK_TEXT, prepend_bos=model.info.prepend_bos)[:24]
        ids_t = torch.tensor([ids], device=model.device)
        seen: dict[str, torch.Tensor] = {}

        def grab(act, hook):
            seen["pattern"] = act.detach().float().clone()

        with torch.inference_mode(), attn_result(model, "hook_result" in todo):
            clean = model.bridge(ids_t).float()
            for kind in todo:
                hooks = [(f"blocks.0.attn.{kind}", _edit(kind)),
                         ("blocks.0.attn.hook_pattern", grab)]
                with model.bridge.hooks(fwd_hooks=hooks):
                    edited = model.bridge(ids_t).float()
                done[kind] = _compare(model, kind, clean, edited, seen["pattern"])
    return {k: done[k] for k in kinds}


def _compare(model, kind: str, clean, edited, pattern) -> dict:
    name = f"edits at attn.{kind} on model {model.info.name!r}"
    logits_diff = float((edited - clean).abs().max())
    pattern_diff = None
    if kind in ("hook_pattern", "hook_attn_scores"):
        n = pattern.shape[-1]
        causal = torch.ones(n, n, device=pattern.device).tril()
        pattern_diff = float((pattern - causal / causal.sum(-1, keepdim=True)).abs().max())
        atol = 1e-4 if model.info.dtype == "float32" else 2e-2
        if kind == "hook_attn_scores" and pattern_diff > atol:
            raise EditNotApplied(f"{name}: the attention pattern is off the softmax of the "
                                 f"edited scores by {pattern_diff:.2e}; score edits do not reach "
                                 "hook_pattern on this bridge")
    if logits_diff <= 1e-6:
        raise EditNotApplied(f"{name}: the logits did not change; this bridge ignores edits at "
                             f"{kind} (pass-through attention, e.g. sdpa): the intervention "
                             "would be a silent no-op")
    return {"logits_max_abs_diff": logits_diff, "pattern_max_abs_diff": pattern_diff}
