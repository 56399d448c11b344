"""Cached block inputs and the forward pass that resumes at a layer.

Patching one head of layer ``k`` cannot change blocks ``0..k-1``, so the patched forward should start
at block ``k``. The bridge's own ``start_at_layer`` still runs blocks ``0..k-1`` internally (it swaps
the residual in at block ``k``), so it saves nothing. Instead, :func:`capture` records, with a
forward pre-hook on every block, exactly what the Hugging Face model loop hands each block (the
hidden states, and the masks, rotary position embeddings and position ids as positional and keyword
arguments), and :func:`forward_from_layer` calls the bridge's block modules ``k..L-1`` with them,
then the final norm and the unembedding at each prompt's last real token only. Bridge hooks inside
those blocks fire as usual, so patches are ordinary ``hook_z`` forward hooks.

``copies`` runs several patched variants of one batch in one pass: the batch is repeated along the
batch dimension (group-major: rows ``g * batch + b``), so heads can be patched as a batch on a GPU.
Captured tensors whose first dimension is the batch are repeated with it; tensors with a leading
dimension of 1 (broadcast masks, rotary tables) are left to broadcast as they did in the full pass.
:func:`check_resume` compares :func:`forward_from_layer` from block 0 with the full forward and
refuses an architecture where they differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.forward import HookList
from workbench.metrics import last_token_logits

Z_HOOK = "blocks.{layer}.attn.hook_z"  # [batch, pos, head_index, d_head]


@dataclass
class RunCache:
    """One batch's forward pass, kept for resuming at any layer.

    Attributes:
        block_inputs: per layer, the ``(args, kwargs)`` the model loop passed to the block; the
            hidden states ``[batch, pos, d_model]`` are ``args[0]`` or ``kwargs["hidden_states"]``.
        z: per layer, ``hook_z`` ``[batch, pos, head_index, d_head]`` (empty when not asked for).
        last_logits: ``[batch, vocab]`` logits at each prompt's last real token.
        last_pos: ``[batch]`` position of each prompt's last real token.
    """

    block_inputs: list[tuple[tuple, dict]]
    z: list[Tensor]
    last_logits: Tensor
    last_pos: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.last_pos.shape[0])


def capture(model, batch, *, z: bool = True, block_inputs: bool = True,
            fwd_hooks: HookList = ()) -> RunCache:
    """Run ``batch`` once (no gradients) and keep what resuming and patching need.

    Args:
        z: keep every layer's ``hook_z``.
        block_inputs: keep every block's inputs (for :func:`forward_from_layer`).
        fwd_hooks: extra bridge forward hooks active during the pass (e.g. a patch).
    """
    bridge = model.bridge
    n_layers = model.info.n_layers
    inputs: list[Any] = [None] * n_layers
    zs: list[Any] = [None] * n_layers
    handles = []
    if block_inputs:
        for layer, block in enumerate(bridge.blocks):
            handles.append(block.register_forward_pre_hook(_keep_inputs(inputs, layer),
                                                           with_kwargs=True))
    hooks = list(fwd_hooks)
    if z:
        hooks += [(Z_HOOK.format(layer=layer), keep_activation(zs, layer))
                  for layer in range(n_layers)]
    batch = batch.to(model.device)
    try:
        with torch.inference_mode(), bridge.hooks(fwd_hooks=hooks):
            logits = bridge(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return RunCache(inputs if block_inputs else [], zs if z else [],
                    last_token_logits(logits, batch.last_pos()), batch.last_pos())


def _keep_inputs(store: list, layer: int) -> Callable:
    def pre_hook(module, args, kwargs):
        store[layer] = (tuple(args), {k: v for k, v in kwargs.items() if k != "past_key_values"})
    return pre_hook


def keep_activation(store: list, layer: int) -> Callable:
    """A bridge forward hook that stores a copy of its activation in ``store[layer]``."""
    def hook(x, hook):
        store[layer] = x.detach().clone()
    return hook


def _repeat(value: Any, batch: int, copies: int) -> Any:
    """Repeat tensors whose first dimension is the batch ``copies`` times (group-major)."""
    if copies == 1:
        return value
    if isinstance(value, Tensor):
        if value.ndim >= 2 and value.shape[0] == batch:
            return value.repeat(copies, *([1] * (value.ndim - 1)))
        return value
    if isinstance(value, tuple):
        return tuple(_repeat(v, batch, copies) for v in value)
    if isinstance(value, list):
        return [_repeat(v, batch, copies) for v in value]
    if isinstance(value, dict):
        return {k: _repeat(v, batch, copies) for k, v in value.items()}
    return value


def _block_call(cache: RunCache, layer: int, hidden: Tensor, copies: int) -> tuple[tuple, dict]:
    args, kwargs = cache.block_inputs[layer]
    batch = cache.batch_size
    if args and isinstance(args[0], Tensor):
        return (hidden,) + _repeat(args[1:], batch, copies), _repeat(kwargs, batch, copies)
    kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    return _repeat(args, batch, copies), {**_repeat(kwargs, batch, copies), "hidden_states": hidden}


def block_input(cache: RunCache, layer: int) -> Float[Tensor, "batch pos d_model"]:
    """The hidden states that entered block ``layer`` (``resid_pre``)."""
    args, kwargs = cache.block_inputs[layer]
    return args[0] if args and isinstance(args[0], Tensor) else kwargs["hidden_states"]


def run_blocks(model, cache: RunCache, start: int, stop: int | None = None, *, copies: int = 1,
               hidden: Tensor | None = None) -> Float[Tensor, "copies_batch pos d_model"]:
    """Run blocks ``start..stop-1`` (``stop`` default: every remaining block) from the cached input
    of block ``start`` (or from ``hidden``, ``[copies * batch, pos, d_model]``) and return the
    hidden states after the last block run. Bridge hooks registered by the caller fire inside."""
    if hidden is None:
        hidden = _repeat(block_input(cache, start), cache.batch_size, copies)
    for layer in range(start, model.info.n_layers if stop is None else stop):
        args, kwargs = _block_call(cache, layer, hidden, copies)
        out = model.bridge.blocks[layer](*args, **kwargs)
        hidden = out[0] if isinstance(out, (tuple, list)) else out
    return hidden


def forward_from_layer(model, cache: RunCache, start: int, *, copies: int = 1,
                       fwd_hooks: HookList = (), hidden: Tensor | None = None
                       ) -> Float[Tensor, "copies_batch vocab"]:
    """Run blocks ``start..L-1`` from the cached input of block ``start``, then the final norm and
    the unembedding at each prompt's last real token only.

    Args:
        start: first block to run (0 reruns every block).
        copies: run the batch this many times in one pass; row ``g * batch + b`` is copy ``g`` of
            prompt ``b`` (hooks tell the copies apart by row).
        fwd_hooks: bridge forward hooks active during the pass.
        hidden: ``[copies * batch, pos, d_model]`` the input of block ``start`` (default: the
            cached one, repeated ``copies`` times), e.g. a patched ``resid_pre``.

    Returns:
        ``[copies * batch, vocab]`` logits. Gradients flow when called under ``torch.enable_grad``.
    """
    bridge = model.bridge
    with bridge.hooks(fwd_hooks=list(fwd_hooks)):
        hidden = run_blocks(model, cache, start, copies=copies, hidden=hidden)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, cache.last_pos.to(hidden.device).repeat(copies)]
        return bridge.unembed(bridge.ln_final(last[:, None]))[:, 0]


def check_resume(model, cache: RunCache, *, tolerance: float = 1e-4) -> float:
    """Check that :func:`forward_from_layer` from block 0 reproduces the full forward.

    Returns:
        the largest absolute difference of the last-token logits, divided by their std.

    Raises:
        WorkbenchError: the difference exceeds ``tolerance`` (fp32; 2e-2 in half precision): the
            architecture does something between the blocks and the logits that the workbench does
            not reproduce (e.g. a final logit soft-cap), so resumed passes would be wrong.
    """
    with torch.inference_mode():
        got = forward_from_layer(model, cache, 0)
    want = cache.last_logits
    rel = float((got.float() - want.float()).abs().max() / want.float().std().clamp_min(1e-12))
    tol = tolerance if want.dtype == torch.float32 else 2e-2
    if rel > tol:
        raise WorkbenchError(
            f"model {model.info.name!r} ({model.info.architecture}): running the blocks from their "
            f"cached inputs gives logits {rel:.1e} (relative) away from the full forward; "
            "patching from a layer is not supported for this architecture")
    return rel

