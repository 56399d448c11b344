"""Many circuits' logit differences under mean ablation, cheaply: the evaluator the faithfulness
search (:mod:`circuits.search`) and the refinement (:mod:`circuits.refine`) share.

A circuit is a set of nodes kept; every other node is mean-ablated exactly as in
:func:`circuits.discovery.circuit_logit_diff` (a head's ``hook_z`` replaced by its mean over the
corrupted prompts of the same template and length, per position: :class:`AblationMeans`; an MLP's
``hook_mlp_out`` likewise, :class:`MlpMeans`). Three things make it cheaper than one
:func:`~circuits.discovery.faithfulness` call per circuit, without changing a number:

* the clean run of each batch is captured once (:func:`circuits.cache.capture`): it gives the
  model's LD, and every circuit's forward starts from the cached input of block 0 and unembeds the
  last real token only (:func:`circuits.cache.forward_from_layer`);
* ``per_forward`` circuits share one forward, the batch stacked once per circuit (rows
  ``g * batch + b``): worth it on a GPU, neutral on a CPU;
* a circuit that differs from a captured *base* circuit only in layers ``>= l`` resumes at block
  ``l`` from the base run's cached block inputs (:meth:`CircuitEvaluator.variants`): the
  refinement's one-node changes cost the layers after the node only.

Cost is counted in *evaluations*: one circuit run over all the task's prompts through every layer
(a resumed run counts the fraction of layers it runs; the clean and the base captures count one
each). Nodes are heads ``(layer, head)`` and MLPs ``(layer, MLP)`` (:data:`MLP`, a head index no
head has).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from circuits.cache import Z_HOOK, capture, check_resume, forward_from_layer
from circuits.discovery import AblationMeans, group_keys
from circuits.tasks import Task
from workbench.heads import Head, all_heads, format_head

MLP = -1  # the "head index" of an MLP node: (layer, MLP)
MLP_HOOK = "blocks.{layer}.hook_mlp_out"  # [batch, pos, d_model]
Node = tuple[int, int]


def is_mlp(node: Node) -> bool:
    return node[1] == MLP


def format_node(node: Node) -> str:
    """A head as :func:`workbench.heads.format_head` writes it; an MLP as ``MLP<layer>``."""
    return f"MLP{node[0]}" if is_mlp(node) else format_head(node)


def all_nodes(n_layers: int, n_heads: int, mlps: bool = False) -> list[Node]:
    """Every head, then (``mlps``) every MLP, in layer order."""
    return all_heads(n_layers, n_heads) + ([(layer, MLP) for layer in range(n_layers)]
                                           if mlps else [])


@dataclass
class MlpMeans:
    """Mean ``hook_mlp_out`` over the corrupted prompts per (template, length) group and position,
    like :class:`AblationMeans` for ``z``: ``by_group[key]`` is per layer ``[n, d_model]``."""

    by_group: dict
    by_length: dict

    def batch(self, layer: int, keys, seq_len: int) -> Tensor:
        rows = []
        for key in keys:
            per_layer = self.by_group.get(key) or self.by_length[key[1]]
            rows.append(torch.nn.functional.pad(per_layer[layer], (0, 0, 0, seq_len - key[1])))
        return torch.stack(rows)


def mlp_means(model, task: Task, *, batch_size: int = 16) -> MlpMeans:
    """One pass over the corrupted prompts averaging every MLP's output per group and position
    (the MLP counterpart of :func:`circuits.discovery.ablation_means`)."""
    n_layers = model.info.n_layers
    sums: dict = {}
    counts: dict = {}
    for tb in task.batches(batch_size):
        kept: list = [None] * n_layers

        def keep(layer):
            def hook(x, hook):
                kept[layer] = x.detach().double()
            return hook
        capture(model, tb.corrupted, z=False, block_inputs=False,
                fwd_hooks=[(MLP_HOOK.format(layer=layer), keep(layer))
                           for layer in range(n_layers)])
        for b, key in enumerate(group_keys(task, tb.index)):
            n = key[1]
            acc = sums.setdefault(key, [torch.zeros_like(kept[0][b, :n]) for _ in kept])
            for layer in range(n_layers):
                acc[layer] += kept[layer][b, :n]
            counts[key] = counts.get(key, 0) + 1
    by_length = {}
    for n in {k[1] for k in sums}:
        keys = [k for k in sums if k[1] == n]
        total = sum(counts[k] for k in keys)
        by_length[n] = [sum(sums[k][layer] for k in keys) / total for layer in range(n_layers)]
    return MlpMeans({k: [s / counts[k] for s in acc] for k, acc in sums.items()}, by_length)


class CircuitEvaluator:
    """Logit differences of many circuits on one task (module docstring).

    Args:
        means: head ablation means (:func:`circuits.discovery.ablation_means`).
        mlp: MLP ablation means (:func:`mlp_means`); ``None``: MLPs are never ablated (every
            circuit keeps them all, the node-level default).
        per_forward: circuits stacked along the batch in one forward (>= 1).

    Attributes:
        model_ld, empty_ld: ``[n_prompts]`` LD of the full model and of the empty circuit (every
            node ablated).
        evaluations: cost so far (module docstring); ``forward_calls``: forwards run.
    """

    def __init__(self, model, task: Task, means: AblationMeans, *, mlp: MlpMeans | None = None,
                 batch_size: int = 16, per_forward: int = 1):
        self.model, self.task, self.means, self.mlp = model, task, means, mlp
        self.n_layers, self.n_heads = model.info.n_layers, model.info.n_heads
        self.nodes = all_nodes(self.n_layers, self.n_heads, mlps=mlp is not None)
        self.per_forward = max(1, int(per_forward))
        self.batches = task.batches(batch_size)
        self.keys = [group_keys(task, tb.index) for tb in self.batches]
        self.evaluations = 0.0
        self.forward_calls = 0
        self._means: dict = {}
        self.clean = [capture(model, tb.clean, z=False) for tb in self.batches]
        check_resume(model, self.clean[0])
        self.evaluations += 1
        self.forward_calls += len(self.batches)
        self.model_ld = np.zeros(len(task))
        for tb, cache in zip(self.batches, self.clean):
            self.model_ld[tb.index] = tb.logit_diff(cache.last_logits).cpu().numpy()
        self.empty_ld = self.logit_diffs([()])[0]

    # ----- hooks -------------------------------------------------------------------------------
    def _hooks(self, i: int, circuits: Sequence[frozenset], start: int = 0):
        """Hooks ablating, in copy ``g`` of batch ``i``, every node outside ``circuits[g]`` in
        layers ``>= start``."""
        copies, device = len(circuits), self.model.device
        hooks = []
        for layer in range(start, self.n_layers):
            keep = torch.tensor([[(layer, h) in c for h in range(self.n_heads)] for c in circuits],
                                device=device)  # [copies, head_index]
            if not keep.all():
                mean = self._mean(i, layer, "z")
                hooks.append((Z_HOOK.format(layer=layer), _z_hook(keep, mean, copies)))
            if self.mlp is not None:
                keep_mlp = torch.tensor([(layer, MLP) in c for c in circuits], device=device)
                if not keep_mlp.all():
                    mean = self._mean(i, layer, "mlp")
                    hooks.append((MLP_HOOK.format(layer=layer), _mlp_hook(keep_mlp, mean,
                                                                         copies)))
        return hooks

    def _mean(self, i: int, layer: int, kind: str) -> Tensor:
        """Batch ``i``'s ablation means at ``layer`` (``z`` or ``mlp``), built once and kept."""
        key = (i, layer, kind)
        if key not in self._means:
            source = self.means if kind == "z" else self.mlp
            tb = self.batches[i]
            self._means[key] = source.batch(layer, self.keys[i], tb.clean.seq_len).to(
                self.model.device)
        return self._means[key]

    # ----- evaluation --------------------------------------------------------------------------
    def logit_diffs(self, circuits: Iterable[Iterable[Node]]) -> np.ndarray:
        """``[n_circuits, n_prompts]`` clean LD with every node outside each circuit ablated."""
        circuits = [frozenset(map(tuple, c)) for c in circuits]
        out = np.zeros((len(circuits), len(self.task)))
        for first in range(0, len(circuits), self.per_forward):
            chunk = circuits[first:first + self.per_forward]
            for i, tb in enumerate(self.batches):
                out[first:first + len(chunk), tb.index] = self._run(i, self.clean[i], chunk, 0)
        self.evaluations += len(circuits)
        return out

    def _run(self, i: int, cache, chunk: Sequence[frozenset], start: int) -> np.ndarray:
        tb = self.batches[i]
        with torch.inference_mode():
            logits = forward_from_layer(self.model, cache, start, copies=len(chunk),
                                        fwd_hooks=self._hooks(i, chunk, start))
        self.forward_calls += 1
        return tb.logit_diff(logits, len(chunk)).view(len(chunk), -1).double().cpu().numpy()

    def normalised(self, ld: np.ndarray) -> np.ndarray:
        """``(mean circuit LD - mean empty LD) / (mean model LD - mean empty LD)`` per row of
        ``ld`` ``[n_circuits, n_prompts]``."""
        empty, model = self.empty_ld.mean(), self.model_ld.mean()
        return (np.atleast_2d(ld).mean(1) - empty) / (model - empty)

    def faithfulness(self, circuits: Iterable[Iterable[Node]]) -> np.ndarray:
        """Normalised faithfulness of each circuit (:meth:`normalised` of :meth:`logit_diffs`)."""
        return self.normalised(self.logit_diffs(circuits))

    def capture_base(self, circuit: Iterable[Node]) -> "Base":
        """Run ``circuit`` once per batch keeping its block inputs, for :meth:`variants`."""
        circuit = frozenset(map(tuple, circuit))
        caches = []
        for i, tb in enumerate(self.batches):
            caches.append(capture(self.model, tb.clean, z=False,
                                  fwd_hooks=self._hooks(i, [circuit])))
            self.forward_calls += 1
        self.evaluations += 1
        ld = np.zeros(len(self.task))
        for tb, cache in zip(self.batches, caches):
            ld[tb.index] = tb.logit_diff(cache.last_logits).double().cpu().numpy()
        return Base(circuit, caches, ld)

    def variants(self, base: "Base", circuits: Sequence[Iterable[Node]]) -> np.ndarray:
        """``[n, n_prompts]`` LD of circuits that differ from ``base.circuit`` only in layers at or
        after their first differing node's layer: each resumes there from the base run (circuits
        sharing that layer share forwards, ``per_forward`` at a time)."""
        circuits = [frozenset(map(tuple, c)) for c in circuits]
        out = np.zeros((len(circuits), len(self.task)))
        starts = [min((n[0] for n in c ^ base.circuit), default=self.n_layers) for c in circuits]
        for start in sorted(set(starts)):
            where = [j for j, s in enumerate(starts) if s == start]
            if start == self.n_layers:  # the base circuit itself
                out[where] = base.ld
                continue
            for first in range(0, len(where), self.per_forward):
                rows = where[first:first + self.per_forward]
                chunk = [circuits[j] for j in rows]
                for i, tb in enumerate(self.batches):
                    out[np.ix_(rows, tb.index)] = self._run(i, base.caches[i], chunk, start)
            self.evaluations += len(where) * (self.n_layers - start) / self.n_layers
        return out


@dataclass
class Base:
    """A circuit's captured run (:meth:`CircuitEvaluator.capture_base`): ``ld`` ``[n_prompts]``."""

    circuit: frozenset
    caches: list
    ld: np.ndarray


def _z_hook(keep: Tensor, mean: Tensor, copies: int):
    """Replace ``z`` by ``mean`` ``[batch, pos, head_index, d_head]`` where ``keep`` ``[copies,
    head_index]`` is False."""
    def hook(z, hook):
        view = z.view(copies, -1, *z.shape[1:])  # [copies, batch, pos, head_index, d_head]
        out = torch.where(keep[:, None, None, :, None], view, mean[None].to(z.dtype))
        return out.view_as(z)
    return hook


def _mlp_hook(keep: Tensor, mean: Tensor, copies: int):
    def hook(x, hook):
        view = x.view(copies, -1, *x.shape[1:])
        return torch.where(keep[:, None, None, None], view, mean[None].to(x.dtype)).view_as(x)
    return hook
