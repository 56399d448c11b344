"""The head graph: heads at (layer, head), arrows for the strongest composition pairs (Elhage et
al. 2021, "A Mathematical Framework for Transformer Circuits"), node colour the head's OV copying
score. Built from a composition records table (``composition.parquet`` of an atlas; the atlas
package writes it), drawn by :func:`workbench.figures.graph.circuit_graph`."""

from __future__ import annotations

import networkx as nx
import pandas as pd

from workbench.figures.graph import circuit_graph
from workbench.figures.plot import Plot
from workbench.heads import format_head, parse_head

TOP_EDGES = 30


def composition_graph(table: pd.DataFrame, *, top: int = TOP_EDGES, n_heads: int | None = None,
                      name: str = "head_graph") -> Plot:
    """The ``top`` sender -> receiver pairs by the largest of their Q-, K- and V-composition
    scores, as arrows (width = that score); every head of those pairs as a node coloured by its
    ``ov_copying`` score when the table has it.

    Args:
        table: composition records: metrics ``q_composition`` / ``k_composition`` /
            ``v_composition`` (``layer``/``head`` the receiver, ``condition`` ``sender=<head>``),
            optionally ``ov_copying`` and ``composition_baseline`` (``condition`` ``mean``).

    Raises:
        ValueError: the table holds no composition pair.
    """
    pairs = table[table["metric"].str.endswith("_composition")].copy()
    if pairs.empty:
        raise ValueError("the table holds no composition pair")
    pairs["sender"] = pairs["condition"].str.removeprefix("sender=").map(parse_head)
    pairs["receiver"] = list(zip(pairs["layer"].astype(int), pairs["head"].astype(int)))
    pairs["mode"] = pairs["metric"].str[0].str.upper()
    best = (pairs.sort_values("value", ascending=False, kind="stable")
            .drop_duplicates(["sender", "receiver"]).head(top))
    copying = table[table["metric"] == "ov_copying"]
    ov = {(int(r.layer), int(r.head)): float(r.value) for r in copying.itertuples()}
    graph = nx.DiGraph()
    for head in sorted(set(best["sender"]) | set(best["receiver"])):
        graph.add_node(format_head(head), layer=head[0], head=head[1], value=ov.get(head))
    for r in best.itertuples():
        graph.add_edge(format_head(r.sender), format_head(r.receiver), weight=float(r.value),
                       mode=r.mode)
    plot = circuit_graph(graph, value="value", label="OV copying score" if ov else "head",
                         n_heads=n_heads, name=name)
    base = table[(table["metric"] == "composition_baseline") & (table["condition"] == "mean")]
    counts = best["mode"].value_counts().to_dict()
    note = (f"arrows: the {len(best)} strongest pairs by Q/K/V composition (width = score; "
            f"{', '.join(f'{m} {counts.get(m, 0)}' for m in 'QKV')}); scores "
            f"{best['value'].min():.3f}-{best['value'].max():.3f}")
    if len(base):
        note += f", random-matrix baseline {float(base['value'].iloc[0]):.3f}"
    plot.params["edge_note"] = note
    return plot
