"""Edge circuits: selection (top-n edges or a threshold), pruning, and evaluation by edge patching.

Evaluation (Hanna et al. 2024, arXiv 2403.17806; MIB, arXiv 2504.13151): every edge *outside* the
circuit carries the sender's ablated output into its receiver, every edge inside carries the
sender's output of the run itself:

    input_v = resid_v - sum_{u -> v not in C} (out_u - ablated_u)

(:meth:`circuits.edges.forward.GraphModel.run`). With no edge patched this is the clean model;
with every edge patched and the ``corrupted`` ablation it is exactly the corrupted model.

Pruning removes edges that cannot matter to the logits: an edge whose receiver node has no path to
the logits inside the circuit, and an edge whose sender node (other than the embedding) has no
incoming circuit edge (its output is then computed from ablated inputs only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from circuits.edges.ablation import AblationSource, metric_values
from circuits.edges.forward import GraphModel
from circuits.edges.graph import EdgeGraph
from workbench.errors import InputError

EDGE_SELECTIONS = ("faithfulness", "top_n", "top_percent", "threshold")


@dataclass(frozen=True)
class EdgeSelection:
    """``faithfulness`` (the smallest prefix of a ranking whose normalised faithfulness reaches
    the value, in (0, 1]; :mod:`circuits.edges.search`), ``top_n`` (a count of edges, at
    least 1), ``top_percent`` (of all edges, rounded up; in (0, 100]) or ``threshold`` (``|score|
    >= value``); the last three rank edges by ``|score|``, ties by edge order."""

    method: str
    value: float

    def __post_init__(self):
        if self.method not in EDGE_SELECTIONS:
            raise InputError(f"--select {str(self.method)[:40]!r}: edge selection is one of "
                             f"{', '.join(EDGE_SELECTIONS)} (e.g. faithfulness=0.8)")
        v = self.value
        ok = math.isfinite(v) and {
            "faithfulness": 0 < v <= 1, "top_n": v >= 1 and v == int(v),
            "top_percent": 0 < v <= 100, "threshold": v >= 0}[self.method]
        if not ok:
            raise InputError(f"--select {self.method}={v:g} is out of range (faithfulness in "
                             "(0, 1], top_n a whole number >= 1, top_percent in (0, 100], "
                             "threshold a finite number >= 0)")

    @classmethod
    def parse(cls, text: str) -> EdgeSelection:
        """``"faithfulness=0.8"``, ``"top_n=200"``, ``"top_percent=1"`` or ``"threshold=0.01"``
        (``top_k`` = ``top_n``).

        Raises:
            InputError: a malformed string.
        """
        name, sep, value = text.partition("=")
        name = "top_n" if name.strip() == "top_k" else name.strip()
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not sep:
            raise InputError(f"--select {text[:60]!r}: expected faithfulness=T, top_n=N, "
                             "top_percent=P or threshold=S")
        return cls(name, number)

    def count(self, scores: np.ndarray) -> int:
        """Edges taken by a ``top_n`` / ``top_percent`` / ``threshold`` rule.

        Raises:
            ValueError: a ``faithfulness`` selection (sized by :func:`circuits.edges.search.search`).
        """
        if self.method == "faithfulness":
            raise ValueError("a faithfulness selection is sized by the search, not counted")
        n = scores.size
        if self.method == "top_n":
            return min(int(self.value), n)
        if self.method == "top_percent":
            return min(math.ceil(n * self.value / 100 - 1e-9), n)
        return int((np.abs(scores) >= self.value).sum())

    def __str__(self) -> str:
        return f"{self.method}={self.value:g}"


def top_edges(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` edges of largest ``|score|`` (stable: ties by edge order)."""
    order = np.argsort(-np.abs(np.asarray(scores, float)), kind="stable")
    return np.sort(order[:k])


