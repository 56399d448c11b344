"""Forward passes with temporary hooks, returning logits at the last real token.

Used by metrics, circuits and interventions; probes use :class:`workbench.run.BatchHooks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.metrics import last_token_logits

HookList = Sequence[tuple[str, Callable]]


def logits(model, batch, fwd_hooks: HookList = ()) -> Float[Tensor, "batch pos vocab"]:
    """Full logits of ``batch`` (right-padded, with its attention mask and images, if any) with
    ``fwd_hooks`` active.

    Hooks are removed afterwards even if the forward raises. Runs under ``torch.inference_mode``.
    """
    batch = batch.to(model.device)
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=list(fwd_hooks)):
        return model.bridge(batch.input_ids, **batch.model_kwargs())


def last_logits(model, batch, fwd_hooks: HookList = ()) -> Float[Tensor, "batch vocab"]:
    """Logits at each prompt's last real token, ``[batch, vocab]`` in the model's dtype."""
    return last_token_logits(logits(model, batch, fwd_hooks), batch.last_pos())


def attention_patterns(model, batch, fwd_hooks: HookList = ()) -> Float[Tensor, "layer head q k"]:
    """Every head's attention pattern (``blocks.{l}.attn.hook_pattern``) on the first prompt of
    ``batch``, over its real tokens, as float32 on the CPU, with ``fwd_hooks`` active (e.g. an
    intervention: later layers' patterns then show its effect).

    Raises:
        RuntimeError: the model's attention does not fire ``hook_pattern``.
    """
    n_layers = model.info.n_layers
    n = int(batch.last_pos()[0]) + 1
    found: dict[int, Tensor] = {}

    def grab(layer: int) -> Callable:
        def hook(pattern: Tensor, hook=None) -> None:
            found[layer] = pattern[0, :, :n, :n].float().cpu()
        return hook

    capture = [(f"blocks.{layer}.attn.hook_pattern", grab(layer)) for layer in range(n_layers)]
    logits(model, batch, [*fwd_hooks, *capture])
    if len(found) != n_layers:
        raise RuntimeError(f"hook_pattern fired in {len(found)} of {n_layers} layers")
    return torch.stack([found[layer] for layer in range(n_layers)])
