"""Role ablations: what breaks when a role's heads are removed, against random heads of the same
layers (METHODS.md section 10; Olsson et al. 2022, arXiv 2209.11895; Wang et al. 2022, arXiv
2211.00593).

One role is tested in one batched pass per prompt batch: the prompts are run once up to the first
layer any tested head is in (:func:`circuits.cache.capture`), then the remaining blocks run on
``C`` copies of the batch (rows ``c * batch + b``, :func:`circuits.cache.run_blocks`), copy ``c``
with head set ``c`` edited: copy 0 none (the unablated model), copy 1 the role's heads, then the
control draws (:mod:`atlas.controls`), then each top head alone. Edits:

* ``mean`` ablation: the head's ``hook_z`` ``[batch, pos, head_index, d_head]`` is replaced by its
  mean at that position (:class:`circuits.discovery.AblationMeans`): over the corrupted prompts of
  the same template and length for a circuit task (as the circuits' faithfulness does), else over
  the evaluated prompts themselves (:func:`position_means`: position ``p`` averaged over every
  prompt that has a token there, so position 0 keeps its value exactly);
* ``redistribute``: the head's attention to key 0 is removed and each query row renormalised over
  the other keys (``hook_pattern``; :func:`workbench.interventions.edits.mask_pattern`, the
  ``mask_keys`` operation with ``positions=[0]``); the first query row, which can only see key 0,
  is unchanged.

The metrics (:class:`Behaviour`): the mean next-token loss (nats) on chosen target tokens or the
logit difference ``logit(answer) - logit(distractor)`` at the last real token, and optionally, in
the same pass, the attention a set of heads puts on the induction pattern (``match:1``,
:mod:`probes.head_types`). The effect of a head set is, per prompt, the edited copy's metric minus
copy 0's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from circuits.cache import Z_HOOK, capture, run_blocks
from circuits.discovery import AblationMeans, GroupKey
from workbench.heads import Head
from workbench.interventions.edits import mask_pattern
from workbench.tokens import Batch

PATTERN_HOOK = "blocks.{layer}.attn.hook_pattern"  # [batch, head_index, query_pos, key_pos]
ABLATIONS = ("mean", "redistribute")


@dataclass
class Behaviour:
    """A behaviour metric on a prompt set, ready to run.

    Attributes:
        name: the metric's name in the records (``repeated_loss``, ``ioi_logit_diff``, ...).
        unit: its unit (``nats``, ``logits``, ``fraction of attention``).
        batches: the prompt batches; ``index[i]`` the prompts' positions in the set;
            ``keys[i]`` their ablation-mean group keys (``None``: by length alone).
        means: the ablation means (``mean`` ablation only).
        targets: per batch ``[batch, pos]`` bool, True at the positions whose next-token loss
            counts (loss metrics); ``None`` for a logit difference.
        answer, distractor: per batch ``[batch]`` token ids (logit-difference metrics).
        pattern_heads: heads whose induction-pattern attention is measured too, in the same
            pass (metric ``induction_attention``), with ``detection[i]`` ``[batch, query, key]``
            the pattern.
    """

    name: str
    unit: str
    batches: list[Batch]
    index: list[np.ndarray]
    n_prompts: int
    keys: list[Sequence[GroupKey] | None]
    means: AblationMeans | None = None
    targets: list[Tensor] | None = None
    answer: list[Tensor] | None = None
    distractor: list[Tensor] | None = None
    pattern_heads: list[Head] = field(default_factory=list)
    detection: list[Tensor] | None = None
    task: object = None  # the circuits Task of a task behaviour (its heads' DLA)


def position_means(model, batches: Sequence[Batch]) -> AblationMeans:
    """Mean ``hook_z`` per position over the prompts of ``batches`` that have a token there,
    as :class:`AblationMeans` keyed by length alone (``by_length[n]``: per layer ``[n, head_index,
    d_head]``, the first ``n`` positions' means)."""
    sums: list[Tensor] | None = None
    counts: Tensor | None = None
    width = max(b.seq_len for b in batches)
    for batch in batches:
        z = capture(model, batch, block_inputs=False).z
        valid = batch.valid().to(z[0].device)
        if sums is None:
            sums = [torch.zeros(width, *zl.shape[2:], dtype=torch.float64, device=zl.device)
                    for zl in z]
            counts = torch.zeros(width, dtype=torch.float64, device=z[0].device)
        for layer, zl in enumerate(z):
            sums[layer][:batch.seq_len] += (zl.double() * valid[:, :, None, None]).sum(0)
        counts[:batch.seq_len] += valid.double().sum(0)
    assert sums is not None and counts is not None
    means = [s / counts.clamp_min(1)[:, None, None] for s in sums]
    lengths = sorted({int(n) for b in batches for n in b.lengths.tolist()})
    by_length = {n: [m[:n].float() for m in means] for n in lengths}
    return AblationMeans({}, by_length, {})


def head_mask(head_sets: Sequence[Sequence[Head]], n_layers: int, n_heads: int) -> Tensor:
    """``[copies, n_layers, n_heads]`` bool: copy ``c`` edits head ``(l, h)``."""
    mask = torch.zeros(len(head_sets), n_layers, n_heads, dtype=torch.bool)
    for c, heads in enumerate(head_sets):
        for layer, head in heads:
            mask[c, layer, head] = True
    return mask


def _mean_hook(mask: Tensor, mean: Tensor, copies: int) -> Callable:
    """Replace ``hook_z`` of the masked (copy, head) pairs by ``mean`` ``[batch, pos, head,
    d_head]``."""
    where = mask[:, None, None, :, None]  # [copies, 1, 1, head, 1]

    def hook(z, hook):
        view = z.reshape(copies, -1, *z.shape[1:])
        out = torch.where(where.to(z.device), mean[None].to(device=z.device, dtype=z.dtype), view)
        return out.reshape(z.shape)
    return hook


def _redistribute_hook(mask: Tensor, knocked: Tensor, rows: Tensor, copies: int) -> Callable:
    """Remove the masked (copy, head) pairs' attention to key 0 (``hook_pattern``)."""
    where = mask[:, None, :, None, None]  # [copies, 1, head, 1, 1]

    def hook(pattern, hook):
        edited = mask_pattern(pattern, knocked.repeat(copies, 1).to(pattern.device),
                              rows.repeat(copies, 1).to(pattern.device))
        view, new = (p.reshape(copies, -1, *p.shape[1:]) for p in (pattern, edited))
        return torch.where(where.to(pattern.device), new, view).reshape(pattern.shape)
    return hook


def edit_hooks(model, batch: Batch, mask: Tensor, ablation: str, means: AblationMeans | None,
               keys: Sequence[GroupKey] | None) -> list[tuple[str, Callable]]:
    """The bridge forward hooks that edit copy ``c``'s heads ``mask[c]`` on ``batch`` repeated
    ``mask.shape[0]`` times (module docstring)."""
    copies = mask.shape[0]
    hooks = []
    for layer in mask.any(0).any(-1).nonzero().flatten().tolist():
        m = mask[:, layer]
        if ablation == "mean":
            mean = means.batch(layer, batch.lengths.cpu() if keys is None else keys,
                               batch.seq_len)
            hooks.append((Z_HOOK.format(layer=layer), _mean_hook(m, mean, copies)))
        else:
            valid = batch.valid()
            knocked = torch.zeros_like(valid)
            knocked[:, 0] = True
            hooks.append((PATTERN_HOOK.format(layer=layer),
                          _redistribute_hook(m, knocked & valid, valid, copies)))
    return hooks


def _pattern_capture(heads: Sequence[Head], store: dict) -> list[tuple[str, Callable]]:
    from workbench.heads import by_layer

    def keep(layer: int, idx: list[int]):
        def hook(pattern, hook):
            store[layer] = pattern[:, idx].detach()
        return hook
    return [(PATTERN_HOOK.format(layer=layer), keep(layer, idx))
            for layer, idx in by_layer(heads).items()]


def _pattern_metric(beh: Behaviour, i: int, patterns: dict, copies: int) -> Tensor:
    """``[copies, batch]`` mean attention of ``beh.pattern_heads`` on the detection pattern
    (``sum(A * P) / sum(A)`` over the real query rows, as the head-type ``mul`` score)."""
    from workbench.heads import by_layer

    batch = beh.batches[i]
    det = beh.detection[i]  # [batch, q, k]
    rows = batch.lengths.double()
    total = 0.0
    for layer, idx in by_layer(beh.pattern_heads).items():
        a = patterns[layer].double().cpu().reshape(copies, batch.size, len(idx), *det.shape[1:])
        total = total + (a * det[None, :, None]).sum((-1, -2)).sum(-1) / rows[None]
    return total / len(beh.pattern_heads)


def _measure(model, beh: Behaviour, i: int, hidden: Tensor, copies: int) -> Tensor:
    """``[copies, batch]`` metric values of batch ``i`` from the last hidden states."""
    batch = beh.batches[i]
    bridge = model.bridge
    if beh.targets is None:  # logit difference at the last real token
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, batch.last_pos().to(hidden.device).repeat(copies)]
        normed = bridge.ln_final(last[:, None])[:, 0]
        W_U = bridge.unembed.W_U
        a, d = beh.answer[i].repeat(copies), beh.distractor[i].repeat(copies)
        u = (W_U[:, a] - W_U[:, d]).T.to(hidden.device)  # [copies * batch, d_model]
        ld = (normed * u).sum(-1)
        b_U = getattr(bridge.unembed, "b_U", None)
        if b_U is not None:
            ld = ld + (b_U[a] - b_U[d]).to(ld.dtype)
        return ld.reshape(copies, batch.size).double()
    targets = beh.targets[i].to(hidden.device)  # [batch, pos]: predict the next token here
    b_idx, pos = targets.nonzero(as_tuple=True)
    nxt = batch.input_ids.to(hidden.device)[b_idx, pos + 1]
    out = torch.zeros(copies, batch.size, dtype=torch.float64, device=hidden.device)
    n = targets.sum(1).double()
    for c in range(copies):
        h = hidden[c * batch.size:(c + 1) * batch.size][b_idx, pos]
        logp = bridge.unembed(bridge.ln_final(h[None]))[0].float().log_softmax(-1)
        nll = -logp.gather(-1, nxt[:, None])[:, 0].double()
        out[c].index_add_(0, b_idx, nll)
    return out / n[None]


