"""Attribution patching per head (EAP: Syed et al. 2023, arXiv 2310.10348; Nanda 2023).

A first-order Taylor estimate of activation patching at ``hook_z``: from one forward of the source
prompt, one forward of the base prompt with gradients, and one backward,

    LD(base with z_h from source) - LD(base)  ~=  sum_{pos in mask, d} (z_source - z_base)[pos, h, d]
                                                   * dLD/dz_base[pos, h, d]

per prompt, where the gradient is the total derivative of the base run's logit difference (all later
layers included) at that head's ``z``. Sign convention: the estimate is an *effect on the logit
difference of the base run* in logits, positive when the patch raises it, exactly like the measured
``patched - base`` of activation patching; :class:`circuits.effects.HeadEffects` turns it into the
same ``score`` (positive = head carries the task). The default direction ``corrupted_into_clean``
(base = clean, gradient at the clean run) is EAP's. It is exact when the logit difference is linear
in the patched ``z`` (e.g. heads of the last layer of a model with no final norm or last MLP).

The gradient is taken through a zero tensor added at every ``hook_z`` (``z + delta``,
``d LD / d delta = d LD / d z``), so no parameter gradients are computed or stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from circuits.cache import Z_HOOK, capture
from circuits.effects import HeadEffects, check_direction, check_positions, position_mask
from circuits.patching import Progress, base_and_source, record_unpatched, resolve_heads
from circuits.tasks import Task
from workbench.heads import Head
from workbench.metrics import last_token_logits


def z_gradients(model, batch, answer: Tensor, distractor: Tensor
                ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """One forward with gradients and one backward of the summed logit difference.

    Returns:
        ``([batch, vocab]`` last-token logits, per layer ``z`` ``[batch, pos, head_index, d_head]``,
        per layer ``dLD/dz`` of the same shape), all detached.
    """
    n_layers = model.info.n_layers
    deltas, zs = [None] * n_layers, [None] * n_layers

    def make(layer: int):
        def hook(z, hook):
            zs[layer] = z.detach()
            deltas[layer] = torch.zeros_like(z, requires_grad=True)
            return z + deltas[layer]
        return hook

    hooks = [(Z_HOOK.format(layer=layer), make(layer)) for layer in range(n_layers)]
    batch = batch.to(model.device)
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
        logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                              use_cache=False)
        last = last_token_logits(logits, batch.last_pos())
        rows = torch.arange(last.shape[0], device=last.device)
        ld = last[rows, answer.to(last.device)].float() - last[rows, distractor.to(last.device)]
        grads = torch.autograd.grad(ld.sum(), deltas)
    return last.detach(), zs, [g.detach() for g in grads]


def attribution_patching(model, task: Task, *, direction: str = "corrupted_into_clean",
                         positions: str | Sequence[str] | None = None,
                         heads: Sequence[Head] | None = None, batch_size: int = 16,
                         progress: Progress | None = None) -> HeadEffects:
    """EAP estimate of :func:`circuits.patching.activation_patching` for every head.

    Same arguments and result type as activation patching; ``patched`` holds
    ``LD(base) + estimated effect``; ``heads`` (default all) keeps only those heads' estimates
    (the others NaN; every head is estimated anyway, from the same backward). Each batch costs
    one source forward (no gradients), one base forward with gradients and one backward.

    Raises:
        InputError: a bad direction, segment or head, before any forward pass.
    """
    check_direction(direction)
    check_positions(task, positions)
    keep = resolve_heads(model, heads)
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    patched = np.full((len(task), n_layers, n_heads), np.nan)
    clean, corrupted = np.zeros(len(task)), np.zeros(len(task))
    for tb in task.batches(batch_size):
        base_batch, source_batch = base_and_source(tb, direction)
        source = capture(model, source_batch, block_inputs=False)
        base_last, base_z, grads = z_gradients(model, base_batch, tb.answer, tb.distractor)
        record_unpatched(tb, direction, base_last, source.last_logits, clean, corrupted)
        mask = position_mask(tb.clean, positions).to(model.device)[:, :, None, None]
        base_ld = tb.logit_diff(base_last)
        for layer in range(n_layers):
            diff = (source.z[layer].float() - base_z[layer].float()) * mask
            effect = (diff * grads[layer].float()).sum(dim=(1, 3))  # [batch, head_index]
            patched[tb.index, layer] = (base_ld[:, None] + effect).cpu().numpy()
        if progress:
            progress(n_layers * n_heads)
    if len(keep) < n_layers * n_heads:
        wanted = np.zeros((n_layers, n_heads), dtype=bool)
        wanted[tuple(np.array(keep).T)] = True
        patched[:, ~wanted] = np.nan
    return HeadEffects("attribution_patching", task.name, direction, patched, clean, corrupted,
                       task.prompt_ids)

