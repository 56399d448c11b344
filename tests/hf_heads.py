"""Independent per-head outputs from a plain Hugging Face model (no TransformerBridge).

A forward pre-hook on each layer's attention output projection (``o_proj``) reads its input, the
concatenation of the heads' outputs before W_O; slicing it per head gives ``z``, and multiplying
each slice by its block of ``o_proj.weight`` gives the head's output after W_O (``result``).
"""

from __future__ import annotations

import torch


def decoder_layers(hf_model):
    """The Llama decoder layers of a causal LM or of a LLaVA model's language model."""
    inner = hf_model.model
    return (inner.language_model if hasattr(inner, "language_model") else inner).layers


def head_outputs(hf_model, n_heads: int, output: str = "hook_z", **inputs) -> torch.Tensor:
    """``[layer, pos, head, d]`` float64 per-head outputs of one unpadded prompt (batch 1).

    ``output="hook_z"``: d = d_head (the o_proj input sliced per head); ``"hook_result"``:
    d = d_model (each slice times its block of W_O).
    """
    layers = decoder_layers(hf_model)
    captured = []

    def grab(module, args):
        captured.append(args[0][0].detach().double())

    handles = [layer.self_attn.o_proj.register_forward_pre_hook(grab) for layer in layers]
    try:
        with torch.inference_mode():
            hf_model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    out = []
    for layer, z in zip(layers, captured):
        z = z.reshape(z.shape[0], n_heads, -1)  # [pos, head, d_head]
        if output == "hook_result":
            weight = layer.self_attn.o_proj.weight.detach().double()  # [d_model, head * d_head]
            blocks = weight.reshape(weight.shape[0], n_heads, -1)  # [d_model, head, d_head]
            z = torch.einsum("phd,mhd->phm", z, blocks)
        out.append(z)
    return torch.stack(out)


def divergence(with_out: torch.Tensor, without_out: torch.Tensor, q_with: int,
               q_without: int) -> torch.Tensor:
    """``[layer, head]`` L2 distance between the two runs' outputs at the given positions."""
    return torch.linalg.vector_norm(with_out[:, q_with] - without_out[:, q_without], dim=-1)


def last_logits_with_heads_zeroed(hf_model, n_heads: int, heads, input_ids) -> torch.Tensor:
    """``[vocab]`` float64 logits at the last token of one prompt with ``heads`` ((layer, head)
    pairs) zeroed in the o_proj input."""
    layers = decoder_layers(hf_model)
    handles = []
    for index, layer in enumerate(layers):
        chosen = [h for (l, h) in heads if l == index]
        if not chosen:
            continue

        def zero(module, args, chosen=chosen):
            x = args[0].clone()
            d_head = x.shape[-1] // n_heads
            for h in chosen:
                x[..., h * d_head:(h + 1) * d_head] = 0
            return (x,)
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(zero))
    try:
        with torch.inference_mode():
            return hf_model(input_ids=input_ids).logits[0, -1].double()
    finally:
        for handle in handles:
            handle.remove()
