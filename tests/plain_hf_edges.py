"""Independent edge patching with plain Hugging Face hooks (no bridge, no circuits.edges forward).

One edge ``u -> v``: run the clean prompt, and swap the sender's contribution into that one
receiver's input only: ``input_v = resid + (contribution_u(corrupted) - contribution_u(clean))``.
A head's contribution is its slice of the ``o_proj`` input times its block of ``W_O``; an MLP's is
the MLP's output; the embedding's the token embedding. A query input is changed for one query
head by recomputing that head's slice of ``q_proj(input_layernorm(resid + d))``; a key/value input
likewise for one key/value head; an MLP input by a pre-hook on ``post_attention_layernorm`` (which
feeds only the MLP); the logits' input by a pre-hook on the final norm.
"""

from __future__ import annotations

import torch


def _contribution(hf, graph, sender: int, input_ids: torch.Tensor) -> torch.Tensor:
    layers = hf.model.layers
    if sender == 0:
        return hf.model.embed_tokens(input_ids)[0]
    head = graph.head_of(sender)
    layer = (sender - 1) // (graph.n_heads + 1)
    got = {}
    if head is None:
        handle = layers[layer].mlp.register_forward_hook(
            lambda m, a, out: got.setdefault("x", out[0]))
    else:
        handle = layers[layer].self_attn.o_proj.register_forward_pre_hook(
            lambda m, a: got.setdefault("x", a[0][0]))
    try:
        hf(input_ids=input_ids)
    finally:
        handle.remove()
    if head is None:
        return got["x"]
    h, d_head = head[1], hf.config.head_dim
    w_o = layers[layer].self_attn.o_proj.weight[:, h * d_head:(h + 1) * d_head]
    return got["x"][:, h * d_head:(h + 1) * d_head] @ w_o.T


def _ld(hf, input_ids, answer: int, distractor: int) -> float:
    logits = hf(input_ids=input_ids).logits[0, -1].double()
    return float(logits[answer] - logits[distractor])


@torch.no_grad()
def hf_edge_effect(hf, graph, sender: int, receiver: int, clean, corrupted, answer: int,
                   distractor: int) -> float:
    """``LD(clean prompt with edge sender -> receiver patched) - LD(clean prompt)``, in logits,
    for one unpadded prompt pair (``TokenizedPrompt``)."""
    ids = torch.as_tensor(clean.input_ids)[None]
    ids_x = torch.as_tensor(corrupted.input_ids)[None]
    d = _contribution(hf, graph, sender, ids_x) - _contribution(hf, graph, sender, ids)
    name = graph.receiver_names[receiver]
    layers = hf.model.layers
    handles = []
    if name == "logits":
        handles.append(hf.model.norm.register_forward_pre_hook(lambda m, a: (a[0] + d,)))
    elif name.startswith("m"):
        layer = layers[int(name[1:])]
        handles.append(layer.post_attention_layernorm.register_forward_pre_hook(
            lambda m, a: (a[0] + d,)))
    else:
        parts = name.split(".")
        layer = layers[int(parts[0][1:])]
        kind = parts[-1]
        index = int(parts[1][2:]) if kind in ("k", "v") else int(parts[1])
        proj = getattr(layer.self_attn, f"{kind}_proj")
        d_head = hf.config.head_dim
        resid = {}

        def keep(m, a):
            resid.setdefault("x", a[0])

        def swap(m, a, out):
            alt = torch.nn.functional.linear(layer.input_layernorm(resid["x"] + d), m.weight,
                                             m.bias)
            out = out.clone()
            out[..., index * d_head:(index + 1) * d_head] = \
                alt[..., index * d_head:(index + 1) * d_head]
            return out
        handles += [layer.input_layernorm.register_forward_pre_hook(keep),
                    proj.register_forward_hook(swap)]
    try:
        patched = _ld(hf, ids, answer, distractor)
    finally:
        for handle in handles:
            handle.remove()
    return patched - _ld(hf, ids, answer, distractor)
