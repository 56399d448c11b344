"""A model run truly in float64, for finite-difference checks of gradients.

``bridge.to(torch.float64)`` alone is not enough: Llama's RMSNorm computes in float32 and the
bridge's attention takes its softmax in float32, so a loss still moves in float32 steps (about
1e-7 relative), which swamps a central difference. Inside :func:`float64_model` both keep float64
inputs in float64 (float32 inputs are unaffected), and the model is converted back afterwards
(float32 -> float64 -> float32 is exact).
"""

from __future__ import annotations

import contextlib

import torch


def _rms_norm_forward(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


@contextlib.contextmanager
def float64_model(model, monkeypatch):
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformers.models.llama import modeling_llama

    original = AttentionBridge._masked_softmax

    def masked_softmax(self, scores, dtype=None):
        return original(self, scores, dtype=None if scores.dtype == torch.float64 else dtype)

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", _rms_norm_forward)
    monkeypatch.setattr(AttentionBridge, "_masked_softmax", masked_softmax)
    model.bridge.to(torch.float64)
    try:
        yield model
    finally:
        model.bridge.to(torch.float32)
        monkeypatch.undo()
