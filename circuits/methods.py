"""Circuit discovery methods: one function per method, one registry (:data:`METHODS`).

Each method scores heads on a task and selects a circuit with a :class:`Selection`:

* ``activation``: activation patching of every head (:mod:`circuits.patching`), then select;
* ``attribution``: attribution patching (EAP, :mod:`circuits.attribution`), then select; its top
  ``spot_check`` heads are measured by activation patching (:mod:`circuits.spot_check`);
* ``eap-ig``: EAP-IG node scores (:mod:`circuits.node_eap`: the sum of a node's outgoing edge
  scores), then select;
* ``path``: path patching in stages as in Wang et al. and Merullo et al.
  (:mod:`circuits.path_patching`): stage 1 scores every head as a sender to the logits and
  selects; stage ``s + 1`` scores every head as a sender to the query/key/value of the heads newly
  selected at stage ``s`` and selects again; the circuit is the union. Each selected sender gets an
  edge to every receiver of its stage in a later layer (or to ``"logits"``), weighted by its
  path-patching score through *that receiver alone* (one more path-patching run per receiver, over
  the selected senders only); the stage's joint score stays in ``effects``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from circuits.attribution import attribution_patching
from circuits.discovery import Selection, circuit_graph, select_heads
from circuits.effects import HeadEffects
from circuits.node_eap import eap_ig_nodes
from circuits.path_patching import path_patching
from circuits.patching import Progress, activation_patching
from circuits.progress import plan
from circuits.spot_check import SpotCheck, spot_check
from circuits.tasks import Task
from workbench.heads import Head, all_heads


@dataclass(frozen=True)
class DiscoveryOptions:
    """Options shared by the methods (recorded in the run manifest)."""

    direction: str = "corrupted_into_clean"
    positions: str | None = None  # None = every position; "last"; or segment names
    batch_size: int = 16
    heads_per_forward: int | None = None  # None: a layer's heads (path patching: 1 on CPU)
    stages: int = 2  # path patching stages
    receiver_input: str = "qkv"  # path patching: which inputs of receiver heads
    heads: tuple[Head, ...] | None = None  # heads scored (path: senders); None = every head
    spot_check: int = 20  # attribution: activation-patch its top-k heads (0 = off)


@dataclass
class Discovery:
    """A method's result on a task: per-stage effects, the circuit, its edges, the time taken."""

    method: str
    task: str
    effects: list[HeadEffects]
    circuit: list[Head]
    scores: np.ndarray  # [n_layers, n_heads]: the score each head was selected on (stage 1 else)
    edges: list[tuple[Any, Any, float]] = field(default_factory=list)
    seconds: float = 0.0
    spot_check: SpotCheck | None = None  # attribution: its top heads measured by activation

    def graph(self) -> nx.DiGraph:
        """The circuit as a ``networkx.DiGraph`` (:func:`circuits.discovery.circuit_graph`)."""
        return circuit_graph(self.circuit, self.scores, self.edges)


def _scored(method: str, run: Callable[..., HeadEffects]):
    def discover(model, task: Task, selection: Selection, options: DiscoveryOptions,
                 progress: Progress | None = None) -> Discovery:
        start = time.perf_counter()
        n_batches = len(task.batches(options.batch_size))
        n_all = model.info.n_layers * model.info.n_heads
        n_scored = len(options.heads) if options.heads else n_all
        plan(progress, (n_scored if method == "activation" else n_all) * n_batches)
        if method == "attribution" and options.spot_check:
            plan(progress, min(options.spot_check, n_scored) * n_batches)
        kwargs = dict(direction=options.direction, positions=options.positions,
                      batch_size=options.batch_size, progress=progress, heads=options.heads)
        if method == "activation":
            kwargs["heads_per_forward"] = options.heads_per_forward
        effects = run(model, task, **kwargs)
        # sized by faithfulness: the run chooses the circuit from the ranking (circuits.search)
        circuit = [] if selection.by_faithfulness else select_heads(effects.score, selection)
        check = None
        if method == "attribution" and options.spot_check:
            check = spot_check(model, task, effects, k=options.spot_check,
                               positions=options.positions, batch_size=options.batch_size,
                               heads_per_forward=options.heads_per_forward, progress=progress)
        return Discovery(method, task.name, [effects], circuit, effects.score,
                         seconds=time.perf_counter() - start, spot_check=check)
    return discover


def discover_path(model, task: Task, selection: Selection, options: DiscoveryOptions,
                  progress: Progress | None = None) -> Discovery:
    start = time.perf_counter()
    effects: list[HeadEffects] = []
    circuit: list[Head] = []
    edges: list[tuple[Any, Any, float]] = []
    scores = np.full((model.info.n_layers, model.info.n_heads), np.nan)
    receivers: Any = "logits"
    pool = options.heads or all_heads(model.info.n_layers, model.info.n_heads)
    n_batches = len(task.batches(options.batch_size))
    for stage in range(1, options.stages + 1):
        reach = model.info.n_layers if receivers == "logits" else max(l for l, _ in receivers)
        plan(progress, sum(layer < reach for layer, _ in pool) * n_batches)
        result = path_patching(model, task, receivers=receivers,
                               receiver_input=options.receiver_input, direction=options.direction,
                               positions=options.positions, batch_size=options.batch_size,
                               heads_per_forward=options.heads_per_forward, progress=progress,
                               senders=options.heads)
        result.condition = f"stage {stage}; {result.condition}"
        effects.append(result)
        picked = select_heads(result.score, selection)
        if receivers == "logits":  # one receiver: the stage's score is the edge's
            edges += [(sender, "logits", float(result.score[sender])) for sender in picked]
        else:
            edges += _edge_scores(model, task, picked, receivers, options, progress, n_batches)
        new = [h for h in picked if h not in circuit]
        for head in new:
            scores[head] = result.score[head]
        circuit += new
        receivers = new
        if not any(layer > 0 for layer, _ in new):  # nothing earlier can send to them
            break
    stage1 = effects[0].score
    scores = np.where(np.isnan(scores), stage1, scores)
    return Discovery("path", task.name, effects, sorted(circuit), scores, edges,
                     time.perf_counter() - start)


def _edge_scores(model, task: Task, senders: list[Head], receivers: list[Head],
                 options: DiscoveryOptions, progress: Progress | None, n_batches: int
                 ) -> list[tuple[Head, Head, float]]:
    """``(sender, receiver, score)`` for every selected sender in a layer before the receiver:
    path patching of the senders to that one receiver (one run per receiver, the senders batched),
    so each edge carries its own score, not its stage's joint one."""
    edges = []
    for receiver in receivers:
        before = [s for s in senders if s[0] < receiver[0]]
        if not before:
            continue
        plan(progress, len(before) * n_batches)
        alone = path_patching(model, task, receivers=[receiver], senders=before,
                              receiver_input=options.receiver_input, direction=options.direction,
                              positions=options.positions, batch_size=options.batch_size,
                              heads_per_forward=options.heads_per_forward, progress=progress)
        edges += [(s, receiver, float(alone.score[s])) for s in before]
    return sorted(edges)


METHODS: dict[str, Callable[..., Discovery]] = {
    "activation": _scored("activation", activation_patching),
    "attribution": _scored("attribution", attribution_patching),
    "path": discover_path,
    "eap-ig": _scored("eap-ig", eap_ig_nodes),
}

