"""Learned head gates: hard-concrete L0 gates trained with the model frozen (Voita et al., arXiv
1905.09418; Louizos et al., arXiv 1712.01312), exported as a ``scale_head`` intervention spec
(MoH, arXiv 2410.11842: a token-independent weighted sum over heads).

Training minimises, over the gates' ``log_alpha`` ``[n_layers, n_heads]`` only,

    E_u[ training_loss(model with gates g(u, log_alpha)) ] + lambda * sum_h P(g_h != 0)

with one hard-concrete draw per head per step shared by the step's prompts, Adam, and
:func:`pruning.objectives.training_loss` (LM loss in nats, or ``softplus(-logit_diff)``); lambda
multiplies the expected *number* of open gates (not a fraction). Every model weight has
``requires_grad`` off during training and keeps its value. ``log_alpha`` starts at ``init``
(default 3: every deterministic gate 1, P(open) = 0.99).

Train and evaluation prompts are disjoint (:func:`split_prompts`); evaluation uses the
deterministic gates (:meth:`pruning.gates.HardConcrete.deterministic`) on the held-out prompts. A
head counts as open when its deterministic gate is > 0. The learned gates become a spec of
``scale_head`` operations (:func:`gates_spec`) that ``workbench intervene --spec`` loads.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from pruning.gates import HardConcrete, gate_hooks
from pruning.objectives import PromptData, metric_values, training_loss
from pruning.prune import evaluate
from workbench.errors import InputError
from workbench.heads import format_head
from workbench.tokens import make_batches


def split_prompts(ids: list[str], eval_fraction: float = 0.5, seed: int = 0
                  ) -> tuple[list[str], list[str]]:
    """A seeded split of prompt ids into disjoint ``(train, eval)`` lists (file order kept).

    Raises:
        InputError: duplicate ids, ``eval_fraction`` outside (0, 1), or a split with an empty side.
    """
    if len(set(ids)) != len(ids):
        raise InputError("prompt ids must be unique to split them into train and eval")
    if not 0 < eval_fraction < 1:
        raise InputError(f"--eval-fraction must be in (0, 1), got {eval_fraction}")
    n_eval = int(round(eval_fraction * len(ids)))
    if n_eval < 1 or n_eval >= len(ids):
        raise InputError(f"{len(ids)} prompts cannot be split with --eval-fraction "
                         f"{eval_fraction}: both train and eval need at least one prompt")
    held = set(np.random.default_rng(seed).permutation(len(ids))[:n_eval].tolist())
    train = [p for i, p in enumerate(ids) if i not in held]
    held_out = [p for i, p in enumerate(ids) if i in held]
    return train, held_out


@contextlib.contextmanager
def frozen(model) -> Iterator[None]:
    """Every bridge parameter with ``requires_grad`` off inside; the flags are restored after."""
    params = list(model.bridge.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


@dataclass(frozen=True)
class GateTraining:
    """Training settings; ``lam`` multiplies the expected number of open gates."""

    lam: float
    steps: int = 200
    lr: float = 0.05
    batch_size: int = 8
    init: float = 3.0
    seed: int = 0
    distribution: HardConcrete = HardConcrete()

    def __post_init__(self):
        for name, value, least in (("--steps", self.steps, 1), ("--batch-size",
                                                                 self.batch_size, 1)):
            if value < least:
                raise InputError(f"{name} must be at least {least}, got {value}")
        if self.lam < 0 or self.lr <= 0:
            raise InputError(f"--lambda must be >= 0 and --lr > 0, got {self.lam}, {self.lr}")


@dataclass
class LearnedGates:
    """A trained gate set. ``gates`` ``[n_layers, n_heads]`` deterministic values in [0, 1];
    ``history`` rows ``(step, training loss, expected open gates)``."""

    lam: float
    log_alpha: np.ndarray
    gates: np.ndarray
    expected_open: float
    train_loss: float  # mean training loss of the last 10% of steps
    seconds: float
    history: list[tuple[int, float, float]] = field(default_factory=list)
    eval_values: np.ndarray | None = None  # [n_eval] metric with the deterministic gates

    @property
    def open_gates(self) -> int:
        return int((self.gates > 0).sum())


def train_gates(model, train: PromptData, config: GateTraining,
                progress: Callable[[int], None] | None = None) -> LearnedGates:
    """Train ``log_alpha`` on ``train`` (module docstring); ``progress(1)`` after every step."""
    info, hc = model.info, config.distribution
    gen = torch.Generator().manual_seed(config.seed)
    log_alpha = torch.full((info.n_layers, info.n_heads), float(config.init), requires_grad=True)
    optim = torch.optim.Adam([log_alpha], lr=config.lr)
    prompts, history = list(train.tokenized), []
    start = time.perf_counter()
    with frozen(model), torch.enable_grad():
        for step in range(config.steps):
            pick = torch.randperm(len(prompts), generator=gen)[:config.batch_size].tolist()
            batch = make_batches([prompts[i] for i in pick], len(pick), train.pad_id)[0]
            batch = batch.to(model.device)
            gates = hc.sample(log_alpha, torch.rand(log_alpha.shape, generator=gen))
            with model.bridge.hooks(fwd_hooks=gate_hooks(gates)):
                logits = model.bridge(batch.input_ids, **batch.model_kwargs())
            loss = training_loss(train, metric_values(train, logits, batch)).mean()
            penalty = hc.expected_open(log_alpha)
            optim.zero_grad()
            (loss + config.lam * penalty).backward()
            optim.step()
            history.append((step, float(loss.detach()), float(penalty.detach())))
            if progress:
                progress(1)
    tail = max(1, config.steps // 10)
    with torch.no_grad():
        det = hc.deterministic(log_alpha).numpy().astype(np.float64)
        expected = float(hc.expected_open(log_alpha))
    return LearnedGates(config.lam, log_alpha.detach().numpy().astype(np.float64), det, expected,
                        float(np.mean([h[1] for h in history[-tail:]])),
                        time.perf_counter() - start, history)


def evaluate_gates(model, held_out: PromptData, learned: LearnedGates,
                   batch_size: int = 8) -> np.ndarray:
    """``[n_eval]`` metric on the held-out prompts with the deterministic gates (stored on
    ``learned.eval_values`` too)."""
    learned.eval_values = evaluate(model, held_out, torch.from_numpy(learned.gates).float(),
                                   None, batch_size)
    return learned.eval_values


def gates_spec(gates: np.ndarray, point: str = "hook_z") -> list[dict]:
    """The gates as ``scale_head`` operations, one per distinct gate value below 1 (heads whose
    gate is exactly 1 are left out: scaling by 1 is a no-op); all gates 1 -> one no-op operation
    on every head. ``alpha`` is the gate as a Python float (float32 values are exact in it).

    ``gates`` ``[n_layers, n_heads]``, values in [0, 1].
    """
    groups: dict[float, list[str]] = {}
    n_heads = gates.shape[1]
    for flat in range(gates.size):
        value = float(np.float32(gates.flat[flat]))
        if value != 1.0:
            groups.setdefault(value, []).append(format_head(divmod(flat, n_heads)))
    if not groups:
        return [{"op": "scale_head", "heads": {"select": "all"}, "alpha": 1.0, "point": point}]
    return [{"op": "scale_head", "heads": heads, "alpha": alpha, "point": point}
            for alpha, heads in sorted(groups.items())]
