"""Path patching: the effect of one sender head through chosen receivers only (Wang et al. 2022,
arXiv 2211.00593, section 3.1 and appendix B; Goldowsky-Dill et al. 2023, arXiv 2304.05969).

For each sender head ``s``, on the base run (see :mod:`circuits.effects` for the directions):

1. put the source run's ``z`` of ``s`` in (at the chosen positions) and *freeze every other head* to
   its base-run ``z``; MLPs and norms are recomputed, as in Wang et al.'s code, so the sender's
   signal reaches the receivers directly and through MLPs only;
2. receivers = ``"logits"``: read the logit difference of that run; receivers = heads: record the
   receivers' query / key / value vectors (``hook_q`` / ``hook_k`` / ``hook_v``, which are functions
   of their inputs, so this is patching the inputs), then rerun the base prompt with only those
   patched, nothing frozen, and read the logit difference.

Senders in layers at or after the last receiver's layer cannot reach it and are not run (NaN).
Both steps start at a layer from cached block inputs (:mod:`circuits.cache`), and
``heads_per_forward`` senders share one forward (batch dimension = senders). With grouped-query
attention a key or value receiver patches the key/value head its query head reads, which other query
heads of that group share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from circuits.cache import RunCache, Z_HOOK, capture, check_resume, forward_from_layer, run_blocks
from circuits.effects import HeadEffects, check_direction, check_positions, position_mask
from circuits.patching import (Progress, base_and_source, default_heads_per_forward, groups,
                               record_unpatched, resolve_heads)
from circuits.tasks import Task, TaskBatch
from workbench.errors import InputError, WorkbenchError
from workbench.heads import Head, format_head

QKV_HOOK = "blocks.{layer}.attn.hook_{kind}"  # [batch, pos, head_index or kv head, d_head]


def check_receiver_input(receiver_input: str) -> str:
    kinds = "".join(k for k in "qkv" if k in receiver_input)
    if not kinds or len(kinds) != len(receiver_input):
        raise InputError(f"receiver input {receiver_input!r} must be letters from 'qkv' "
                         "(e.g. q, kv, qkv)")
    return kinds


def freeze_hooks(model, group: Sequence[Head], base_z, source_z, mask, batch: int,
                 start: int, stop: int) -> list[tuple[str, Callable]]:
    """Step 1: at layers ``start..stop-1`` every head takes its base ``z``, except that copy ``g``
    takes the source ``z`` of sender ``group[g]`` at the masked positions."""
    senders: dict[int, list[tuple[int, int]]] = {}
    for g, (layer, head) in enumerate(group):
        senders.setdefault(layer, []).append((g, head))

    def make(layer: int):
        frozen, source, where = base_z[layer], source_z[layer], mask[:, :, None]

        def hook(z, hook):
            out = frozen.repeat(len(group), 1, 1, 1).to(z.dtype)
            view = out.view(len(group), batch, *out.shape[1:])
            for g, head in senders.get(layer, []):
                view[g, :, :, head] = torch.where(where, source[:, :, head], view[g, :, :, head])
            return out
        return hook
    return [(Z_HOOK.format(layer=layer), make(layer)) for layer in range(start, stop)]


def receiver_slots(model, receivers: Sequence[Head], kinds: str) -> dict[tuple[int, str], list]:
    """(layer, 'q'|'k'|'v') -> indices into that hook's head axis."""
    group = model.info.n_heads // model.info.n_key_value_heads
    slots: dict[tuple[int, str], set] = {}
    for layer, head in receivers:
        for kind in kinds:
            slots.setdefault((layer, kind), set()).add(head if kind == "q" else head // group)
    return {key: sorted(v) for key, v in slots.items()}


def _record_hooks(slots, store: dict) -> list[tuple[str, Callable]]:
    def make(key):
        def hook(act, hook):
            if act.ndim != 4:
                raise WorkbenchError(f"{hook.name} has shape {tuple(act.shape)}; path patching "
                                     "needs [batch, pos, head, d_head]")
            store[key] = act.detach().clone()
        return hook
    return [(QKV_HOOK.format(layer=layer, kind=kind), make((layer, kind))) for layer, kind in slots]


def _replay_hooks(slots, store: dict) -> list[tuple[str, Callable]]:
    """Put the recorded receiver vectors back; receivers in layers step 1 did not run (at or
    before the senders' layer) are unchanged and keep their base values."""
    def make(key, heads):
        def hook(act, hook):
            out = act.clone()
            out[:, :, heads] = store[key][:, :, heads].to(act.dtype)
            return out
        return hook
    return [(QKV_HOOK.format(layer=layer, kind=kind), make((layer, kind), heads))
            for (layer, kind), heads in slots.items() if (layer, kind) in store]


def _sender_group(model, tb: TaskBatch, base: RunCache, source: RunCache, group, mask,
                  receivers, slots) -> np.ndarray:
    """LD ``[copies, batch]`` with each sender of ``group`` path-patched."""
    copies, batch, n_layers = len(group), tb.clean.size, model.info.n_layers
    start = group[0][0]
    last = n_layers if receivers == "logits" else max(layer for layer, _ in receivers) + 1
    freeze = freeze_hooks(model, group, base.z, source.z, mask, batch, start, last)
    with torch.inference_mode():
        if receivers == "logits":
            logits = forward_from_layer(model, base, start, copies=copies, fwd_hooks=freeze)
        else:
            store: dict = {}
            with model.bridge.hooks(fwd_hooks=freeze + _record_hooks(slots, store)):
                run_blocks(model, base, start, last, copies=copies)
            first = min(layer for layer, _ in store)
            logits = forward_from_layer(model, base, first, copies=copies,
                                        fwd_hooks=_replay_hooks(slots, store))
    return tb.logit_diff(logits, copies).view(copies, batch).cpu().numpy()


def path_patching(model, task: Task, *, receivers: str | Sequence[Head] = "logits",
                  receiver_input: str = "qkv", senders: Sequence[Head] | None = None,
                  direction: str = "corrupted_into_clean",
                  positions: str | Sequence[str] | None = None,
                  heads_per_forward: int | None = None, batch_size: int = 16,
                  progress: Progress | None = None) -> HeadEffects:
    """Path-patch every sender to ``receivers`` (``"logits"`` or heads' ``receiver_input``).

    Args:
        receivers: ``"logits"`` or a list of receiver heads.
        receiver_input: which inputs of the receiver heads are patched: letters of ``"qkv"``.
        senders: sender heads (default: every head that can reach a receiver).
        direction, positions, heads_per_forward, batch_size: as in activation patching;
            ``positions`` restricts where the sender is patched.

    Returns:
        :class:`HeadEffects` whose ``patched`` is the LD with the sender's path patched (NaN for
        heads not run); its ``condition`` names the receivers.

    Raises:
        InputError: bad receivers, receiver input, senders, direction or segment.
    """
    check_direction(direction)
    check_positions(task, positions)
    kinds = check_receiver_input(receiver_input)
    if receivers != "logits":
        receivers = resolve_heads(model, receivers)
        if not receivers:
            raise InputError("path patching needs at least one receiver head (or 'logits')")
    reach = model.info.n_layers if receivers == "logits" else max(l for l, _ in receivers)
    senders = [h for h in resolve_heads(model, senders) if h[0] < reach]
    slots = {} if receivers == "logits" else receiver_slots(model, receivers, kinds)
    size = heads_per_forward or default_heads_per_forward(model)
    patched = np.full((len(task), model.info.n_layers, model.info.n_heads), np.nan)
    clean, corrupted = np.zeros(len(task)), np.zeros(len(task))
    for i, tb in enumerate(task.batches(batch_size)):
        base_batch, source_batch = base_and_source(tb, direction)
        source = capture(model, source_batch, block_inputs=False)
        base = capture(model, base_batch)
        if i == 0:
            check_resume(model, base)
        record_unpatched(tb, direction, base.last_logits, source.last_logits, clean, corrupted)
        mask = position_mask(tb.clean, positions).to(model.device)
        for group in groups(senders, size):
            ld = _sender_group(model, tb, base, source, group, mask, receivers, slots)
            for g, (layer, head) in enumerate(group):
                patched[tb.index, layer, head] = ld[g]
            if progress:
                progress(len(group))
    target = "logits" if receivers == "logits" else \
        f"{kinds} of {','.join(format_head(h) for h in receivers)}"
    return HeadEffects("path_patching", task.name, direction, patched, clean, corrupted,
                       task.prompt_ids, condition=f"receivers={target}")
