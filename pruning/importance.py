"""Head importance (Michel et al., "Are Sixteen Heads Really Better than One?", arXiv 1905.10650).

Each head gets a gate ``g_h`` on its output ``hook_z`` (:mod:`pruning.gates`); at ``g = 1`` the
model is unchanged, and the importance of head ``h`` is the expected absolute sensitivity of the
loss to that gate (Michel et al., Eq. 3):

    I_h = E_x | dL(x) / dg_h |   at g = 1

where ``x`` is one prompt and ``L(x)`` its loss (:func:`pruning.objectives.importance_loss`: the
prompt's mean next-token NLL, or minus its logit difference). Units: the loss's units per unit of
gate (nats, or logits). ``dL/dg_h = sum_{pos, d} z[pos, h, d] * dL/dz[pos, h, d]``.

Per-layer normalisation, as the paper does (section 4.2, following Molchanov et al. 2017): the
importances of one layer are divided by their l2 norm over that layer's heads,
``I_norm[l, h] = I[l, h] / ||I[l, :]||_2`` (a layer whose heads all have importance 0 stays 0),
so every layer's vector has unit norm and heads of different layers can be ranked together. The
pruning order uses the normalised scores.

Cost: one forward and one backward per batch for every head at once. The gates are per prompt
(``[batch, n_layers, n_heads]``), and since prompts of a batch never interact, the gradient of the
batch's summed loss with respect to prompt ``b``'s gates is exactly ``dL(x_b)/dg``; so the
per-prompt absolute values come out of the same single backward. No parameter gradient is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pruning.gates import gate_hooks
from pruning.objectives import PromptData, importance_loss, metric_values


@dataclass(frozen=True)
class Importance:
    """Gate gradients and importances of every head.

    Attributes:
        prompt_ids: the prompts, in the order of ``gradients``' first axis.
        gradients: ``[n_prompts, n_layers, n_heads]`` ``dL(x)/dg_h`` at ``g = 1`` (signed).
        values: ``[n_prompts]`` each prompt's metric (``lm_loss`` or ``logit_diff``) at ``g = 1``.
    """

    prompt_ids: list[str]
    gradients: np.ndarray
    values: np.ndarray

    @property
    def raw(self) -> np.ndarray:
        """``[n_layers, n_heads]`` ``E_x |dL/dg_h|`` (loss units per unit gate)."""
        return np.abs(self.gradients).mean(0)

    @property
    def normalised(self) -> np.ndarray:
        """``[n_layers, n_heads]`` ``raw`` divided by each layer's l2 norm (dimensionless)."""
        return layer_normalise(self.raw)


def layer_normalise(scores: np.ndarray) -> np.ndarray:
    """``scores[l] / ||scores[l]||_2`` per layer (``[n_layers, n_heads]``); zero rows stay 0."""
    norm = np.linalg.norm(scores, axis=1, keepdims=True)
    return np.divide(scores, norm, out=np.zeros_like(scores, dtype=float), where=norm > 0)


def batch_gate_gradients(model, data: PromptData, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward with per-prompt gates at 1 and one backward.

    Returns:
        ``([batch, n_layers, n_heads]`` ``dL(x_b)/dg``, ``[batch]`` metric values) in the model's
        dtype (float32 at least).
    """
    info = model.info
    batch = batch.to(model.device)
    gates = torch.ones(batch.size, info.n_layers, info.n_heads, device=model.device,
                       dtype=next(model.bridge.parameters()).dtype, requires_grad=True)
    with torch.enable_grad(), model.bridge.hooks(fwd_hooks=gate_hooks(gates)):
        logits = model.bridge(batch.input_ids, **batch.model_kwargs())
        values = metric_values(data, logits, batch)
        (grad,) = torch.autograd.grad(importance_loss(data, values).sum(), gates)
    return grad.detach(), values.detach()


def head_importance(model, data: PromptData, *, batch_size: int = 8,
                    progress: Callable[[int], None] | None = None) -> Importance:
    """Every head's gate gradient on every prompt of ``data`` (see the module docstring).

    ``progress(n)`` is called after each batch with its number of prompts.
    """
    index = {pid: i for i, pid in enumerate(data.ids)}
    info = model.info
    grads = np.zeros((len(index), info.n_layers, info.n_heads))
    values = np.zeros(len(index))
    for batch in data.batches(batch_size):
        grad, value = batch_gate_gradients(model, data, batch)
        rows = [index[pid] for pid in batch.prompt_ids]
        grads[rows] = grad.cpu().numpy()
        values[rows] = value.cpu().numpy()
        if progress:
            progress(batch.size)
    return Importance(data.ids, grads, values)
