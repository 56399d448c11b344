"""Circuit discovery from head scores, faithfulness under mean ablation, circuits as graphs.

* :func:`select_heads`: top-k, top-percent or threshold on per-head scores (by magnitude by
  default, so heads that hurt the task, like IOI's negative name movers, count too).
* :func:`faithfulness`: run the clean prompts with every head outside the circuit mean-ablated
  (its ``z`` replaced by the mean over the *corrupted* prompts of the same template and length,
  per position; :class:`AblationMeans`) and compare the logit
  difference with the full model's (Wang et al. 2022, arXiv 2211.00593, section 4: F(C) / F(M)).
* :func:`circuit_graph`: a ``networkx.DiGraph`` with heads as nodes, and edges from path patching.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from circuits.cache import Z_HOOK, capture
from circuits.tasks import Task
from workbench.errors import InputError, WorkbenchError
from workbench.forward import last_logits
from workbench.heads import Head, all_heads, format_head
from workbench.stats import bootstrap_interval

SELECTIONS = ("top_k", "top_percent", "threshold", "faithfulness")
MAX_TOP_K = 10 ** 6  # more heads than any model has
EDGE_WEIGHT = ("path-patching score of the sender through this receiver alone (fraction of the "
               "clean - corrupted gap)")


@dataclass(frozen=True)
class Selection:
    """How heads are picked from scores: ``top_k`` (a count, 1 to :data:`MAX_TOP_K`),
    ``top_percent`` (of all heads, rounded up; in (0, 100]), ``threshold`` (score magnitude at
    least ``value``) or ``faithfulness`` (the smallest prefix of the ranking whose normalised
    faithfulness reaches ``value`` in (0, 1], then refined: :mod:`circuits.search`; chosen by the
    run, not by :func:`select_heads`). A count or share of 0 would select an empty circuit and is
    refused."""

    method: Literal["top_k", "top_percent", "threshold", "faithfulness"]
    value: float
    absolute: bool = True  # rank by |score|

    def __post_init__(self):
        if self.method not in SELECTIONS:
            raise InputError(f"selection {self.method!r} is not one of {', '.join(SELECTIONS)}")
        value = self.value
        bad = not np.isfinite(value) or value < 0 or {
            "top_k": value < 1 or value > MAX_TOP_K or value != int(value),
            "top_percent": value <= 0 or value > 100,
            "threshold": False,
            "faithfulness": value <= 0 or value > 1}[self.method]
        if bad:
            raise InputError(f"selection {self.method}={value:g} is out of range (top_k: a whole "
                             f"number from 1 to {MAX_TOP_K}; top_percent: above 0, at most 100; "
                             "threshold: a finite number >= 0; faithfulness: above 0, at most 1)")

    @property
    def by_faithfulness(self) -> bool:
        """The circuit is sized by its faithfulness (chosen by the run, not from scores)."""
        return self.method == "faithfulness"

    @classmethod
    def parse(cls, text: str) -> "Selection":
        """``"top_k=10"``, ``"top_percent=2"``, ``"threshold=0.05"``, ``"faithfulness=0.8"``."""
        name, sep, value = text.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or number is None:
            raise InputError(f"selection {text!r} is not method=value (top_k=10, top_percent=2, "
                             "threshold=0.05, faithfulness=0.8)")
        return cls(name.strip(), number)  # type: ignore[arg-type]

    def __str__(self) -> str:
        value = int(self.value) if self.method == "top_k" else self.value
        return f"{self.method}={value}"


def select_heads(scores: np.ndarray, selection: Selection) -> list[Head]:
    """Heads picked from ``[n_layers, n_heads]`` scores (NaN = not scored, never picked), sorted
    by layer. Ties at the cut are broken by head order (layer, then head).

    Raises:
        InputError: a ``faithfulness`` selection (it needs forwards: :mod:`circuits.search`).
    """
    if selection.by_faithfulness:
        raise InputError(f"selection {selection} sizes the circuit by forwards, not by scores; "
                         "use circuits.search")
    values = np.abs(scores) if selection.absolute else np.asarray(scores, float)
    flat = np.where(np.isnan(values), -np.inf, values).ravel()
    n_heads = scores.shape[1]
    if selection.method == "threshold":
        picked = np.flatnonzero(flat >= selection.value)
    else:
        k = int(selection.value) if selection.method == "top_k" else \
            int(np.ceil(selection.value / 100 * flat.size))
        k = min(k, int(np.isfinite(flat).sum()))
        picked = np.argsort(-flat, kind="stable")[:k]
    return sorted((int(i // n_heads), int(i % n_heads)) for i in picked)


GroupKey = tuple[Any, int]  # (meta.template or None, token length)
MIN_GROUP = 5  # fewer corrupted prompts than this in a group: a warning (noisy position means)


def group_key(tok) -> GroupKey:
    """``(meta["template"], n_tokens)`` of a tokenised prompt, ``(None, n_tokens)`` without one."""
    return tok.prompt.meta.get("template"), tok.n_tokens


def group_keys(task: Task, index) -> list[GroupKey]:
    """The group keys of the task's prompts ``index`` (read from the clean prompts' ``meta``)."""
    return [group_key(task.clean[int(i)]) for i in index]


@dataclass
class AblationMeans:
    """Mean ``z`` over the corrupted prompts, position by position, per group of prompts that share
    a template and a token length: ``by_group[(template, n)]`` is per layer ``[n, head_index,
    d_head]``. The template is the prompt's ``meta.template`` (``None`` when absent: prompts are
    then grouped by length alone, which mixes templates of equal length, as in IOI where the
    15-token prompts come from several templates). ``by_length[n]``: all prompts of length ``n``
    (the fallback for a group the means do not have); ``counts[key]``: prompts per group."""

    by_group: dict[GroupKey, list[Tensor]]
    by_length: dict[int, list[Tensor]]
    counts: dict[GroupKey, int]

    def batch(self, layer: int, keys: Sequence[GroupKey] | Tensor, seq_len: int) -> Tensor:
        """``[batch, seq_len, head_index, d_head]`` means for prompts with these group keys (or a
        ``[batch]`` tensor of lengths: means by length alone), zeros at padding.

        Raises:
            WorkbenchError: no corrupted prompt of that length was averaged.
        """
        if isinstance(keys, Tensor):
            keys = [(None, n) for n in keys.tolist()]
        rows = []
        for key in keys:
            n = key[1]
            per_layer = self.by_group.get(key) or self.by_length.get(n)
            if per_layer is None:
                raise WorkbenchError(f"ablation means: no corrupted prompt of {n} tokens was "
                                     "averaged; use more --mean-prompts")
            rows.append(torch.nn.functional.pad(per_layer[layer], (0, 0, 0, 0, 0, seq_len - n)))
        return torch.stack(rows)


def ablation_means(model, task: Task, *, batch_size: int = 16,
                   progress: Callable[[int], None] | None = None) -> AblationMeans:
    """One pass over the corrupted prompts, averaging ``hook_z`` per (template, length) group and
    position (:class:`AblationMeans`); ``progress(1)`` after each batch. Warns (``UserWarning``)
    when a group has fewer than :data:`MIN_GROUP` prompts."""
    sums: dict[GroupKey, list[Tensor]] = {}
    counts: dict[GroupKey, int] = {}
    for tb in task.batches(batch_size):
        z = capture(model, tb.corrupted, block_inputs=False).z
        for b, key in enumerate(group_keys(task, tb.index)):
            n = key[1]
            acc = sums.setdefault(key, [torch.zeros_like(z[0][b, :n]) for _ in z])
            for layer, z_layer in enumerate(z):
                acc[layer] += z_layer[b, :n]
            counts[key] = counts.get(key, 0) + 1
        if progress:
            progress(1)
    small = [f"template {t} ({n} tokens) has {c} corrupted prompts"
             for (t, n), c in counts.items() if t is not None and c < MIN_GROUP]
    if small:
        warnings.warn(f"ablation means: {'; '.join(small)}; their position means are noisy "
                      "(average over more prompts: --mean-prompts)", UserWarning, stacklevel=2)
    by_length: dict[int, list[Tensor]] = {}
    for n in {n for _, n in sums}:
        keys = [k for k in sums if k[1] == n]
        total = sum(counts[k] for k in keys)
        by_length[n] = [sum(sums[k][layer] for k in keys) / total
                        for layer in range(len(sums[keys[0]]))]
    return AblationMeans({k: [s / counts[k] for s in acc] for k, acc in sums.items()}, by_length,
                         counts)


def mean_ablation_hooks(model, means: AblationMeans, ablated: Sequence[Head], batch,
                        keys: Sequence[GroupKey] | None = None):
    """Hooks replacing the ``z`` of ``ablated`` heads by their means for this batch (the prompts'
    group ``keys``; default: by length alone)."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in ablated:
        by_layer.setdefault(layer, []).append(head)

    def make(layer: int, heads: list[int]):
        mean = means.batch(layer, batch.lengths.cpu() if keys is None else keys,
                           batch.seq_len).to(model.device)

        def hook(z, hook):
            out = z.clone()
            out[:, :, heads] = mean[:, :, heads].to(z.dtype)
            return out
        return hook
    return [(Z_HOOK.format(layer=layer), make(layer, heads)) for layer, heads in by_layer.items()]


