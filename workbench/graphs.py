"""Attention as a directed graph over positions (networkx), with the quantities of Wu et al.

Convention (Wu et al., ICML 2025, arXiv 2502.01951; METHODS.md section 4): an edge ``j -> i`` when
query ``i`` attends to key ``j`` (information flows from position j to position i), weighted by
``matrix[i, j]``; self-loops included. ``matrix`` is any [query, key] attention matrix of one
prompt: one layer's (head-averaged) pattern, a cumulative product, or a boolean mask.

This module needs numpy and networkx only (no torch, no model): the app and the figures call it
with matrices read from elsewhere. ``probes.position_bias.prompt_matrices`` computes the
matrices of one prompt on a model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

GRAPH_FORMATS = (".graphml", ".json")


def attention_graph(matrix: Any, threshold: float = 0.0, *, tokens: list[str] | None = None,
                    name: str = "") -> nx.DiGraph:
    """The DiGraph of ``matrix`` ``[query_pos, key_pos]``: edge ``j -> i`` with ``weight =
    matrix[i, j]`` for every entry strictly above ``threshold`` (a boolean mask gives weight 1).

    Nodes are the positions ``0 .. n-1`` with attribute ``pos`` and, when given, ``token``.

    Raises:
        ValueError: ``matrix`` is not square, or ``tokens`` has the wrong length.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"attention matrix must be square [query_pos, key_pos], got {m.shape}")
    n = m.shape[0]
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"{len(tokens)} tokens for a {n} x {n} attention matrix")
    graph = nx.DiGraph(name=name, threshold=float(threshold))
    for pos in range(n):
        graph.add_node(pos, pos=pos, **({"token": str(tokens[pos])} if tokens else {}))
    query, key = np.nonzero(m > threshold)
    graph.add_weighted_edges_from(zip(key.tolist(), query.tolist(), m[query, key].tolist()))
    return graph


def centre_nodes(graph: nx.DiGraph) -> list[int]:
    """Positions every other position attends to directly (Wu et al.'s centre nodes): ``c`` with an
    edge ``c -> i`` for every node ``i != c``. Under a causal mask: ``[0]``; under ``prefix:K``:
    ``0 .. K-1``; under a sliding window shorter than the sequence: none."""
    n = graph.number_of_nodes()
    return sorted(c for c in graph.nodes
                  if sum(1 for i in graph.successors(c) if i != c) == n - 1)


def hops_to_first(graph: nx.DiGraph, first: int = 0) -> dict[int, int | None]:
    """For each position ``i``, the fewest edges on a path ``first -> ... -> i`` (how many
    attention layers information from ``first`` needs to reach ``i``); ``None`` when unreachable.
    ``first`` itself has 0."""
    dist = nx.single_source_shortest_path_length(graph, first)
    return {node: dist.get(node) for node in sorted(graph.nodes)}


def to_json(graph: nx.DiGraph) -> dict:
    """Node-link JSON data (``networkx.node_link_data`` with ``edges="edges"``)."""
    return nx.node_link_data(graph, edges="edges")


def from_json(data: dict) -> nx.DiGraph:
    """Inverse of :func:`to_json`."""
    return nx.node_link_graph(data, directed=True, edges="edges")


def write_graph(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write ``graph`` as GraphML (``.graphml``) or node-link JSON (``.json``).

    Raises:
        ValueError: another file suffix.
    """
    path = Path(path)
    if path.suffix == ".graphml":
        nx.write_graphml(graph, path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(to_json(graph)))
    else:
        raise ValueError(f"graph file {path}: use one of {', '.join(GRAPH_FORMATS)}")
    return path


def read_graph(path: str | Path) -> nx.DiGraph:
    """Read a graph written by :func:`write_graph` (node ids back to ints).

    Raises:
        ValueError: another file suffix.
    """
    path = Path(path)
    if path.suffix == ".graphml":
        graph = nx.read_graphml(path, node_type=int)
        for key in ("node_default", "edge_default"):  # added by the GraphML reader
            graph.graph.pop(key, None)
        return graph
    if path.suffix == ".json":
        return from_json(json.loads(path.read_text()))
    raise ValueError(f"graph file {path}: use one of {', '.join(GRAPH_FORMATS)}")


__all__ = ["GRAPH_FORMATS", "attention_graph", "centre_nodes", "from_json", "hops_to_first",
           "read_graph", "to_json", "write_graph"]
