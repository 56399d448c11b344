"""Edge-level circuits: the graph, EAP / EAP-IG edge scores, edge patching, faithfulness curves.

See ``docs/methods-edges.md`` for the formulas and sources.
"""
