"""Per-MLP scores for ``--nodes heads,mlps``: each MLP's output (``blocks.{l}.hook_mlp_out``, every
position) scored like a head's ``z`` by the same method, so heads and MLPs share one ranking.

* ``activation``: patch the MLP's source output into the base run at every position (Wang et al.
  2022, arXiv 2211.00593; Meng et al. 2022 for MLPs), one resumed forward per MLP and batch;
* ``attribution``: EAP's first-order estimate ``(x_source - x_base) . dLD/dx_base`` summed over
  positions and ``d_model`` (Syed et al. 2023, arXiv 2310.10348);
* ``eap-ig``: the MLP's EAP-IG node score (:mod:`circuits.node_eap`).

Each returns a :class:`circuits.effects.HeadEffects` with one "head" per layer (``patched``
``[n_prompts, n_layers, 1]``), so the score is the same fraction of the clean - corrupted gap,
positive when the MLP carries the task. Noising (``corrupted_into_clean``) or denoising, all
positions only.
"""

from __future__ import annotations

import numpy as np
import torch

from circuits.cache import capture, forward_from_layer
from circuits.effects import HeadEffects
from circuits.evaluate import MLP_HOOK
from circuits.patching import base_and_source, record_unpatched
from circuits.tasks import Task
from workbench.errors import InputError
from workbench.metrics import last_token_logits


def _outputs(model, batch) -> list[torch.Tensor]:
    n_layers = model.info.n_layers
    kept: list = [None] * n_layers

    def keep(layer):
        def hook(x, hook):
            kept[layer] = x.detach().clone()
        return hook
    capture(model, batch, z=False, block_inputs=False,
            fwd_hooks=[(MLP_HOOK.format(layer=layer), keep(layer)) for layer in range(n_layers)])
    return kept


def mlp_effects(model, task: Task, method: str, *, direction: str = "corrupted_into_clean",
                batch_size: int = 16) -> HeadEffects:
    """Every MLP's effect on ``task`` by ``method`` (module docstring).

    Raises:
        InputError: a method with no MLP scores (``path``).
    """
    if method == "eap-ig":
        from circuits.edges.eap import edge_scores
        from circuits.node_eap import IG_STEPS, node_scores_per_prompt
        from circuits.tasks import task_metrics

        scores = edge_scores(model, task, method="eap-ig", ablation="corrupted",
                             ig_steps=IG_STEPS, batch_size=batch_size)
        _, mlps = node_scores_per_prompt(scores)
        metrics = task_metrics(model, task, batch_size=batch_size)
        return HeadEffects("eap_ig_nodes", task.name, direction,
                           (metrics.clean[:, None] + mlps)[:, :, None], metrics.clean,
                           metrics.corrupted, task.prompt_ids, condition="MLP node scores")
    if method not in ("activation", "attribution"):
        raise InputError(f"--nodes heads,mlps: method {method!r} gives no MLP scores; use "
                         "activation, attribution or eap-ig")
    n_layers = model.info.n_layers
    patched = np.zeros((len(task), n_layers, 1))
    clean, corrupted = np.zeros(len(task)), np.zeros(len(task))
    for tb in task.batches(batch_size):
        base_batch, source_batch = base_and_source(tb, direction)
        source = _outputs(model, source_batch)
        if method == "activation":
            base = capture(model, base_batch, z=False)
            record_unpatched(tb, direction, base.last_logits, capture(
                model, source_batch, z=False, block_inputs=False).last_logits, clean, corrupted)
            for layer in range(n_layers):
                def put(x, hook, layer=layer):
                    return source[layer].to(x.dtype)
                with torch.inference_mode():
                    logits = forward_from_layer(model, base, layer,
                                                fwd_hooks=[(MLP_HOOK.format(layer=layer), put)])
                patched[tb.index, layer, 0] = tb.logit_diff(logits).double().cpu().numpy()
            continue
        deltas: list = [None] * n_layers
        bases: list = [None] * n_layers

        def make(layer):
            def hook(x, hook):
                bases[layer] = x.detach()
                deltas[layer] = torch.zeros_like(x, requires_grad=True)
                return x + deltas[layer]
            return hook
        b = base_batch.to(model.device)
        with torch.enable_grad(), model.bridge.hooks(fwd_hooks=[
                (MLP_HOOK.format(layer=layer), make(layer)) for layer in range(n_layers)]):
            logits = model.bridge(b.input_ids, attention_mask=b.attention_mask, use_cache=False)
            last = last_token_logits(logits, b.last_pos())
            ld = tb.logit_diff(last)
            grads = torch.autograd.grad(ld.float().sum(), deltas)
        source_last = capture(model, source_batch, z=False, block_inputs=False).last_logits
        record_unpatched(tb, direction, last.detach(), source_last, clean, corrupted)
        valid = base_batch.valid().to(model.device)[:, :, None]
        for layer in range(n_layers):
            diff = (source[layer].float() - bases[layer].float()) * valid
            effect = (diff * grads[layer].float()).sum(dim=(1, 2))
            patched[tb.index, layer, 0] = (ld.detach() + effect).double().cpu().numpy()
    return HeadEffects(f"{method}_patching", task.name, direction, patched, clean, corrupted,
                       task.prompt_ids, condition="MLP outputs")


def mlp_scores(model, task: Task, method: str, *, direction: str = "corrupted_into_clean",
               batch_size: int = 16) -> np.ndarray:
    """``[n_layers]`` score of every MLP (:func:`mlp_effects`)."""
    return mlp_effects(model, task, method, direction=direction, batch_size=batch_size).score[:, 0]
