"""The measurements behind the IOI head classes (Wang et al. 2022, arXiv 2211.00593, section 3):
token positions, attention between them, OV copying scores, a linear first pass of path patching
and the direct effects that appear when the name movers are ablated.

Positions (per prompt, token indices in the clean prompt; the corrupted prompt has the same length):
``IO``, ``S1``, ``S2`` are the *first* token of the task's segments of those names (the answer
and distractor are the first token of the names, so a name mover must move that one); ``S1+1`` is
the token after the *last* token of ``S1``; ``END`` is the last real token (the logits are read
there). A task without the segments ``IO``, ``S1`` and ``S2`` on every prompt is refused.

:func:`circuits.ioi_classes.ioi_classes` combines these with exact path patching
(:mod:`circuits.path_patching`) into the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuits.cache import Z_HOOK, block_input, capture
from circuits.dla import _modules, _norm_form
from circuits.path_patching import receiver_slots
from circuits.tasks import Task, TaskBatch
from workbench.errors import InputError, WorkbenchError
from workbench.heads import Head

SEGMENTS = ("IO", "S1", "S2")
POSITIONS = ("IO", "S1", "S1+1", "S2", "END")
# (query position, key position) of each attention score; "S" = S1 and S2 together
ATTENTION = {"END->IO": ("END", ("IO",)), "END->S": ("END", ("S1", "S2")),
             "END->S2": ("END", ("S2",)), "S2->S1": ("S2", ("S1",)),
             "S2->S1+1": ("S2", ("S1+1",)), "S1+1->S1": ("S1+1", ("S1",))}
PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"  # [batch, head_index, query_pos, key_pos]
QKV_HOOK = "blocks.{layer}.attn.hook_{kind}"  # [batch, pos, head_index or kv head, d_head]


def ioi_positions(task: Task) -> dict[str, np.ndarray]:
    """``{"IO", "S1", "S1+1", "S2", "END"}`` -> ``[n_prompts]`` token positions (module docstring).

    Raises:
        InputError: a prompt lacks a segment ``IO``, ``S1`` or ``S2`` (or it covers no token), or
            ``S1+1`` is not before ``S2`` (named by prompt id).
    """
    out = {name: np.zeros(len(task), dtype=np.int64) for name in POSITIONS}
    for i, tok in enumerate(task.clean):
        for name in SEGMENTS:
            where = tok.segments.get(name)
            if where is None or len(where) == 0:
                raise InputError(
                    f"{tok.prompt.source}: prompt {tok.id!r} has no segment {name!r}; the IOI head "
                    f"classes need the segments {', '.join(SEGMENTS)} on every prompt (task "
                    f"{task.name!r}; data/ioi.jsonl carries them)")
            out[name][i] = int(where[0])
        out["S1+1"][i] = int(tok.segments["S1"][-1]) + 1
        out["END"][i] = tok.n_tokens - 1
        if not out["S1+1"][i] < out["S2"][i] < out["END"][i] or out["IO"][i] == out["S1"][i]:
            raise InputError(f"{tok.prompt.source}: prompt {tok.id!r}: the IOI positions are out "
                             f"of order ({ {k: int(v[i]) for k, v in out.items()} }); S1+1 < S2 "
                             "< END and IO != S1 are needed")
    return out


def attention_scores(model, task: Task, positions: dict[str, np.ndarray], *,
                     batch_size: int = 16) -> dict[str, np.ndarray]:
    """Attention of every head between the IOI positions on the clean prompts.

    Returns:
        ``{name: [n_prompts, n_layers, n_heads]}`` for each name of :data:`ATTENTION`: the
        attention probability from the query position to the key position(s) (summed over the
        keys when there are several), in [0, 1].

    Raises:
        WorkbenchError: the model does not fire ``hook_pattern``.
    """
    n_layers = model.info.n_layers
    out = {name: np.zeros((len(task), n_layers, model.info.n_heads)) for name in ATTENTION}
    for tb in task.batches(batch_size):
        rows = torch.arange(tb.clean.size)
        pos = {name: torch.from_numpy(v[tb.index]) for name, v in positions.items()}
        got: dict[int, Tensor] = {}

        def keep(layer: int):
            def hook(pattern, hook):
                p = pattern.detach().double().cpu()
                got[layer] = torch.stack([
                    sum(p[rows, :, pos[q], pos[k]] for k in keys)
                    for q, keys in ATTENTION.values()], 0)  # [score, batch, head_index]
            return hook
        hooks = [(PATTERN_HOOK.format(layer=layer), keep(layer)) for layer in range(n_layers)]
        batch = tb.clean.to(model.device)
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks):
            model.bridge(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        if len(got) != n_layers:
            raise WorkbenchError(f"hook_pattern fired in {len(got)} of {n_layers} layers; the "
                                 "IOI attention scores need every layer's pattern")
        for s, name in enumerate(ATTENTION):
            out[name][tb.index] = torch.stack([got[layer][s] for layer in range(n_layers)],
                                              1).numpy()
    return out


@dataclass(frozen=True)
class HeadWeights:
    """The matrices of one query head, row-vector convention (``x @ W``).

    ``norm_weight`` ``[d_model]`` is the head's layer's input norm weight (RMSNorm); ``w_v``
    ``[d_model, d_head]`` is the value projection of the key/value head the query head reads
    (grouped-query attention); ``w_o`` ``[d_head, d_model]`` the head's rows of the output
    projection.
    """

    norm_weight: Tensor
    eps: float
    w_v: Tensor
    w_o: Tensor


def head_weights(model, layer: int, head: int) -> HeadWeights:
    """Read a Llama-style head's value and output matrices from the Hugging Face modules.

    Raises:
        WorkbenchError: the block is not Llama-style (``input_layernorm`` RMSNorm, ``v_proj``,
            ``o_proj`` without biases).
    """
    block = model.bridge.blocks[layer]
    hf = getattr(block, "original_component", block)
    attn = getattr(hf, "self_attn", None)
    norm = getattr(hf, "input_layernorm", None)
    if attn is None or norm is None or not hasattr(attn, "v_proj") or not hasattr(attn, "o_proj"):
        raise WorkbenchError(f"model {model.info.name!r} ({model.info.architecture}): the OV "
                             "copying score reads Llama-style v_proj/o_proj/input_layernorm "
                             "weights, which this architecture does not have")
    if getattr(attn.v_proj, "bias", None) is not None or getattr(attn.o_proj, "bias", None) \
            is not None or getattr(norm, "bias", None) is not None:
        raise WorkbenchError("the OV copying score does not handle value/output/norm biases")
    d_head = model.info.d_head
    group = model.info.n_heads // model.info.n_key_value_heads
    kv = head // group
    w_v = attn.v_proj.weight.detach().double()[kv * d_head:(kv + 1) * d_head].T
    w_o = attn.o_proj.weight.detach().double()[:, head * d_head:(head + 1) * d_head].T
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    return HeadWeights(norm.weight.detach().double(), eps, w_v, w_o)


def name_residuals(model, task: Task, positions: dict[str, np.ndarray], *,
                   batch_size: int = 16) -> tuple[Tensor, Tensor]:
    """The residual stream after block 0 (its attention and MLP, ``blocks.0.hook_resid_post``) at
    the IO, S1 and S2 positions of every clean prompt, and the name's token there.

    Returns:
        ``([3 * n_prompts, d_model]`` float64 residuals, ``[3 * n_prompts]`` token ids), prompts in
        task order, IO then S1 then S2 per prompt.
    """
    resid = torch.zeros(len(task), 3, model.info.d_model, dtype=torch.float64)
    tokens = torch.zeros(len(task), 3, dtype=torch.long)
    for tb in task.batches(batch_size):
        after0 = block_input(capture(model, tb.clean, z=False), 1)  # [batch, pos, d_model]
        for j, name in enumerate(SEGMENTS):
            pos = torch.from_numpy(positions[name][tb.index])
            rows = torch.arange(tb.clean.size)
            resid[tb.index, j] = after0[rows, pos.to(after0.device)].double().cpu()
            tokens[tb.index, j] = tb.clean.input_ids[rows, pos]
    return resid.reshape(-1, model.info.d_model), tokens.reshape(-1)


def copy_scores(model, heads: Sequence[Head], resid: Tensor, tokens: Tensor, *, k: int = 5
                ) -> dict[Head, tuple[float, float]]:
    """Wang et al.'s OV copying score and negative copying score of each head (appendix, "copy
    score"): the fraction of (prompt, name position) pairs whose name token is among the top
    ``k`` logits of ``W_U · N_final(± OV(N_l(x)))``, ``x`` the name's residual after block 0
    (:func:`name_residuals`), ``N_l`` the head's layer's input RMSNorm, ``OV = W_V W_O`` (the
    value head the query head reads under grouped-query attention) and ``N_final`` the final norm
    (its weight; its scale does not change a top-k). Negative: the same with ``-OV`` (the name
    among the ``k`` lowest logits).

    Returns:
        ``{head: (copy_score, negative_copy_score)}``, fractions in [0, 1].
    """
    norm, unembed = _modules(model)
    w_u = unembed.weight.detach().double()  # [vocab, d_model]
    with torch.inference_mode():
        form, w_final, _, _ = _norm_form(norm, resid[:2].to(unembed.weight.dtype)
                                         .to(w_u.device))
    if form == "layer":
        raise WorkbenchError("the OV copying score handles an RMSNorm final norm only")
    out = {}
    tok = tokens.to(w_u.device)
    for layer, head in heads:
        hw = head_weights(model, layer, head)
        x = resid.to(w_u.device)
        x = hw.norm_weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + hw.eps)
        o = (x @ hw.w_v) @ hw.w_o  # [n, d_model]
        logits = (o * w_final) @ w_u.T  # [n, vocab]
        top = logits.topk(k, dim=-1).indices
        bottom = (-logits).topk(k, dim=-1).indices
        out[(layer, head)] = (float((top == tok[:, None]).any(-1).double().mean()),
                              float((bottom == tok[:, None]).any(-1).double().mean()))
    return out


def _ld(tb: TaskBatch, logits: Tensor, last: Tensor) -> Tensor:
    rows = torch.arange(logits.shape[0], device=logits.device)
    final = logits[rows, last]
    return final[rows, tb.answer.to(final.device)] - final[rows, tb.distractor.to(final.device)]


def path_estimates(model, task: Task, receivers: str | Sequence[Head], kinds: str = "qkv", *,
                   batch_size: int = 16) -> np.ndarray:
    """A first-order (attribution) estimate of path patching every head (sender) to
    ``receivers`` (``"logits"`` or heads' ``kinds`` inputs), noising: the clean run, each sender's
    ``z`` from the corrupted run at every position.

    Path patching freezes every head but the sender and recomputes MLPs and norms (step 1), then
    reruns the clean prompt with only the receivers' inputs patched (step 2). Its linearisation
    at the clean run is ``sum_{pos, d} (z_corr - z_clean)[pos, h, d] * G[pos, h, d]`` with ``G``
    the gradient of ``sum_r g_r . act_r`` with respect to the sender's ``z`` in a forward where
    every ``z`` is detached (frozen heads: no path through another head's attention) and ``g_r =
    dLD/d act_r`` the receivers' input gradients in the clean run with the receivers' inputs cut
    from their upstream (step 2 overwrites them, so no path runs through one receiver into
    another); with
    receivers = logits, ``G = dLD/dz`` in the frozen forward. Exact when LD is linear in the
    patch; used only to pick which senders the exact path patching measures.

    Returns:
        ``[n_prompts, n_layers, n_heads]`` estimated change of LD (logits; negative = the sender
        carries the task); heads that cannot reach a receiver are 0.
    """
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    out = np.zeros((len(task), n_layers, n_heads))
    slots = {} if receivers == "logits" else receiver_slots(model, receivers, kinds)
    if receivers != "logits" and max((l for l, _ in receivers), default=0) == 0:
        return out  # nothing can reach receivers in layer 0
    for tb in task.batches(batch_size):
        corrupted = capture(model, tb.corrupted, block_inputs=False)
        batch = tb.clean.to(model.device)
        last = batch.last_pos()
        g: dict = {}
        if slots:  # step 2's gradient at the receivers' inputs, ordinary clean run
            deltas = {}

            def grad_hook(key):
                def hook(act, hook):  # step 2 overwrites the slots: no gradient flows through
                    out = act.clone()  # them to earlier receivers
                    out[:, :, slots[key]] = act[:, :, slots[key]].detach()
                    deltas[key] = torch.zeros_like(act, requires_grad=True)
                    return out + deltas[key]
                return hook
            hooks = [(QKV_HOOK.format(layer=l, kind=c), grad_hook((l, c))) for l, c in slots]
            with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
                logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                                      use_cache=False)
                keys = list(deltas)
                grads = torch.autograd.grad(_ld(tb, logits, last).sum(),
                                            [deltas[k] for k in keys])
            for key, grad in zip(keys, grads):
                mask = torch.zeros_like(grad)
                mask[:, :, slots[key]] = 1
                g[key] = (grad * mask).detach()
        zs, dz = [None] * n_layers, [None] * n_layers

        def frozen(layer: int):
            def hook(z, hook):
                zs[layer] = z.detach()
                dz[layer] = torch.zeros_like(z, requires_grad=True)
                return z.detach() + dz[layer]
            return hook
        acts: dict = {}

        def record(key):
            def hook(act, hook):
                acts[key] = act
            return hook
        hooks = [(Z_HOOK.format(layer=layer), frozen(layer)) for layer in range(n_layers)]
        hooks += [(QKV_HOOK.format(layer=l, kind=c), record((l, c))) for l, c in slots]
        with torch.enable_grad(), model.bridge.hooks(fwd_hooks=hooks):
            logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask,
                                  use_cache=False)
            if slots:
                objective = sum((g[key] * acts[key]).sum() for key in slots)
            else:
                objective = _ld(tb, logits, last).sum()
            reach = n_layers if not slots else max(l for l, _ in slots)
            grads = torch.autograd.grad(objective, dz[:reach], allow_unused=True)
        for layer, grad in enumerate(grads):
            if grad is None:
                continue
            diff = corrupted.z[layer].double() - zs[layer].double()
            out[tb.index, layer] = (diff * grad.double()).sum(dim=(1, 3)).cpu().numpy()
    return out


def direct_effects(model, task: Task, *, ablate: Sequence[Head] = (), batch_size: int = 16
                   ) -> np.ndarray:
    """Direct logit attribution of every head at END on the clean prompts
    (:func:`circuits.dla.direct_logit_attribution`), optionally with the heads ``ablate``
    replaced by their ``z`` on the corrupted (p_ABC) prompt, as Wang et al. knock out the name
    movers to find the backup name movers.

    Returns:
        ``[n_prompts, n_layers, n_heads]`` in logits.
    """
    from circuits.dla import direct_logit_attribution

    by_layer: dict[int, list[int]] = {}
    for layer, head in ablate:
        by_layer.setdefault(layer, []).append(head)

    def knockout(tb: TaskBatch):
        source = capture(model, tb.corrupted, block_inputs=False).z

        def make(layer: int):
            def hook(z, hook):
                out = z.clone()
                out[:, :, by_layer[layer]] = source[layer][:, :, by_layer[layer]].to(z.dtype)
                return out
            return hook
        return [(Z_HOOK.format(layer=layer), make(layer)) for layer in by_layer]
    return direct_logit_attribution(model, task, batch_size=batch_size,
                                    fwd_hooks=knockout if ablate else None).heads
