"""Which behaviour tests which role, and the behaviours built from the atlas's prompt files.

One registry, :data:`ROLE_TESTS`: per atlas role (:data:`atlas.roles.ROLES`) the behaviour its
heads' removal should break, the edit, and the source. Circuit roles (rule ``member``) test their
own task's logit difference. Roles without an entry are descriptive (:data:`DESCRIPTIVE`).

Behaviours (:class:`atlas.causal.Behaviour`), on the first ``n`` prompts of each file:

* ``repeated_loss``: mean next-token loss (nats) on the second repeat of the repeated random tokens
  (segment ``second``, its first token excluded: nothing earlier predicts it), Olsson et al. 2022
  (arXiv 2209.11895): induction heads make the second repeat predictable;
* ``induction_attention``: the attention the atlas's induction heads put on the induction pattern
  (``match:1``, mean over their query rows, :mod:`probes.head_types`) on the same prompts;
* ``<task>_logit_diff``: the circuit task's logit difference (answer minus distractor) at the last
  token (Wang et al. 2022, arXiv 2211.00593), with the circuits' ablation means (corrupted prompts
  of the same template and length);
* ``context_logit_diff``: on the counterfactual-context prompts, the logit of the passage's answer
  minus the model's memorised answer (the prompt's ``distractor``); a drop means the model follows
  the passage less; the share of prompts whose preferred answer flips is reported beside it;
* ``natural_loss``: mean next-token loss (nats) over every token of the natural text prompts
  (first ``max_tokens`` tokens).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from atlas.causal import Behaviour, position_means
from workbench.heads import Head
from workbench.tokens import make_batches, pad_token_id, tokenize_prompt_set

NATURAL_TOKENS = 48  # natural prompts are cut to this many tokens (the loss needs no more)


@dataclass(frozen=True)
class RoleTest:
    """How a role is tested: ``behaviour`` (a key of :func:`build_behaviours`, or ``task:<name>``
    for a circuit role), the ``ablation`` (``mean`` / ``redistribute``), what the metric is, the
    source, why this edit; ``secondary``: a second behaviour measured on the same draws."""

    behaviour: str
    ablation: str
    metric: str
    unit: str
    source: str
    reason: str
    secondary: str | None = None


_OLSSON = "Olsson et al. 2022, In-context Learning and Induction Heads (arXiv 2209.11895)"
_WANG = "Wang et al. 2022, Interpretability in the Wild (arXiv 2211.00593)"
_MEAN = "mean ablation (hook_z replaced by its position mean)"

ROLE_TESTS: dict[str, RoleTest] = {
    "induction": RoleTest(
        "repeated_loss", "mean", "loss on the second repeat of random tokens", "nats", _OLSSON,
        "induction heads predict a repeated token from its earlier copy; without them the second "
        "repeat is as hard as the first"),
    "previous_token": RoleTest(
        "repeated_loss", "mean", "loss on the second repeat of random tokens", "nats",
        f"{_OLSSON}; Elhage et al. 2021 (K-composition)",
        "induction heads find the earlier copy through keys that previous-token heads wrote "
        "(K-composition): removing them should break induction", secondary="induction_attention"),
    "duplicate_token": RoleTest(
        "task:ioi", "mean", "IOI logit difference (IO minus S)", "logits", _WANG,
        "duplicate-token heads mark the repeated name S, which the IOI circuit suppresses"),
    "context": RoleTest(
        "context_logit_diff", "mean",
        "counterfactual-context logit difference (passage answer minus memorised answer)",
        "logits", "Head divergence / VHD (arXiv 2412.13949)",
        "context-reading heads carry the passage's answer to the last token"),
    "sink": RoleTest(
        "natural_loss", "redistribute", "loss on natural text", "nats",
        "Xiao et al. 2023 (arXiv 2309.17453); Gu et al. 2025 (arXiv 2410.10781)",
        "a sink head's output is close to constant (the first token's value), so mean ablation "
        "would leave it nearly unchanged by construction; the role claims the head parks its "
        "attention on token 0, so the test removes that attention (renormalised over the other "
        "keys) and measures the loss"),
}
_ENTROPY = ("attention entropy describes how a head spreads its attention and names no behaviour "
            "the heads are needed for")
DESCRIPTIVE = {"low_entropy": _ENTROPY, "high_entropy": _ENTROPY}


def circuit_test(task: str) -> RoleTest:
    """The test of a circuit role (rule ``member``) on its task ``task``."""
    return RoleTest(f"task:{task}", "mean", f"{task} logit difference (answer minus distractor)",
                    "logits", _WANG, "the circuit's heads carry the task; removing them should "
                    "lower the logit difference")


def test_for(role) -> RoleTest | None:
    """The :class:`RoleTest` of an :class:`atlas.roles.Role` (``None``: descriptive)."""
    if role.rule == "member":
        return circuit_test(dict(role.where).get("segment", role.name))
    return ROLE_TESTS.get(role.name)


def _subset(prompt_set, n: int):
    from workbench.prompts import PromptSet

    return PromptSet(prompt_set.prompts[:n], prompt_set.files)


def _batches(model, tokenized, batch_size: int):
    batches = make_batches(tokenized, batch_size, pad_token_id(model.tokenizer))
    order = {t.id: i for i, t in enumerate(tokenized)}
    return batches, [np.array([order[p.id] for p in b.prompts]) for b in batches]


def _tokenize(model, prompt_set):
    return tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos,
                               n_ctx=model.info.n_ctx, model_name=model.info.name)


def repeated_loss(model, path: Path, n: int, batch_size: int) -> Behaviour:
    """The ``repeated_loss`` behaviour (module docstring) on the first ``n`` prompts of ``path``."""
    from workbench.prompts import load_prompt_set

    tokenized = _tokenize(model, _subset(load_prompt_set(path), n))
    batches, index = _batches(model, tokenized, batch_size)
    targets = []
    for b in batches:
        second = b.segment_mask("second")
        t = torch.zeros_like(second)
        for row in range(b.size):
            pos = second[row].nonzero().flatten()
            t[row, pos[0]:pos[-1]] = True  # predicting second-repeat tokens 2..end
        targets.append(t)
    return Behaviour("repeated_loss", "nats", batches, index, len(tokenized),
                     [None] * len(batches), position_means(model, batches), targets=targets)


def induction_attention(base: Behaviour, heads: list[Head]) -> Behaviour:
    """``base`` measuring, in the same pass, the ``induction_attention`` of ``heads``."""
    from probes.head_types import detection_pattern, parse_detector

    det = parse_detector("induction", "atlas")
    detection = [detection_pattern(det, b.input_ids, b.lengths) for b in base.batches]
    return dataclasses.replace(base, pattern_heads=sorted(heads), detection=detection)


def task_logit_diff(model, spec: str, n: int, batch_size: int,
                    n_means: int | None = None) -> Behaviour:
    """A circuit task's logit difference on its first ``n`` prompts, with the circuits' ablation
    means taken over the corrupted twins of its first ``max(n, n_means)`` prompts (the atlas
    passes its circuits' ``--n-prompts``, so the means are the ones the circuits used)."""
    from circuits.discovery import ablation_means, group_keys
    from circuits.tasks import Task, load_task
    from workbench.prompts import PromptSet

    full = load_task(spec, model, n_prompts=max(n, n_means or n))
    means = ablation_means(model, full, batch_size=batch_size)
    task = Task(full.name, PromptSet(full.prompt_set.prompts[:n], full.prompt_set.files),
                full.clean[:n], full.corrupted[:n], full.answer[:n], full.distractor[:n],
                full.pad_id)
    tbs = task.batches(batch_size)
    beh = Behaviour(f"{task.name}_logit_diff", "logits", [tb.clean for tb in tbs],
                    [tb.index for tb in tbs], len(task), [group_keys(task, tb.index) for tb in tbs],
                    means, answer=[tb.answer for tb in tbs],
                    distractor=[tb.distractor for tb in tbs])
    beh.task = task  # for the heads' direct logit attribution
    return beh


def context_logit_diff(model, path: Path, n: int, batch_size: int) -> Behaviour:
    """The ``context_logit_diff`` behaviour (module docstring)."""
    from workbench.metrics import answer_token_ids
    from workbench.prompts import load_prompt_set

    tokenized = _tokenize(model, _subset(load_prompt_set(path), n))
    batches, index = _batches(model, tokenized, batch_size)
    answer = answer_token_ids(model.tokenizer, tokenized, "answer")
    distractor = answer_token_ids(model.tokenizer, tokenized, "distractor")
    return Behaviour("context_logit_diff", "logits", batches, index, len(tokenized),
                     [None] * len(batches), position_means(model, batches),
                     answer=[answer[i] for i in index], distractor=[distractor[i] for i in index])


def natural_loss(model, path: Path, n: int, batch_size: int,
                 max_tokens: int = NATURAL_TOKENS) -> Behaviour:
    """The ``natural_loss`` behaviour (module docstring)."""
    from workbench.prompts import load_prompt_set

    tokenized = _tokenize(model, _subset(load_prompt_set(path), n))
    tokenized = [t if t.n_tokens <= max_tokens else dataclasses.replace(
        t, input_ids=t.input_ids[:max_tokens], offsets=t.offsets[:max_tokens]) for t in tokenized]
    batches, index = _batches(model, tokenized, batch_size)
    targets = []
    for b in batches:
        t = b.valid().clone()
        t[torch.arange(b.size), b.last_pos()] = False
        targets.append(t)
    return Behaviour("natural_loss", "nats", batches, index, len(tokenized),
                     [None] * len(batches), None, targets=targets)
