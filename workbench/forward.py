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