def run_copies(model, beh: Behaviour, head_sets: Sequence[Sequence[Head]], *,
               ablation: str = "mean") -> dict[str, np.ndarray]:
    """``{metric: [copies, n_prompts]}`` for every head set (copy ``c`` edits ``head_sets[c]``;
    module docstring), prompts in the set's order: ``beh.name``, and ``induction_attention``
    when ``beh.pattern_heads`` is set.

    Raises:
        ValueError: an unknown ablation, or ``mean`` without means.
    """
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation {ablation!r} is not one of {ABLATIONS}")
    if ablation == "mean" and beh.means is None:
        raise ValueError("mean ablation needs the behaviour's ablation means")
    info = model.info
    mask = head_mask(head_sets, info.n_layers, info.n_heads)
    copies = len(head_sets)
    edited = mask.any(0).any(-1).nonzero().flatten()
    start = int(edited.min()) if len(edited) else info.n_layers - 1
    if beh.pattern_heads:  # the metric is read inside the model: start no later than its heads
        start = min(start, min(layer for layer, _ in beh.pattern_heads))
    names = [beh.name] + (["induction_attention"] if beh.pattern_heads else [])
    out = {name: np.full((copies, beh.n_prompts), np.nan) for name in names}
    for i, batch in enumerate(beh.batches):
        cache = capture(model, batch, z=False)
        hooks = edit_hooks(model, batch, mask, ablation, beh.means, beh.keys[i])
        patterns: dict = {}
        captures = _pattern_capture(beh.pattern_heads, patterns)
        with torch.inference_mode(), model.bridge.hooks(fwd_hooks=hooks + captures):
            hidden = run_blocks(model, cache, start, copies=copies)
            out[beh.name][:, beh.index[i]] = _measure(model, beh, i, hidden, copies).cpu().numpy()
        if beh.pattern_heads:
            out["induction_attention"][:, beh.index[i]] = \
                _pattern_metric(beh, i, patterns, copies).numpy()
    return out
