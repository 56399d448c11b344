"""Per-head gates on the attention output and the hard-concrete (L0) gate distribution.

A gate ``g[l, h]`` multiplies head ``h`` of layer ``l`` at ``blocks.{l}.attn.hook_z``
``[batch, pos, head_index, d_head]``, i.e. the head's output before ``W_O``, so it scales exactly
the head's contribution ``z_h W_O^h`` to the residual stream. ``g = 1`` is the unmodified model
(the hook multiplies by 1.0, which is exact in IEEE arithmetic), ``g = 0`` is zero ablation of the
head. Gates may also be per prompt, ``[batch, n_layers, n_heads]``, which lets one backward pass
give every prompt's own gradient (prompts of a batch never interact).

Hard concrete (Louizos et al., arXiv 1712.01312, section 4; used for heads by Voita et al., arXiv
1905.09418), with parameters ``log_alpha`` per head and constants beta = 2/3, gamma = -0.1,
zeta = 1.1:

    u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + log_alpha) / beta)
    g = clamp(s * (zeta - gamma) + gamma, 0, 1)
    P(g != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))

so the expected number of open gates is ``sum_h sigmoid(log_alpha_h - beta log(-gamma/zeta))``.
At evaluation the gate is deterministic: ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``
(Louizos et al., Eq. 13); it is exactly 0 (the head is pruned) when ``sigmoid(log_alpha) <=
-gamma / (zeta - gamma)``, i.e. ``log_alpha <= log(1/11)`` = -2.398 for the default constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Z_HOOK = "blocks.{layer}.attn.hook_z"  # [batch, pos, head_index, d_head]
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def gate_hooks(gates: Tensor) -> list[tuple[str, Callable]]:
    """Forward hooks multiplying every head's ``hook_z`` by its gate.

    Args:
        gates: ``[n_layers, n_heads]`` (one gate per head) or ``[batch, n_layers, n_heads]``
            (one per prompt and head); any dtype, cast to the activation's; may require grad.

    Returns:
        ``[(hook name, hook)]`` for every layer; a hook returns ``z * g`` (a new tensor).

    Raises:
        ValueError: ``gates`` is not 2- or 3-dimensional.
    """
    if gates.dim() not in (2, 3):
        raise ValueError(f"gates must be [n_layers, n_heads] or [batch, n_layers, n_heads], got "
                         f"shape {tuple(gates.shape)}")

    def make(layer: int) -> Callable:
        def hook(z, hook):
            g = gates[..., layer, :].to(device=z.device, dtype=z.dtype)
            g = g[None, None, :, None] if g.dim() == 1 else g[:, None, :, None]
            return z * g
        return hook
    return [(Z_HOOK.format(layer=layer), make(layer)) for layer in range(gates.shape[-2])]


def mask_gates(n_layers: int, n_heads: int, removed) -> Tensor:
    """``[n_layers, n_heads]`` float32 gates: 0 for the ``removed`` ``(layer, head)`` pairs, else 1."""
    gates = torch.ones(n_layers, n_heads)
    for layer, head in removed:
        gates[layer, head] = 0.0
    return gates


@dataclass(frozen=True)
class HardConcrete:
    """The hard-concrete distribution's constants (module docstring; Louizos et al. 1712.01312)."""

    beta: float = BETA
    gamma: float = GAMMA
    zeta: float = ZETA

    @property
    def shift(self) -> float:
        """``beta * log(-gamma / zeta)`` (negative: -1.599 for the defaults)."""
        return self.beta * math.log(-self.gamma / self.zeta)

    def sample(self, log_alpha: Tensor, u: Tensor | None = None) -> Tensor:
        """A reparameterised draw ``g`` in [0, 1] of ``log_alpha``'s shape (differentiable in
        ``log_alpha``); ``u`` (uniform noise of the same shape) is drawn when not given."""
        if u is None:
            u = torch.rand_like(log_alpha)
        u = u.clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / self.beta)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def deterministic(self, log_alpha: Tensor) -> Tensor:
        """The evaluation gate ``clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``."""
        return (torch.sigmoid(log_alpha) * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def prob_open(self, log_alpha: Tensor) -> Tensor:
        """``P(g != 0) = sigmoid(log_alpha - beta log(-gamma / zeta))`` per gate."""
        return torch.sigmoid(log_alpha - self.shift)

    def expected_open(self, log_alpha: Tensor) -> Tensor:
        """The L0 penalty: expected number of open gates, a scalar (differentiable)."""
        return self.prob_open(log_alpha).sum()
