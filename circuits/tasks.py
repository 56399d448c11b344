"""Tasks: prompt sets with an answer, a distractor and a corrupted twin of every prompt.

A task's metric is the logit difference ``LD = logit(answer) - logit(distractor)`` at the prompt's
last real token (:mod:`workbench.metrics`; Wang et al. 2022, arXiv 2211.00593), on the clean prompt
(``text``) and on the corrupted one (``corrupted_text``), always with the clean prompt's answer and
distractor tokens. Patching swaps activations between the two at equal token positions, so every
clean/corrupted pair must have the same number of tokens.

Shipped tasks (:data:`TASKS`, files in ``data/``): ``ioi``, ``colored_objects``, ``induction``; any
JSONL prompt file with those fields is a task too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.metrics import accuracy, answer_token_ids, logit_diff
from workbench.prompts import Prompt, PromptSet, load_prompt_set
from workbench.tokens import Batch, TokenizedPrompt, make_batches, tokenize_prompt, \
    tokenize_prompt_set

DATA = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class TaskSpec:
    name: str
    file: str  # under data/
    description: str


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in [
    TaskSpec("ioi", "ioi.jsonl", "indirect object identification (Wang et al., arXiv "
             "2211.00593): 15 templates, BABA/ABBA, p_ABC corruption"),
    TaskSpec("colored_objects", "colored_objects.jsonl", "Colored Objects (Merullo et al., arXiv "
             "2310.08744), one-shot, 3 objects; corruption asks about another listed object"),
    TaskSpec("induction", "induction.jsonl", "copy a repeated sequence of ten nouns; corruption "
             "replaces the first occurrence"),
]}


@dataclass(frozen=True)
class TaskBatch:
    """Clean and corrupted prompts of one batch, padded alike (same order, same width).

    ``index`` holds each row's position in the task's prompt order; ``answer``/``distractor`` are
    ``[batch]`` token ids.
    """

    index: np.ndarray
    clean: Batch
    corrupted: Batch
    answer: Tensor
    distractor: Tensor

    def logit_diff(self, last_logits: Tensor, copies: int = 1) -> Tensor:
        """``[copies * batch]`` LD of last-token logits (rows ``g * batch + b``)."""
        return logit_diff(last_logits, self.answer.repeat(copies), self.distractor.repeat(copies))


@dataclass(frozen=True)
class Task:
    """A tokenised task. ``clean[i]`` and ``corrupted[i]`` have equal token lengths."""

    name: str
    prompt_set: PromptSet
    clean: list[TokenizedPrompt]
    corrupted: list[TokenizedPrompt]
    answer: Tensor  # [n] int64
    distractor: Tensor  # [n] int64
    pad_id: int

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def prompt_ids(self) -> list[str]:
        return [t.id for t in self.clean]

    def batches(self, batch_size: int) -> list[TaskBatch]:
        """Batches grouped by token length (stable, deterministic), clean and corrupted alike."""
        order = sorted(range(len(self)), key=lambda i: self.clean[i].n_tokens)
        clean = make_batches([self.clean[i] for i in order], batch_size, self.pad_id,
                             sort_by_length=False)
        corrupted = make_batches([self.corrupted[i] for i in order], batch_size, self.pad_id,
                                 sort_by_length=False)
        out, start = [], 0
        for c, x in zip(clean, corrupted):
            index = np.asarray(order[start:start + c.size])
            start += c.size
            out.append(TaskBatch(index, c, x, self.answer[index], self.distractor[index]))
        return out


def resolve_task(spec: str) -> tuple[str, Path]:
    """A registry name or a JSONL path -> (task name, file).

    Raises:
        InputError: neither a known task nor an existing file.
    """
    if spec in TASKS:
        return spec, DATA / TASKS[spec].file
    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        return path.stem, path
    raise InputError(f"task {spec!r} is neither a shipped task ({', '.join(TASKS)}) nor a JSONL "
                     "prompt file")


def load_task(spec: str, model, *, n_prompts: int | None = None) -> Task:
    """Load, check and tokenise a task for ``model`` (its first ``n_prompts`` prompts).

    Raises:
        InputError: an unknown task, a prompt without ``answer``, ``distractor`` or
            ``corrupted_text``, an answer and distractor that start with the same token, or a
            corrupted prompt whose token length differs from the clean one (named by id).
    """
    name, path = resolve_task(spec)
    prompt_set = load_prompt_set(path)
    if n_prompts is not None:
        if n_prompts < 1:
            raise InputError(f"--n-prompts must be at least 1, got {n_prompts}")
        prompt_set = PromptSet(prompt_set.prompts[:n_prompts], prompt_set.files)
    for prompt in prompt_set.prompts:
        for field in ("answer", "distractor", "corrupted_text"):
            if not getattr(prompt, field):
                raise InputError(f"{prompt.source}: prompt {prompt.id!r} has no {field!r}; a task "
                                 "needs answer, distractor and corrupted_text")
    tok, bos = model.tokenizer, model.info.prepend_bos
    clean = tokenize_prompt_set(prompt_set, tok, prepend_bos=bos, n_ctx=model.info.n_ctx,
                                model_name=model.info.name)
    corrupted = [tokenize_prompt(Prompt(p.id, p.corrupted_text, source=p.source), tok,
                                 prepend_bos=bos) for p in prompt_set.prompts]
    check_equal_lengths(clean, corrupted)
    answer = answer_token_ids(tok, clean, "answer")
    distractor = answer_token_ids(tok, clean, "distractor")
    same = (answer == distractor).nonzero().flatten().tolist()
    if same:
        p = clean[same[0]].prompt
        raise InputError(f"{p.source}: prompt {p.id!r}: answer {p.answer!r} and distractor "
                         f"{p.distractor!r} start with the same token; the logit difference is 0")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    return Task(name, prompt_set, clean, corrupted, answer, distractor, int(pad))


def check_equal_lengths(clean: list[TokenizedPrompt], corrupted: list[TokenizedPrompt]) -> None:
    """Raise :class:`InputError` naming the first pair whose token lengths differ."""
    for c, x in zip(clean, corrupted):
        if c.n_tokens != x.n_tokens:
            raise InputError(f"{c.prompt.source}: prompt {c.id!r}: corrupted_text has "
                             f"{x.n_tokens} tokens, text has {c.n_tokens}; patching needs equal "
                             "lengths")


@dataclass(frozen=True)
class TaskMetrics:
    """Per-prompt logit differences (logits) on the clean and corrupted prompts, in task order."""

    clean: np.ndarray
    corrupted: np.ndarray

    @property
    def clean_accuracy(self) -> float:
        return accuracy(torch.from_numpy(self.clean))

    @property
    def corrupted_accuracy(self) -> float:
        return accuracy(torch.from_numpy(self.corrupted))


def task_metrics(model, task: Task, *, batch_size: int = 16) -> TaskMetrics:
    """Clean and corrupted LD of every prompt (two plain forwards per batch)."""
    from workbench.forward import last_logits

    clean, corrupted = np.zeros(len(task)), np.zeros(len(task))
    for tb in task.batches(batch_size):
        clean[tb.index] = tb.logit_diff(last_logits(model, tb.clean)).cpu().numpy()
        corrupted[tb.index] = tb.logit_diff(last_logits(model, tb.corrupted)).cpu().numpy()
    return TaskMetrics(clean, corrupted)
