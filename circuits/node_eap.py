"""EAP-IG node scores as a node-level ranking source (Hanna et al. 2024, arXiv 2403.17806).

A node's EAP-IG score is the sum of its outgoing edges' scores (:meth:`circuits.edges.graph.
EdgeGraph.node_scores`; with EAP it equals node-level attribution patching of the node's output).
Per prompt, it estimates ``LD(clean with the node's output ablated) - LD(clean)``: the noising
direction (corrupted into clean) over every position, with the edge module's defaults (metric
``logit_diff``, ablation ``corrupted``, ``ig_steps`` = 5, the right Riemann rule). Here it becomes
a :class:`circuits.effects.HeadEffects` like activation and attribution patching (``patched = clean
+ node score``), so the circuits command ranks, selects and sizes circuits from it the same way.
Llama-family models only (the edge graph's forward, :class:`circuits.edges.forward.GraphModel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from circuits.effects import HeadEffects
from circuits.patching import Progress, resolve_heads
from circuits.tasks import Task, task_metrics
from workbench.errors import InputError
from workbench.heads import Head

IG_STEPS = 5


def node_scores_per_prompt(scores) -> tuple[np.ndarray, np.ndarray]:
    """``([n_prompts, n_layers, n_heads]`` head node scores, ``[n_prompts, n_layers]`` MLP node
    scores) from :class:`circuits.edges.eap.EdgeScores` (sums of outgoing edges, per prompt)."""
    graph = scores.graph
    senders, _ = graph.edges
    n = scores.per_prompt.shape[0]
    sums = np.zeros((n, graph.n_senders))
    for p in range(n):
        sums[p] = np.bincount(senders, weights=scores.per_prompt[p], minlength=graph.n_senders)
    heads = np.array([[graph.head_sender(l, h) for h in range(graph.n_heads)]
                      for l in range(graph.n_layers)])
    mlps = np.array([graph.mlp_sender(l) for l in range(graph.n_layers)])
    return sums[:, heads], sums[:, mlps]


def eap_ig_nodes(model, task: Task, *, direction: str = "corrupted_into_clean",
                 positions: str | Sequence[str] | None = None,
                 heads: Sequence[Head] | None = None, batch_size: int = 16,
                 progress: Progress | None = None, ig_steps: int = IG_STEPS) -> HeadEffects:
    """EAP-IG node scores of every head as :class:`HeadEffects` (module docstring); ``heads``
    keeps only those heads (others NaN). ``progress(n_heads_total)`` per prompt batch.

    Raises:
        InputError: a direction other than ``corrupted_into_clean`` or patched positions (EAP-IG
            ablates every position), before any forward pass.
    """
    from circuits.edges.eap import edge_scores

    if direction != "corrupted_into_clean":
        raise InputError("--method eap-ig ranks nodes in the noising direction only "
                         "(corrupted_into_clean); drop --direction")
    if positions not in (None, "all"):
        raise InputError("--method eap-ig ablates every position; drop --positions")
    keep = resolve_heads(model, heads)
    n_layers, n_heads = model.info.n_layers, model.info.n_heads
    per_batch = n_layers * n_heads

    def tick(_n_prompts: int) -> None:  # edge_scores reports once per batch
        if progress:
            progress(per_batch)
    scores = edge_scores(model, task, method="eap-ig", metric="logit_diff", ablation="corrupted",
                         ig_steps=ig_steps, batch_size=batch_size, progress=tick)
    head_nodes, _ = node_scores_per_prompt(scores)
    metrics = task_metrics(model, task, batch_size=batch_size)
    patched = metrics.clean[:, None, None] + head_nodes
    if len(keep) < n_layers * n_heads:
        wanted = np.zeros((n_layers, n_heads), dtype=bool)
        wanted[tuple(np.array(keep).T)] = True
        patched[:, ~wanted] = np.nan
    return HeadEffects("eap_ig_nodes", task.name, direction, patched, metrics.clean,
                       metrics.corrupted, task.prompt_ids,
                       condition=f"EAP-IG node scores, ig_steps={ig_steps}")
