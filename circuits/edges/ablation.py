"""Metrics and ablations for edge-level circuits.

Metrics (per prompt, at the last real token; MIB, Mueller et al. 2025, arXiv 2504.13151):

* ``logit_diff``: ``logit(answer) - logit(distractor)``, in logits;
* ``prob``: the probability of the answer token (softmax over the vocabulary);
* ``kl``: ``KL(p_clean || p)`` in nats, the divergence from the clean run's next-token distribution
  (0 for the full model). Its gradient vanishes at the clean run, so plain EAP cannot score with it
  (use EAP-IG).

Ablations (the value an edge outside the circuit carries; the sender's ablated output):

* ``corrupted``: its output on the prompt's corrupted twin (activation patching; the default);
* ``mean``: its mean output, per position, over the corrupted prompts of the same template
  (``meta.template``; prompts without one are grouped by token length);
* ``resample``: its output on the corrupted twin of another prompt of the same template (the next
  one in task order, cyclically; itself when alone);
* ``zero``: 0.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from workbench.errors import InputError

METRICS = ("logit_diff", "prob", "kl")
ABLATIONS = ("corrupted", "mean", "resample", "zero")
UNITS = {"logit_diff": "logits", "prob": "probability", "kl": "nats"}


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"--metric {metric!r} is not one of {', '.join(METRICS)}")


def check_ablation(ablation: str) -> None:
    if ablation not in ABLATIONS:
        raise InputError(f"--ablation {ablation!r} is not one of {', '.join(ABLATIONS)}")


def metric_values(metric: str, logits: Tensor, answer: Tensor, distractor: Tensor,
                  clean_logprobs: Tensor | None = None) -> Tensor:
    """``[batch]`` metric of last-token ``logits`` ``[batch, vocab]`` (float64 stays float64).

    Raises:
        InputError: an unknown metric; ``kl`` without ``clean_logprobs``.
    """
    check_metric(metric)
    rows = torch.arange(logits.shape[0], device=logits.device)
    x = logits if logits.dtype == torch.float64 else logits.float()
    if metric == "logit_diff":
        return x[rows, answer.to(x.device)] - x[rows, distractor.to(x.device)]
    logprobs = torch.log_softmax(x, dim=-1)
    if metric == "prob":
        return logprobs[rows, answer.to(x.device)].exp()
    if clean_logprobs is None:
        raise InputError("metric 'kl' needs the clean run's log-probabilities")
    ref = clean_logprobs.to(x.dtype)
    return (ref.exp() * (ref - logprobs)).sum(-1)


def template_groups(task) -> list[list[int]]:
    """Prompt indices grouped by ``(meta.template, token length)`` (token length alone without a
    template), each group in task order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (tok, prompt) in enumerate(zip(task.clean, task.prompt_set.prompts)):
        meta = prompt.meta or {}
        groups[(str(meta.get("template")), tok.n_tokens)].append(i)
    return list(groups.values())


class AblationSource:
    """Ablated sender outputs of a task's prompts, ``[n_senders, pos, d_model]`` per prompt.

    ``corrupted`` and ``zero`` are computed per batch on demand (``cache=True``: ``corrupted``
    batches are kept after their first use, for callers that patch the same batches many times,
    e.g. the faithfulness search); ``mean`` and ``resample`` run the corrupted prompts once up
    front and keep every prompt's sender outputs (float32, CPU-sized: ``n_prompts x pos x
    n_senders x d_model``).
    """

    def __init__(self, gm, task, ablation: str, batch_size: int, *, cache: bool = False):
        check_ablation(ablation)
        self.gm, self.task, self.ablation = gm, task, ablation
        self.cache: dict[tuple, Tensor] | None = {} if cache else None
        self.per_prompt: dict[int, Tensor] = {}
        if ablation in ("mean", "resample"):
            outs = {}
            for tb in task.batches(batch_size):
                with torch.no_grad():
                    run = gm.sender_outputs(gm.embed(tb.corrupted.input_ids))
                for row, i in enumerate(tb.index):
                    outs[int(i)] = run[row, :, :task.clean[int(i)].n_tokens].clone()
            for group in template_groups(task):
                if ablation == "mean":
                    mean = torch.stack([outs[i] for i in group]).mean(0)
                    self.per_prompt.update({i: mean for i in group})
                else:
                    self.per_prompt.update({i: outs[group[(k + 1) % len(group)]]
                                            for k, i in enumerate(group)})

    def batch(self, tb, dtype: torch.dtype | None = None) -> Tensor:
        """``[batch, n_senders, pos, d_model]`` ablated outputs of a task batch (padding: 0)."""
        gm = self.gm
        if self.ablation == "corrupted":
            key = tuple(int(i) for i in tb.index)
            if self.cache is not None and key in self.cache:
                out = self.cache[key]
            else:
                with torch.no_grad():
                    out = gm.sender_outputs(gm.embed(tb.corrupted.input_ids))
                if self.cache is not None:
                    self.cache[key] = out
            return out if dtype is None else out.to(dtype)
        b, p = tb.clean.input_ids.shape
        d = gm.w_u.shape[1]
        dtype = dtype or gm.w_u.dtype
        out = torch.zeros(b, gm.graph.n_senders, p, d, dtype=dtype, device=gm.device)
        if self.ablation == "zero":
            return out
        for row, i in enumerate(tb.index):
            value = self.per_prompt[int(i)]
            out[row, :, :value.shape[1]] = value.to(dtype)
        return out
