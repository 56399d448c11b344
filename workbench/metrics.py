"""Task metrics at the last real token: logit difference, accuracy, KL divergence.

Logit difference (Wang et al. 2022, arXiv 2211.00593): ``LD = logit(answer) - logit(distractor)`` at
the prompt's last real token, in logits; positive means the model prefers the answer. The answer
and distractor are the *first* token of the prompt's ``answer`` / ``distractor`` continuation
(``" Mary"`` -> the token for " Mary"), tokenised without special tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import InputError


def answer_token_ids(tokenizer, prompts: Sequence, field: str = "answer") -> Tensor:
    """``[n]`` int64: the first token of each prompt's ``answer`` (or ``distractor``) continuation.

    Raises:
        InputError: a prompt has no such field, or it tokenises to nothing.
    """
    ids = []
    for item in prompts:
        prompt = getattr(item, "prompt", item)  # TokenizedPrompt or Prompt
        text = getattr(prompt, field)
        if not text:
            raise InputError(f"{prompt.source}: prompt {prompt.id!r} has no {field!r}; the metric "
                             "needs answer and distractor continuations")
        toks = tokenizer(text, add_special_tokens=False).input_ids
        if not toks:
            raise InputError(f"{prompt.source}: prompt {prompt.id!r}: {field} {text!r} has no tokens")
        ids.append(toks[0])
    return torch.tensor(ids, dtype=torch.long)


def last_token_logits(logits: Float[Tensor, "batch pos vocab"], last_pos: Int[Tensor, " batch"]
                      ) -> Float[Tensor, "batch vocab"]:
    """The logits at each prompt's last real token (right padding)."""
    return logits[torch.arange(logits.shape[0], device=logits.device), last_pos.to(logits.device)]


def logit_diff(last_logits: Float[Tensor, "batch vocab"], answer: Int[Tensor, " batch"],
               distractor: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """``logit[answer] - logit[distractor]`` per prompt, in logits (fp32)."""
    last = last_logits.float()
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, answer.to(last.device)] - last[rows, distractor.to(last.device)]


def accuracy(diff: Float[Tensor, " batch"]) -> float:
    """Fraction of prompts where the answer beats the distractor (``LD > 0``)."""
    return float((diff > 0).float().mean())


def normalised_recovery(patched: Tensor | float, clean: Tensor | float,
                        corrupted: Tensor | float) -> Tensor | float:
    """``(LD_patched - LD_corrupted) / (LD_clean - LD_corrupted)``: 0 = corrupted, 1 = clean."""
    return (patched - corrupted) / (clean - corrupted)


def kl_divergence(ref_logits: Float[Tensor, "batch vocab"], new_logits: Float[Tensor, "batch vocab"]
                  ) -> Float[Tensor, " batch"]:
    """``KL(p_ref || p_new)`` of the next-token distributions, in nats, per prompt (fp32)."""
    ref = torch.log_softmax(ref_logits.float(), -1)
    new = torch.log_softmax(new_logits.float(), -1)
    return (ref.exp() * (ref - new)).sum(-1)
