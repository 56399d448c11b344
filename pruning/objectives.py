"""What a gate is judged on: the LM loss on natural text or a task's logit difference.

Two objectives (:data:`OBJECTIVES`):

* ``lm``: metric ``lm_loss``, a prompt's mean next-token negative log-likelihood over its real
  tokens (positions ``0..n-2`` predicting ``1..n-1``), in nats; lower is better.
* ``logit_diff``: metric ``logit_diff``, ``logit(answer) - logit(distractor)`` at the prompt's last
  real token (Wang et al., arXiv 2211.00593), in logits; higher is better. Every prompt needs an
  ``answer`` and a ``distractor`` (e.g. ``data/ioi.jsonl``).

Sign conventions: :func:`importance_loss` is the quantity whose gradient defines head importance,
``lm_loss`` or ``-logit_diff`` (importance takes ``|.|``, so the sign does not change it);
:func:`training_loss` is what learned gates minimise, ``lm_loss`` or ``softplus(-logit_diff)``
(the cross-entropy of answer against distractor, bounded below by 0, so gates cannot win by
inflating the logit difference without end); :func:`degradation` is the relative damage of a
pruned model, ``(loss - base) / |base|`` or ``(base - LD) / |base|``, positive when worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.metrics import answer_token_ids
from workbench.prompts import PromptSet
from workbench.tokens import Batch, TokenizedPrompt, make_batches, pad_token_id, \
    tokenize_prompt_set


@dataclass(frozen=True)
class Objective:
    name: str  # lm | logit_diff
    metric: str  # the record metric name
    unit: str
    higher_is_better: bool


OBJECTIVES = {o.name: o for o in (
    Objective("lm", "lm_loss", "nats per token (mean next-token NLL per prompt)", False),
    Objective("logit_diff", "logit_diff", "logits (answer - distractor, last token)", True))}


@dataclass(frozen=True)
class PromptData:
    """A tokenised prompt set for one objective: ``answer``/``distractor`` token ids by prompt id
    (``logit_diff`` only)."""

    objective: Objective
    tokenized: tuple[TokenizedPrompt, ...]
    answer: dict[str, int]
    distractor: dict[str, int]
    pad_id: int

    @property
    def ids(self) -> list[str]:
        return [t.id for t in self.tokenized]

    def subset(self, ids: list[str]) -> "PromptData":
        """The prompts named by ``ids``, in that order."""
        by_id = {t.id: t for t in self.tokenized}
        return PromptData(self.objective, tuple(by_id[i] for i in ids), self.answer,
                          self.distractor, self.pad_id)

    def batches(self, batch_size: int) -> list[Batch]:
        """Right-padded batches grouped by token length (deterministic order)."""
        return make_batches(list(self.tokenized), batch_size, self.pad_id)


def check_objective(name: str) -> Objective:
    """The objective called ``name``.

    Raises:
        InputError: an unknown name.
    """
    if name not in OBJECTIVES:
        raise InputError(f"--objective {name!r}: choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def prepare(model, prompt_set: PromptSet, objective: str, n_prompts: int | None = None
            ) -> PromptData:
    """Tokenise the first ``n_prompts`` prompts (all when None) for ``objective``.

    Raises:
        InputError: an unknown objective, ``n_prompts`` < 1, a prompt with fewer than 2 tokens
            (``lm``), or a prompt without ``answer``/``distractor`` (``logit_diff``).
    """
    obj = check_objective(objective)
    if n_prompts is not None and n_prompts < 1:
        raise InputError(f"--n-prompts must be at least 1, got {n_prompts}")
    chosen = PromptSet(prompt_set.prompts[:n_prompts], prompt_set.files)
    tok = tokenize_prompt_set(chosen, model.tokenizer, prepend_bos=model.info.prepend_bos,
                              n_ctx=model.info.n_ctx, model_name=model.info.name)
    answer, distractor = {}, {}
    if obj.name == "lm":
        short = next((t for t in tok if t.n_tokens < 2), None)
        if short is not None:
            raise InputError(f"{short.prompt.source}: prompt {short.id!r} has {short.n_tokens} "
                             "token; the LM loss needs at least 2")
    else:
        answer = dict(zip([t.id for t in tok], answer_token_ids(model.tokenizer, tok).tolist()))
        distractor = dict(zip([t.id for t in tok],
                              answer_token_ids(model.tokenizer, tok, "distractor").tolist()))
    return PromptData(obj, tuple(tok), answer, distractor, pad_token_id(model.tokenizer))


def metric_values(data: PromptData, logits: Tensor, batch: Batch) -> Tensor:
    """``[batch]`` metric (float32, float64 for a float64 model) of each prompt from ``[batch, pos, vocab]`` logits
    (differentiable; see the module docstring for the two metrics)."""
    if data.objective.name == "lm":
        return lm_loss(logits, batch.input_ids.to(logits.device),
                       batch.attention_mask.to(logits.device))
    rows = torch.arange(batch.size, device=logits.device)
    last = _wide(logits[rows, batch.last_pos().to(logits.device)])
    answer = torch.tensor([data.answer[i] for i in batch.prompt_ids], device=logits.device)
    distractor = torch.tensor([data.distractor[i] for i in batch.prompt_ids],
                              device=logits.device)
    return last[rows, answer] - last[rows, distractor]


def lm_loss(logits: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """``[batch]`` mean next-token NLL (nats) over each prompt's real tokens (float32 at least).

    ``logits`` ``[batch, pos, vocab]``; ``input_ids``, ``attention_mask`` ``[batch, pos]``
    (right padding; a target counts when it is a real token).
    """
    logp = torch.log_softmax(_wide(logits[:, :-1]), -1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    mask = attention_mask[:, 1:].to(nll.dtype)
    return (nll * mask).sum(1) / mask.sum(1)


def _wide(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it already is (finite-difference checks need it)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def importance_loss(data: PromptData, values: Tensor) -> Tensor:
    """The loss whose gate gradient is head importance: ``lm_loss`` or ``-logit_diff``."""
    return values if data.objective.name == "lm" else -values


def training_loss(data: PromptData, values: Tensor) -> Tensor:
    """What learned gates minimise: ``lm_loss`` or ``softplus(-logit_diff)`` (per prompt)."""
    return values if data.objective.name == "lm" else torch.nn.functional.softplus(-values)


def degradation(objective: Objective, base: float, value: float) -> float:
    """Relative damage, positive when worse: ``(value - base) / |base|`` for a loss,
    ``(base - value) / |base|`` for a higher-is-better metric."""
    change = (base - value) if objective.higher_is_better else (value - base)
    return change / abs(base)
