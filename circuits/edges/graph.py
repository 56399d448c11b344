"""The computational graph of a decoder-only transformer, at the level of edges.

Nodes (Syed et al. 2023, arXiv 2310.10348; Hanna et al. 2024, arXiv 2403.17806; MIB, Mueller et al.
2025, arXiv 2504.13151):

* **senders** (a node's output written into the residual stream), ``S = 1 + n_layers * (n_heads + 1)``
  of them, in this order: ``embed`` (the token embedding), then per layer ``l`` its query heads
  ``a{l}.{h}`` (``z_h @ W_O^h``, one per *query* head) and its MLP ``m{l}``;
* **receivers** (a node's input read from the residual stream), ``R = n_layers * (n_heads +
  2 * n_kv + 1) + 1``: per layer the query input of every query head ``a{l}.{h}.q``, the key and
  value inputs of every key/value head ``a{l}.kv{g}.k`` / ``a{l}.kv{g}.v``, the MLP input ``m{l}``;
  then ``logits`` (the input of the final norm).

Grouped-query attention: a key/value head ``g`` is computed once from one input and shared by the
query heads ``g * n_rep .. (g + 1) * n_rep - 1`` (``n_rep = n_heads / n_kv``, Hugging Face
``repeat_kv``), so an edge into ``k`` or ``v`` ends at the key/value head, not at a query head; the
node ``a{l}.{h}`` of the graph view owns its ``q`` edges, and the ``k``/``v`` edges of its group
count for each of the group's query heads in node-level summaries (:meth:`EdgeGraph.head_of`).

An edge ``u -> v`` exists when ``u`` is upstream of ``v``: the embedding feeds every receiver; a
head or MLP of layer ``l`` feeds every receiver of a later layer and the logits; a head of layer
``l`` also feeds the MLP of layer ``l``. Every receiver reads a *prefix* of the senders
(:meth:`EdgeGraph.prefix`), which the forward pass relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import networkx as nx
import numpy as np


@dataclass(frozen=True)
class EdgeGraph:
    """Node and edge indexing of a model with ``n_layers`` layers of ``n_heads`` query heads and
    ``n_kv`` key/value heads (``n_heads`` a multiple of ``n_kv``)."""

    n_layers: int
    n_heads: int
    n_kv: int

    @property
    def block(self) -> int:
        """Receivers per layer: ``n_heads + 2 * n_kv + 1``."""
        return self.n_heads + 2 * self.n_kv + 1

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.block + 1

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def q_receiver(self, layer: int, head: int) -> int:
        return layer * self.block + head

    def k_receiver(self, layer: int, kv: int) -> int:
        return layer * self.block + self.n_heads + kv

    def v_receiver(self, layer: int, kv: int) -> int:
        return layer * self.block + self.n_heads + self.n_kv + kv

    def mlp_receiver(self, layer: int) -> int:
        return layer * self.block + self.block - 1

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.block

    def prefix(self, receiver: int) -> int:
        """Number of senders upstream of ``receiver`` (its senders are ``0 .. prefix - 1``)."""
        if receiver == self.logits_receiver:
            return self.n_senders
        layer, slot = divmod(receiver, self.block)
        base = 1 + layer * (self.n_heads + 1)
        return base + self.n_heads if slot == self.block - 1 else base

    @cached_property
    def sender_names(self) -> list[str]:
        names = ["embed"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @cached_property
    def receiver_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.{h}.q" for h in range(self.n_heads)]
            names += [f"a{layer}.kv{g}.k" for g in range(self.n_kv)]
            names += [f"a{layer}.kv{g}.v" for g in range(self.n_kv)]
            names.append(f"m{layer}")
        return names + ["logits"]

    @cached_property
    def valid(self) -> np.ndarray:
        """``[n_senders, n_receivers]`` bool: which (sender, receiver) pairs are edges."""
        out = np.zeros((self.n_senders, self.n_receivers), dtype=bool)
        for r in range(self.n_receivers):
            out[:self.prefix(r), r] = True
        return out

    @cached_property
    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """``(sender, receiver)`` index arrays of every edge, ``[n_edges]`` each (row-major)."""
        s, r = np.nonzero(self.valid)
        return s, r

    @property
    def n_edges(self) -> int:
        return int(self.edges[0].size)

    def edge_names(self, index: np.ndarray | None = None) -> list[str]:
        """``"sender->receiver"`` names of the edges (all, or those at ``index``)."""
        s, r = self.edges
        if index is not None:
            s, r = s[index], r[index]
        return [f"{self.sender_names[a]}->{self.receiver_names[b]}" for a, b in zip(s, r)]

    def receiver_node(self, receiver: int) -> str:
        """The graph node a receiver belongs to: ``a{l}.{h}`` for a query input, ``a{l}.kv{g}``
        for a key/value input, ``m{l}``, ``logits``."""
        name = self.receiver_names[receiver]
        return name.rsplit(".", 1)[0] if name.startswith("a") else name

    def head_of(self, sender: int) -> tuple[int, int] | None:
        """``(layer, head)`` of a head sender, else ``None``."""
        if sender == 0:
            return None
        layer, slot = divmod(sender - 1, self.n_heads + 1)
        return None if slot == self.n_heads else (layer, slot)

    def node_scores(self, edge_scores: np.ndarray) -> dict[str, float]:
        """A node's score = the sum of the scores of its outgoing edges (for the embedding, heads
        and MLPs), keyed by sender name. With EAP scores this equals node-level attribution
        patching of the node's output (the residual gradient is the sum of its receivers')."""
        s, _ = self.edges
        sums = np.bincount(s, weights=np.asarray(edge_scores, float), minlength=self.n_senders)
        return dict(zip(self.sender_names, sums.tolist()))

    def head_matrix(self, edge_scores: np.ndarray) -> np.ndarray:
        """``[n_layers, n_heads]`` node scores of the heads (sum of outgoing edge scores)."""
        s, _ = self.edges
        sums = np.bincount(s, weights=np.asarray(edge_scores, float), minlength=self.n_senders)
        heads = np.array([[self.head_sender(l, h) for h in range(self.n_heads)]
                          for l in range(self.n_layers)])
        return sums[heads]

    def to_networkx(self, index: np.ndarray, weights: np.ndarray) -> nx.DiGraph:
        """The edges at ``index`` as a DiGraph (:func:`edge_digraph`), weights = their scores."""
        return edge_digraph(self.edge_names(np.asarray(index)), weights, self.n_heads, self.n_kv)


def edge_digraph(names, weights, n_heads: int, n_kv: int) -> nx.DiGraph:
    """A DiGraph from ``"sender->receiver"`` edge names and their weights (torch-free, for the app).

    Nodes: ``embed``, heads ``a{l}.{h}`` (sender, and receiver of its ``q`` edges), key/value
    inputs ``a{l}.kv{g}.k`` / ``.v`` (shared by the group's query heads), ``m{l}``, ``logits``;
    attribute ``kind``, and ``layer``/``head`` for drawing at (layer, row): a head at its index,
    an MLP at row ``n_heads``, key/value inputs below it. Each edge carries ``weight`` and
    ``input`` (``q``, ``k``, ``v``, ``mlp``, ``logits``).
    """
    g = nx.DiGraph()
    for name, w in zip(names, np.asarray(weights, float)):
        sender, receiver = name.split("->")
        kind = receiver.rsplit(".", 1)[1] if receiver.startswith("a") else \
            ("logits" if receiver == "logits" else "mlp")
        target = receiver.rsplit(".", 1)[0] if kind == "q" else receiver
        for node in (sender, target):
            if node not in g:
                g.add_node(node, **_node_attrs(node, n_heads, n_kv))
        g.add_edge(sender, target, weight=float(w), input=kind)
    return g


def _node_attrs(node: str, n_heads: int, n_kv: int) -> dict:
    if node in ("embed", "logits"):
        return {"kind": node}
    if node.startswith("m"):
        return {"kind": "mlp", "layer": int(node[1:]), "head": n_heads}
    layer, rest = node[1:].split(".", 1)
    if ".kv" in node or rest.startswith("kv"):
        group, which = rest[2:].split(".")
        row = n_heads + 1 + int(group) + (n_kv if which == "v" else 0)
        return {"kind": "kv_input", "layer": int(layer), "head": row}
    return {"kind": "head", "layer": int(layer), "head": int(rest)}