def prune(graph: EdgeGraph, index: np.ndarray) -> np.ndarray:
    """The edges at ``index`` minus dangling ones, as sorted edge indices: an edge is kept when
    its sender is the embedding or has an incoming circuit edge, and its receiver is the logits or
    belongs to a node with a circuit path to the logits (iterated to a fixed point)."""
    s_all, r_all = graph.edges
    owners = _receiver_owner(graph)
    keep = np.zeros(graph.n_edges, dtype=bool)
    keep[np.asarray(index, dtype=np.int64)] = True
    while True:
        s, r = s_all[keep], r_all[keep]
        fed = np.zeros(graph.n_senders, dtype=bool)
        fed[0] = True
        o = owners[r]
        fed[o[o >= 0]] = True
        live = np.zeros(graph.n_senders, dtype=bool)
        for u in np.unique(s)[::-1]:  # senders in reverse topological order
            rs = r[s == u]
            live[u] = bool(_reaches(graph, owners, live, rs).any())
        new = keep & fed[s_all] & _reaches(graph, owners, live, r_all)
        if (new == keep).all():
            return np.nonzero(keep)[0]
        keep = new


def _reaches(graph: EdgeGraph, owners: np.ndarray, live: np.ndarray, receivers: np.ndarray
             ) -> np.ndarray:
    o = owners[receivers]
    return (receivers == graph.logits_receiver) | np.where(o >= 0, live[np.maximum(o, 0)],
                                                          False).any(1)


def _receiver_owner(graph: EdgeGraph) -> np.ndarray:
    """``[n_receivers, n_rep]`` the senders a receiver feeds (-1 padded): a q input its head, a
    k/v input every query head of its group, an MLP input its MLP, the logits none."""
    rep = graph.n_heads // graph.n_kv
    out = -np.ones((graph.n_receivers, max(rep, 1)), dtype=np.int64)
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            out[graph.q_receiver(layer, h), 0] = graph.head_sender(layer, h)
        for kv in range(graph.n_kv):
            heads = [graph.head_sender(layer, kv * rep + i) for i in range(rep)]
            out[graph.k_receiver(layer, kv), :rep] = heads
            out[graph.v_receiver(layer, kv), :rep] = heads
        out[graph.mlp_receiver(layer), 0] = graph.mlp_sender(layer)
    return out


def patch_matrix(graph: EdgeGraph, circuit: np.ndarray) -> torch.Tensor:
    """``[n_senders, n_receivers]`` float: 1 for every edge *not* in ``circuit`` (edge indices)."""
    out = torch.from_numpy(graph.valid.astype(np.float64))
    s, r = graph.edges
    circuit = np.asarray(circuit, dtype=np.int64)
    out[s[circuit], r[circuit]] = 0.0
    return out


def circuit_metric(model, task, circuits: list[np.ndarray], *, metric: str = "logit_diff",
                   ablation: str = "corrupted", batch_size: int = 16,
                   graph_model: GraphModel | None = None, source: AblationSource | None = None,
                   progress=None) -> np.ndarray:
    """``[n_circuits, n_prompts]`` metric of ``task``'s clean prompts with every edge outside each
    circuit (an array of edge indices) patched with its ablated value.

    ``kl`` is measured against each prompt's clean (unpatched) next-token distribution.
    """
    gm = graph_model or GraphModel(model)
    source = source or AblationSource(gm, task, ablation, batch_size)
    patches = [patch_matrix(gm.graph, c).to(gm.device) for c in circuits]
    out = np.zeros((len(circuits), len(task)))
    for tb in task.batches(batch_size):
        ablated = source.batch(tb)
        last = tb.clean.last_pos().to(gm.device)
        embeds = gm.embed(tb.clean.input_ids)
        with torch.inference_mode():
            clean_lp = None
            if metric == "kl":
                clean_lp = torch.log_softmax(gm.run(embeds, last).logits.double(), -1)
            for i, patch in enumerate(patches):
                run = gm.run(embeds, last, ablated=ablated, patch=patch)
                out[i, tb.index] = metric_values(metric, run.logits, tb.answer, tb.distractor,
                                                 clean_lp).double().cpu().numpy()
                if progress:
                    progress(1)
    return out