def circuit_logit_diff(model, task: Task, circuit: Iterable[Head], means: AblationMeans, *,
                       batch_size: int = 16, progress: Callable[[int], None] | None = None
                       ) -> np.ndarray:
    """``[n_prompts]`` clean LD with every head outside ``circuit`` mean-ablated
    (``progress(1)`` after each batch)."""
    keep = set(map(tuple, circuit))
    ablated = [h for h in all_heads(model.info.n_layers, model.info.n_heads) if h not in keep]
    out = np.zeros(len(task))
    for tb in task.batches(batch_size):
        hooks = mean_ablation_hooks(model, means, ablated, tb.clean, group_keys(task, tb.index))
        out[tb.index] = tb.logit_diff(last_logits(model, tb.clean, hooks)).cpu().numpy()
        if progress:
            progress(1)
    return out


@dataclass(frozen=True)
class Faithfulness:
    """Mean logit differences (logits) and the fractions derived from them.

    ``model``: the full model on the clean prompts; ``circuit``: every head outside the circuit
    mean-ablated; ``empty``: every head mean-ablated. ``faithfulness = circuit / model`` (Wang et
    al.'s F(C)/F(M)); ``normalised = (circuit - empty) / (model - empty)``; ``random`` the mean
    faithfulness of random circuits of the same size (NaN when none were drawn), ``random_draws``
    each random circuit's faithfulness (the spread the figures draw as the random-circuit band).
    ``model_ld`` / ``circuit_ld`` / ``empty_ld``: the per-prompt LD ``[n_prompts]`` the means come
    from (for :meth:`interval`).
    """

    model: float
    circuit: float
    empty: float
    circuit_accuracy: float
    random: float = float("nan")
    random_draws: tuple[float, ...] = ()
    model_ld: tuple[float, ...] = ()
    circuit_ld: tuple[float, ...] = ()
    empty_ld: tuple[float, ...] = ()

    @property
    def faithfulness(self) -> float:
        return self.circuit / self.model

    @property
    def normalised(self) -> float:
        return (self.circuit - self.empty) / (self.model - self.empty)

    def interval(self, metric: str, confidence: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval over prompts (resampled with their model, circuit and
        empty LD together; seed 0) of ``"faithfulness"`` or ``"faithfulness_normalised"``; the
        value itself when no per-prompt LD are kept.

        Raises:
            InputError: another metric.
        """
        if metric not in ("faithfulness", "faithfulness_normalised"):
            raise InputError(f"no interval for {metric!r}; faithfulness or "
                             "faithfulness_normalised")
        value = self.faithfulness if metric == "faithfulness" else self.normalised
        if not self.model_ld:
            return value, value
        if metric == "faithfulness":
            return bootstrap_interval([self.circuit_ld, self.model_ld],
                                      lambda c, m, axis: c.mean(axis) / m.mean(axis),
                                      confidence=confidence)
        return bootstrap_interval(
            [self.circuit_ld, self.model_ld, self.empty_ld],
            lambda c, m, e, axis: (c.mean(axis) - e.mean(axis)) / (m.mean(axis) - e.mean(axis)),
            confidence=confidence)


def faithfulness(model, task: Task, circuit: Iterable[Head], *, means: AblationMeans | None = None,
                 n_random: int = 0, seed: int = 0, batch_size: int = 16,
                 progress: Callable[[int], None] | None = None) -> Faithfulness:
    """Faithfulness of ``circuit`` on ``task`` (means from :func:`ablation_means` unless given);
    ``n_random`` random circuits of the same size (seeded) give a baseline. ``progress(1)`` after
    each batch of each of the ``3 + n_random`` passes."""
    circuit = sorted(set(map(tuple, circuit)))
    means = means or ablation_means(model, task, batch_size=batch_size)
    run = dict(batch_size=batch_size, progress=progress)
    full = circuit_logit_diff(model, task, all_heads(model.info.n_layers, model.info.n_heads),
                              means, **run)
    kept = circuit_logit_diff(model, task, circuit, means, **run)
    empty = circuit_logit_diff(model, task, [], means, **run)
    rng = np.random.default_rng(seed)
    heads = all_heads(model.info.n_layers, model.info.n_heads)
    randoms = [circuit_logit_diff(model, task, [heads[i] for i in rng.choice(
        len(heads), len(circuit), replace=False)], means, **run).mean()
               for _ in range(n_random)]
    random = float(np.mean(randoms) / full.mean()) if randoms else float("nan")
    return Faithfulness(float(full.mean()), float(kept.mean()), float(empty.mean()),
                        float((kept > 0).mean()), random,
                        tuple(float(r / full.mean()) for r in randoms),
                        tuple(map(float, full)), tuple(map(float, kept)), tuple(map(float, empty)))


def circuit_graph(heads: Iterable[Head], scores: np.ndarray | None = None,
                  edges: Iterable[tuple[Head | str, Head | str, float]] = ()) -> nx.DiGraph:
    """The circuit as a directed graph: nodes ``"L.H"`` (attributes ``layer``, ``head``,
    ``score``) and ``"logits"``; edges ``(sender, receiver, weight)`` from path patching, the
    weight being the sender's score through that receiver alone (graph attribute
    ``edge_weight`` says so)."""
    graph = nx.DiGraph(edge_weight=EDGE_WEIGHT)
    for layer, head in heads:
        score = float(scores[layer, head]) if scores is not None else None
        graph.add_node(format_head((layer, head)), layer=layer, head=head, score=score)
    for sender, receiver, weight in edges:
        graph.add_edge(*(n if isinstance(n, str) else format_head(n) for n in (sender, receiver)),
                       weight=float(weight))
    return graph
