"""A forward pass in which every receiver of the edge graph has its own input.

The Llama decoder computed from the wrapped Hugging Face model's weights (read once; nothing is
copied), with the residual stream split into the senders of :class:`circuits.edges.graph.EdgeGraph`:
``resid = embed + sum of the head and MLP outputs so far`` (+ biases, which are constants, not
nodes). Each receiver reads its own copy of ``resid``, which allows two things the bridge's hooks
do not give per query head and per key/value head:

* **gradients per receiver input** (EAP): a zero tensor ``delta`` ``[batch, pos, receivers, d_model]``
  is added to the copies; ``d metric / d delta`` is the gradient at each receiver's input (the
  reference; :meth:`GraphModel.receiver_gradients` gets the same from ordinary forwards);
* **edge patching** (evaluation): receiver ``v`` reads ``resid - sum_{u not in C, u -> v}
  (out_u - ablated_u)``, with ``out_u`` the sender's output *in this run* (Hanna et al.'s
  formulation): patching every edge gives exactly the ablated (e.g. corrupted) run, none the clean
  run.

TransformerLens 4.3's bridge exposes ``hook_q_input``/``hook_k_input``/``hook_v_input``, but on the
Llama bridge these carry one shared tensor per layer (no per-head split like
``use_split_qkv_input`` in the old ``HookedTransformer``), hence this explicit forward; its logits
are checked against the bridge's (tests/test_circuits_edges.py). Only Llama-family models
(``LlamaForCausalLM``: RMSNorm, rotary positions, gated MLP, grouped-query attention, full causal
attention) are supported; right padding as in :mod:`workbench.tokens` (padding never reaches a
real token under the causal mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from circuits.edges.graph import EdgeGraph
from workbench.errors import InputError


def _linear(module):
    inner = getattr(module, "original_component", module)
    return inner.weight, inner.bias


def _norm(module):
    inner = getattr(module, "original_component", module)
    return inner.weight, float(getattr(inner, "variance_epsilon", getattr(inner, "eps", 1e-6)))


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """Llama RMSNorm over the last dimension (float32 maths for half inputs, as Hugging Face)."""
    dtype = x.dtype
    h = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight.to(dtype) * h.to(dtype)


def rms_norm_factors(x: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """What the vector-Jacobian product of :func:`rms_norm` at ``x`` ``[batch, pos, d]`` needs:
    ``(s, w, c)`` with ``s = (mean(x^2) + eps)^-1/2`` ``[batch, pos, 1]``, ``w`` the weight
    ``[d]`` and ``c = s^2 / d`` ``[batch, pos, 1]`` (float32 or wider). For a cotangent ``u`` at
    the norm's output, ``u^T J = w * (s u) - x * c * <n, u>`` with ``n = rms_norm(x)``; a query
    head's ``<n, W_q g> = <q, g>`` (``q`` before its bias), so the product can be accumulated in
    ``d_head`` space (:meth:`GraphModel.receiver_gradients`)."""
    maths = torch.promote_types(x.dtype, torch.float32)  # float32 for half inputs, as rms_norm
    s = torch.rsqrt(x.to(maths).pow(2).mean(-1, keepdim=True) + eps)
    return s, weight.to(maths), s.pow(2) / x.shape[-1]


def _full(w: Tensor) -> Tensor:
    """A per-head projection ``[heads, d_model, d_head]`` back as the ``nn.Linear`` weight
    ``[heads * d_head, d_model]`` (a view of it)."""
    return w.transpose(1, 2).flatten(0, 1)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class Layer:
    """One decoder layer's weights, per head: ``w_q`` ``[n_heads, d_model, d_head]``, ``w_k``/``w_v``
    ``[n_kv, d_model, d_head]``, ``w_o`` ``[n_heads, d_head, d_model]``; biases may be None."""

    ln1: Tensor
    ln1_eps: float
    w_q: Tensor
    w_k: Tensor
    w_v: Tensor
    w_o: Tensor
    b_q: Tensor | None
    b_k: Tensor | None
    b_v: Tensor | None
    b_o: Tensor | None
    ln2: Tensor
    ln2_eps: float
    gate: object
    up: object
    down: object
    act: object


class GraphModel:
    """The edge-graph view of a loaded Llama-family model (``workbench.models.LoadedModel``).

    Raises:
        InputError: the model is not a Llama-family causal LM, or uses sliding-window attention.
    """

    def __init__(self, model):
        hf = model.bridge.original_model
        cfg = hf.config
        if getattr(cfg, "model_type", None) != "llama" or not hasattr(hf, "lm_head"):
            raise InputError(f"--level edge supports Llama-family causal LMs (model_type 'llama'); "
                             f"model {model.info.name!r} is {model.info.architecture}")
        if any(w is not None for w in model.info.attention_windows):
            raise InputError(f"--level edge needs full causal attention; model {model.info.name!r} "
                             "uses sliding windows")
        self.model = model
        self.hf = hf
        info = model.info
        self.graph = EdgeGraph(info.n_layers, info.n_heads, info.n_key_value_heads)
        self.n_heads, self.n_kv, self.d_head = info.n_heads, info.n_key_value_heads, info.d_head
        self.scale = float(getattr(cfg, "head_dim", None) or info.d_head) ** -0.5
        self.layers = [self._layer(block) for block in hf.model.layers]
        self.final_norm, self.final_eps = _norm(hf.model.norm)
        self.w_u, self.b_u = _linear(hf.lm_head)
        self.embedding = hf.model.embed_tokens
        self.rotary = hf.model.rotary_emb

    def _layer(self, block) -> Layer:
        inner = getattr(block, "original_component", block)
        attn, mlp = inner.self_attn, inner.mlp
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (_linear(attn.q_proj), _linear(attn.k_proj),
                                                  _linear(attn.v_proj), _linear(attn.o_proj))
        d_model, h, k, e = wq.shape[1], self.n_heads, self.n_kv, self.d_head
        ln1, eps1 = _norm(inner.input_layernorm)
        ln2, eps2 = _norm(inner.post_attention_layernorm)
        return Layer(ln1, eps1, wq.view(h, e, d_model).transpose(1, 2),
                     wk.view(k, e, d_model).transpose(1, 2), wv.view(k, e, d_model).transpose(1, 2),
                     wo.view(d_model, h, e).permute(1, 2, 0),
                     None if bq is None else bq.view(h, e), None if bk is None else bk.view(k, e),
                     None if bv is None else bv.view(k, e), bo, ln2, eps2,
                     _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj),
                     mlp.act_fn)

    @property
    def device(self) -> torch.device:
        return self.w_u.device

    def embed(self, input_ids: Tensor) -> Tensor:
        """``[batch, pos, d_model]`` token embeddings (the ``embed`` sender's output)."""
        return self.embedding(input_ids.to(self.device))

    def _qkv(self, lw: Layer, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Query, key and value projections (before bias and rotation), ``[batch, pos, heads,
        d_head]``, from per-receiver inputs ``x`` ``[batch, pos, n_heads + 2 n_kv, d_model]`` (q
        inputs, then k, then v) or one shared input ``[batch, pos, d_model]``."""
        h, k = self.n_heads, self.n_kv
        n = rms_norm(x, lw.ln1, lw.ln1_eps)
        if n.dim() == 3:  # one shared input (no per-receiver change): plain projections
            b, p, _ = n.shape
            return tuple(torch.nn.functional.linear(n, _full(w).to(n.dtype)).view(b, p, -1, e)
                         for w, e in ((lw.w_q, lw.w_q.shape[2]), (lw.w_k, lw.w_k.shape[2]),
                                      (lw.w_v, lw.w_v.shape[2])))
        return (torch.einsum("bphd,hde->bphe", n[:, :, :h], lw.w_q.to(n.dtype)),
                torch.einsum("bpkd,kde->bpke", n[:, :, h:h + k], lw.w_k.to(n.dtype)),
                torch.einsum("bpkd,kde->bpke", n[:, :, h + k:], lw.w_v.to(n.dtype)))

    def _attend(self, lw: Layer, q: Tensor, key: Tensor, val: Tensor, cos: Tensor, sin: Tensor
                ) -> Tensor:
        """``hook_z`` ``[batch, pos, head_index, d_head]`` from the projections of :meth:`_qkv`."""
        h, k = self.n_heads, self.n_kv
        if lw.b_q is not None:
            q, key, val = q + lw.b_q, key + lw.b_k, val + lw.b_v
        c, s = cos[:, :, None], sin[:, :, None]
        q, key = q * c + _rotate_half(q) * s, key * c + _rotate_half(key) * s
        rep = h // k
        key, val = key.repeat_interleave(rep, dim=2), val.repeat_interleave(rep, dim=2)
        scores = torch.einsum("bqhe,bkhe->bhqk", q, key) * self.scale
        p = scores.shape[-1]
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        soft = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else scores.dtype
        pattern = torch.softmax(scores, dim=-1, dtype=soft).to(q.dtype)
        return torch.einsum("bhqk,bkhe->bqhe", pattern, val)

    def _attention(self, lw: Layer, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Head outputs ``[batch, pos, n_heads, d_model]`` from per-receiver inputs ``x``
        ``[batch, pos, n_heads + 2 n_kv, d_model]`` (q inputs, then k, then v) or one shared
        input ``[batch, pos, d_model]``."""
        z = self._attend(lw, *self._qkv(lw, x), cos, sin)
        return torch.einsum("bqhe,hed->bqhd", z, lw.w_o.to(z.dtype))

    def _mlp(self, lw: Layer, x: Tensor) -> Tensor:
        n = rms_norm(x, lw.ln2, lw.ln2_eps)
        (wg, bg), (wu, bu), (wd, bd) = lw.gate, lw.up, lw.down
        hidden = lw.act(torch.nn.functional.linear(n, wg, bg)) * \
            torch.nn.functional.linear(n, wu, bu)
        return torch.nn.functional.linear(hidden, wd, bd)

    def run(self, embeds: Tensor, last_pos: Tensor, *, deltas: bool = False,
            ablated: Tensor | None = None, patch: Tensor | None = None) -> GraphRun:
        """One forward from the embedding.

        Args:
            embeds: ``[batch, pos, d_model]`` the embedding sender's output.
            last_pos: ``[batch]`` position whose logits are returned.
            deltas: add a zero ``delta`` with ``requires_grad`` to every receiver's input
                (``GraphRun.deltas``: per layer the attention inputs' ``[batch, pos, block - 1,
                d_model]`` then the MLP input's ``[batch, pos, 1, d_model]``, last the logits'
                ``[batch, pos, 1, d_model]``); run under ``torch.enable_grad``.
            ablated: ``[batch, n_senders, pos, d_model]`` the ablated sender outputs (with
                ``patch``).
            patch: ``[n_senders, n_receivers]`` 0/1: 1 = the edge carries the ablated output.

        Returns:
            :class:`GraphRun` with ``[batch, vocab]`` last-token logits and the sender outputs
            ``[batch, n_senders, pos, d_model]`` (detached; sender-major).
        """
        g = self.graph
        b, p, d = embeds.shape
        outs = embeds.new_empty(b, g.n_senders, p, d)  # sender-major: prefixes are contiguous
        outs[:, 0] = embeds.detach()
        patching = patch is not None
        if patching:
            patch = patch.to(embeds.dtype)
            diff = embeds.new_zeros(b, g.n_senders, p, d)
            diff[:, 0] = embeds - ablated[:, 0]
        position_ids = torch.arange(p, device=embeds.device)[None].expand(b, p)
        cos, sin = self.rotary(embeds, position_ids)
        cos, sin = cos.to(embeds.dtype), sin.to(embeds.dtype)
        resid = embeds
        kept: list[Tensor] = []

        def inputs(first: int, count: int, prefix: int) -> Tensor:
            x = resid
            if patching:
                m = patch[:prefix, first:first + count]
                if bool(m.any()):  # [b, count, p*d] = m^T @ diff, then [b, p, count, d]
                    sub = (m.T @ diff[:, :prefix].reshape(b, prefix, p * d)).view(b, count, p, d)
                    x = x[:, :, None] - sub.transpose(1, 2)
            if deltas:
                delta = torch.zeros(b, p, count, d, dtype=embeds.dtype, device=embeds.device,
                                    requires_grad=True)
                kept.append(delta)
                x = (x[:, :, None] if x.dim() == 3 else x) + delta
            if x.dim() == 4 and count == 1:
                x = x[:, :, 0]
            return x

        for layer, lw in enumerate(self.layers):
            first = layer * g.block
            start = g.head_sender(layer, 0)
            heads = self._attention(lw, inputs(first, g.block - 1, start), cos, sin)
            outs[:, start:start + self.n_heads] = heads.detach().transpose(1, 2)
            if patching:
                diff[:, start:start + self.n_heads] = (
                    heads.transpose(1, 2) - ablated[:, start:start + self.n_heads])
            resid = resid + heads.sum(2)
            if lw.b_o is not None:
                resid = resid + lw.b_o
            mlp = self._mlp(lw, inputs(first + g.block - 1, 1, start + self.n_heads))
            outs[:, start + self.n_heads] = mlp.detach()
            if patching:
                diff[:, start + self.n_heads] = mlp - ablated[:, start + self.n_heads]
            resid = resid + mlp
        final = inputs(g.logits_receiver, 1, g.n_senders)
        rows = torch.arange(b, device=embeds.device)
        last = final[rows, last_pos.to(embeds.device)]
        logits = torch.nn.functional.linear(rms_norm(last, self.final_norm, self.final_eps),
                                            self.w_u, self.b_u)
        return GraphRun(logits, outs, kept)


    def receiver_gradients(self, steps: Tensor | Sequence[Tensor], last_pos: Tensor,
                           metric: Callable[[Tensor], Tensor], *, outputs: bool = False
                           ) -> ReceiverGradients:
        """``d metric.sum() / d input`` of every receiver, averaged over runs from ``steps``
        (EAP-IG's path; one run for EAP), from ordinary forwards and backwards.

        Every receiver of a layer reads the same residual ``x`` (no patch), so the per-receiver
        gradients differ only after the shared input norm: the backward gives each query head's
        ``g_h = d m / d q_h`` (and each key/value head's), and the gradient at that head's input
        is ``w * W_q^h (s g_h) - x (s^2 / d) <q_h, g_h>`` (:func:`rms_norm_factors`). The
        ``d_head``-sized terms are summed over the steps and the ``d_model``-sized gradients are
        formed once at the end. Equal to the gradients of zero ``deltas`` at per-receiver copies of
        every input (``run(deltas=True)``), without running the norm and projections on ``block -
        1`` copies of the residual stream.

        Args:
            steps: ``[batch, pos, d_model]`` embeddings (the embedding sender's output), one tensor
                or an iterable of several (one run each, read one at a time; memory still grows
                with the number of steps: per layer one ``[batch, pos, d_model]`` input is kept
                per step).
            last_pos: ``[batch]`` position whose logits ``metric`` reads.
            metric: ``[batch, vocab]`` logits -> ``[batch]`` values (differentiable).
            outputs: also return every sender's output in the first run (as :meth:`run` does).

        Returns:
            :class:`ReceiverGradients`: ``grads`` (the mean over the steps) ``[batch,
            n_receivers, pos, d_model]`` (receiver order of :class:`EdgeGraph`); ``logits``,
            ``values`` and ``outs`` of the first run.
        """
        steps = [steps] if isinstance(steps, Tensor) else steps  # an iterable: read lazily
        h, k = self.n_heads, self.n_kv
        acc: list[dict] = [{"qkv": 0.0, "coef": [], "x": [], "mlp": 0.0, "w": None}
                           for _ in self.layers]
        last_acc: Tensor | float = 0.0
        first_run = None
        n = 0
        for i, embeds in enumerate(steps):
            n += 1
            run = self._gradient_run(embeds, last_pos, metric, outputs and i == 0)
            first_run = first_run or run
            for layer, lw in enumerate(self.layers):
                q, key, val, gq, gk, gv, gm = run.per_layer[layer]
                s, w, c = rms_norm_factors(run.attn_in[layer], lw.ln1, lw.ln1_eps)
                proj = torch.cat([q, key, val], 2).to(s.dtype)
                grad = torch.cat([gq, gk, gv], 2).to(s.dtype)  # [batch, pos, h + 2k, d_head]
                a = acc[layer]
                a["w"] = w
                a["qkv"] = a["qkv"] + s[..., None] * grad
                a["coef"].append(c * (proj * grad).sum(-1))  # [batch, pos, h + 2k]
                a["x"].append(run.attn_in[layer])
                a["mlp"] = a["mlp"] + gm
            last_acc = last_acc + run.final_grad
        if not n:
            raise ValueError("receiver_gradients needs at least one step")
        g = self.graph
        x0 = acc[0]["x"][0]
        b, p, d = x0.shape
        grads = x0.new_empty(b, g.n_receivers, p, d)
        with torch.no_grad():
            for layer, (lw, a) in enumerate(zip(self.layers, acc)):
                w, gsum, first = a["w"], a["qkv"], layer * g.block
                coefs = torch.stack(a["coef"], -1)  # [batch, pos, receivers, steps]
                xs = torch.stack([x.to(gsum.dtype) for x in a["x"]], 2)  # [batch, pos, steps, d]
                at = torch.cat([torch.einsum("bphe,hde->bhpd", gsum[:, :, :h], lw.w_q.to(w.dtype)),
                                torch.einsum("bpke,kde->bkpd", gsum[:, :, h:h + k],
                                             lw.w_k.to(w.dtype)),
                                torch.einsum("bpke,kde->bkpd", gsum[:, :, h + k:],
                                             lw.w_v.to(w.dtype))], dim=1)
                at.mul_(w).sub_(torch.einsum("bprk,bpkd->brpd", coefs, xs)).div_(n)
                grads[:, first:first + g.block - 1] = at
                grads[:, first + g.block - 1] = a["mlp"] / n
            grads[:, g.logits_receiver] = last_acc / n
        return ReceiverGradients(grads, first_run.logits, first_run.values, first_run.outs)

    def sender_outputs(self, embeds: Tensor) -> Tensor:
        """``[batch, n_senders, pos, d_model]`` every sender's output in an unpatched run from
        ``embeds`` (no gradients; what :meth:`run` returns as ``outs``, with plain projections)."""
        last = torch.zeros(embeds.shape[0], dtype=torch.long, device=embeds.device)
        return self._gradient_run(embeds, last, None, True).outs

    def _gradient_run(self, embeds: Tensor, last_pos: Tensor,
                      metric: Callable[[Tensor], Tensor] | None, outputs: bool) -> _Pass:
        """One forward and backward for :meth:`receiver_gradients` (with ``metric`` None a forward
        only, no gradients)."""
        g = self.graph
        b, p, d = embeds.shape
        position_ids = torch.arange(p, device=embeds.device)[None].expand(b, p)
        cos, sin = self.rotary(embeds, position_ids)
        cos, sin = cos.to(embeds.dtype), sin.to(embeds.dtype)
        outs = embeds.new_empty(b, g.n_senders, p, d) if outputs else None
        if outputs:
            outs[:, 0] = embeds.detach()
        leaves: list[Tensor] = []

        def leaf(like: Tensor) -> Tensor | float:
            if metric is None:
                return 0.0
            t = torch.zeros_like(like, requires_grad=True)
            leaves.append(t)
            return t

        with torch.set_grad_enabled(metric is not None):
            resid, attn_in, projections = embeds.detach(), [], []
            for layer, lw in enumerate(self.layers):
                attn_in.append(resid.detach())
                q, key, val = self._qkv(lw, resid)
                projections.append((q.detach(), key.detach(), val.detach()))
                z = self._attend(lw, q + leaf(q), key + leaf(key), val + leaf(val), cos, sin)
                resid = resid + torch.nn.functional.linear(
                    z.reshape(*z.shape[:2], -1), lw.w_o.flatten(0, 1).T.to(z.dtype))
                if lw.b_o is not None:
                    resid = resid + lw.b_o
                mlp = self._mlp(lw, resid + leaf(resid))
                if outputs:
                    start = g.head_sender(layer, 0)
                    with torch.no_grad():
                        outs[:, start:start + self.n_heads] = torch.einsum(
                            "bqhe,hed->bhqd", z, lw.w_o.to(z.dtype))
                    outs[:, start + self.n_heads] = mlp.detach()
                resid = resid + mlp
            final = resid + leaf(resid)
            rows = torch.arange(b, device=embeds.device)
            logits = torch.nn.functional.linear(
                rms_norm(final[rows, last_pos.to(embeds.device)], self.final_norm,
                         self.final_eps), self.w_u, self.b_u)
            if metric is None:
                return _Pass([], attn_in, None, logits, None, outs)
            values = metric(logits)
            found = torch.autograd.grad(values.sum(), leaves)
        per_layer = [(*projections[layer], *found[4 * layer:4 * layer + 4])
                     for layer in range(len(self.layers))]
        return _Pass(per_layer, attn_in, found[-1], logits.detach(), values.detach(), outs)

@dataclass
class GraphRun:
    """A :meth:`GraphModel.run`: ``logits`` ``[batch, vocab]`` at the last position, ``outs``
    ``[batch, n_senders, pos, d_model]`` sender outputs (detached), ``deltas`` the zero tensors at
    the receiver inputs (per layer attention then MLP, last the logits; see ``run``)."""

    logits: Tensor
    outs: Tensor
    deltas: list[Tensor]


@dataclass
class _Pass:
    """One :meth:`GraphModel._gradient_run`: per layer ``(q, k, v, dm/dq, dm/dk, dm/dv, dm/d mlp
    input)`` (projections before bias), per layer the attention input ``x``, ``dm/d`` the
    logits' input, the logits, the metric values and the sender outputs (or None)."""

    per_layer: list
    attn_in: list[Tensor]
    final_grad: Tensor | None
    logits: Tensor
    values: Tensor | None
    outs: Tensor | None


@dataclass
class ReceiverGradients:
    """A :meth:`GraphModel.receiver_gradients`: ``grads`` ``[batch, n_receivers, pos, d_model]``
    the gradient at every receiver's input; ``logits`` ``[batch, vocab]``; ``values`` ``[batch]``
    the metric; ``outs`` the sender outputs when asked for (else None)."""

    grads: Tensor
    logits: Tensor
    values: Tensor
    outs: Tensor | None
