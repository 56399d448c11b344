"""Standard figure sets of a ``workbench circuits`` run's tables (see ``circuits/run.py``).

* ``circuits``: one circuit graph per (method, task): the circuit's heads at (layer, head),
  coloured by the score they were selected on; arrows only where the method gives edges (path
  patching: sender -> receiver, width = the sender's path-patching score); attribution and
  activation patching score heads, not edges, and the figure says so.
* ``faithfulness``: faithfulness per task and method with the random-circuit band.
* ``overlap``: the task x task Jaccard index of the circuits' head sets per method, each cell
  with the Jaccard index random head sets of the same sizes would have.
* ``head_effects``: the layer x head heatmap of each task's head scores per method.
* ``patching_grid``: the layer x position heatmap of each task's grid score per component and
  direction (``--grids``; positions counted from the last token, labelled with a prompt's tokens).
* ``direct_logit_attribution``: the layer x head heatmap of each task's mean direct logit
  attribution (``--dla``).

Each table's metrics are all covered: nothing else is drawn from them (a by-depth mean of the
circuit members' scores or a heatmap of the constant ``shared`` rows would say nothing).
"""

from __future__ import annotations

import networkx as nx
import pandas as pd

from workbench.figures.bars import faithfulness_bars
from workbench.figures.graph import circuit_graph
from workbench.figures.grid import head_heatmap, heatmap_of_means, overlap_matrix
from workbench.figures.plot import Plot, safe_name
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set
from workbench.heads import format_head, parse_head

_COLUMNS = ["probe", "metric", "layer", "head", "prompt_id", "segment", "condition", "value"]
SHORT = {"activation_patching": "act", "attribution_patching": "attr", "path_patching": "path"}


def _read(source: RunSource, table: str, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return source.run.read_table(table, columns=_COLUMNS + list(extra)).to_pandas()


def _head_node(layer, head) -> str:
    return format_head((layer, head))


def _receiver(condition: str) -> str:
    target = str(condition).split("=", 1)[-1]
    if target == "logits":
        return "logits"
    return _head_node(*parse_head(target))  # stored as 9.6 (older runs) or L9H6


def circuit_plot(rows: pd.DataFrame, method: str, task: str, *, units: dict,
                 n_heads: int | None, table: str | None = "circuits") -> Plot:
    """The circuit graph of one method and task from the ``circuits`` table's rows (``member``
    per head, ``edge`` per path-patching edge with ``condition`` ``receiver=L.H|logits``).

    Raises:
        ValueError: no member rows for (method, task).
    """
    mine = rows[(rows["probe"] == method) & (rows["segment"] == task)]
    members = mine[mine["metric"] == "member"]
    if members.empty:
        raise ValueError(f"no circuit members for method {method!r}, task {task!r}")
    graph = nx.DiGraph()
    for r in members.itertuples():
        graph.add_node(_head_node(r.layer, r.head), layer=int(r.layer), head=int(r.head),
                       value=float(r.value))
    edges = mine[mine["metric"] == "edge"]
    for r in edges.itertuples():
        graph.add_edge(_head_node(r.layer, r.head), _receiver(r.condition), weight=float(r.value))
    edge_note = (f"arrows: path-patching edges, width = |{units.get('edge', 'edge score')}|"
                 if len(edges) else f"no edges: {method.replace('_', ' ')} scores heads, "
                                    "not edges")
    plot = circuit_graph(graph, label="selection score", unit=units.get("score"),
                         n_heads=n_heads, table=table,
                         name=safe_name(table, "circuit", SHORT.get(method, method), task))
    plot.params.update(method=method, task=task, edge_note=edge_note,
                       node_value=units.get("member", "score the head was selected on"),
                       metric="member", where={"method": method, "task": task})
    return plot


@register_figure_set("circuits", covers=("member", "edge", "size"))
def circuits_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """One circuit graph per (method, task) (see the module docstring)."""
    rows = _read(source, table)
    pairs = rows[rows["metric"] == "member"][["probe", "segment"]].drop_duplicates()
    return [circuit_plot(rows, method, task, units=source.units, n_heads=source.n_heads,
                         table=table) for method, task in pairs.itertuples(index=False)]


@register_figure_set("faithfulness", covers=(
    "logit_diff", "faithfulness", "faithfulness_normalised", "faithfulness_random",
    "faithfulness_random_draw", "circuit_accuracy"))
def faithfulness_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Faithfulness bars with the random-circuit band (one figure for all tasks and methods)."""
    rows = _read(source, table)
    if not (rows["metric"] == "faithfulness").any():
        return []
    return [faithfulness_bars(rows, unit="circuit LD / full-model LD", table=table)]


OVERLAP_METRICS = ("jaccard", "overlap_coefficient", "shared_over_first", "shared_over_second",
                   "n_shared", "size_first", "size_second", "expected_shared", "p_value",
                   "expected_jaccard", "shared")


def overlap_plot(rows: pd.DataFrame, method: str, *, table: str | None = "overlap") -> Plot:
    """The Jaccard matrix of one method's circuits with each pair's random baseline
    (``expected_jaccard``); the diagonal (a task with itself) is left empty.

    Raises:
        ValueError: no jaccard rows for the method.
    """
    mine = rows[rows["probe"] == method]
    pairs = []
    for metric in ("jaccard", "expected_jaccard"):
        part = mine[mine["metric"] == metric][["segment", "value"]].rename(
            columns={"value": "value" if metric == "jaccard" else "baseline"})
        pairs.append(part.set_index("segment"))
    both = pairs[0].join(pairs[1], how="left").reset_index()
    if both.empty:
        raise ValueError(f"no jaccard rows for method {method!r}")
    split = both["segment"].str.split("|", n=1, expand=True)
    long = pd.DataFrame({"task_a": split[0], "task_b": split[1], "value": both["value"],
                         "baseline": both["baseline"]})
    mirrored = long.rename(columns={"task_a": "task_b", "task_b": "task_a"})
    tasks = list(dict.fromkeys(list(long["task_a"]) + list(long["task_b"])))
    plot = overlap_matrix(pd.concat([long, mirrored], ignore_index=True), metric="jaccard",
                          label="Jaccard index", unit="shared / union of heads", order=tasks,
                          zmax=1.0,
                          table=table, name=safe_name(table, "overlap", SHORT.get(method,
                                                                                  method)))
    plot.params.update(method=method, where={"method": method})
    return plot


@register_figure_set("overlap", covers=OVERLAP_METRICS)
def overlap_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """The task x task Jaccard matrix per method, with the random baseline per pair."""
    rows = _read(source, table)
    methods = rows[rows["metric"] == "jaccard"]["probe"].drop_duplicates()
    return [overlap_plot(rows, method, table=table) for method in methods]


@register_figure_set("head_effects", covers=("score", "effect", "logit_diff"))
def head_effect_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """The layer x head heatmap of ``score`` (fraction of the clean - corrupted logit-difference
    gap the head carries) per method, task and direction."""
    rows = _read(source, table)
    rows = rows[rows["metric"] == "score"]
    plots = []
    for (method, task, condition), part in rows.groupby(["probe", "segment", "condition"],
                                                        sort=False, dropna=False):
        where = {"segment": task, "condition": condition}
        plot = head_heatmap(part, "score", where=where, scale="diverging", **source.grid(),
                            **source.labels(table, "score", "head score"),
                            name=safe_name(table, "heatmap", SHORT.get(method, method), task,
                                           condition))
        plot.params.update(method=method)
        plots.append(plot)
    return plots


@register_figure_set("patching_grid", covers=("score", "score_lo", "score_hi", "effect",
                                              "logit_diff"))
def grid_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Per task and ``condition`` (component; direction): :func:`grid_plot`."""
    rows = _read(source, table, ("query_pos",))
    tokens = (source.run.read_table("tokens", columns=["prompt_id", "pos", "token"]).to_pandas()
              if "tokens" in source.run.tables() else None)
    return [grid_plot(part, n_layers=source.n_layers, tokens=tokens,
                      **source.labels(table, "score", "patching score"))
            for _, part in rows.groupby(["segment", "condition"], sort=False)]


def grid_plot(rows: pd.DataFrame, *, n_layers: int | None = None,
              tokens: pd.DataFrame | None = None, label: str = "patching score",
              unit: str | None = None, table: str | None = "patching_grid") -> Plot:
    """The layer x position heatmap of one task's and condition's patching-grid ``score``
    (fraction of the gap), positions from the end (``-1`` = last token) labelled with the token
    of the grid's first prompt there (from ``tokens``: prompt_id, pos, token); ``n_prompts`` from
    the per-prompt ``logit_diff`` rows.

    Raises:
        ValueError: ``rows`` holds more than one task or condition, or no ``score`` row.
    """
    if rows["segment"].nunique() != 1 or rows["condition"].nunique() != 1:
        raise ValueError("a patching-grid plot takes the rows of one task and one condition")
    task, condition = rows["segment"].iloc[0], rows["condition"].iloc[0]
    offsets = sorted(rows["query_pos"].dropna().astype(int).unique())
    scores = rows[rows["metric"] == "score"]
    ld = rows[rows["metric"] == "logit_diff"]
    counts = ld.groupby(["layer", "query_pos"]).size()
    means = pd.DataFrame({
        "layer": scores["layer"].astype(int).to_numpy(),
        "head": scores["query_pos"].map({o: i for i, o in enumerate(offsets)}).to_numpy(),
        "value": scores["value"].to_numpy(), "n_rows": 1,
        "n_prompts": [int(counts.get((int(r.layer), int(r.query_pos)), 0))
                      for r in scores.itertuples()]})
    labels = [str(o) for o in offsets]
    if tokens is not None and len(ld):
        first = tokens[tokens["prompt_id"] == ld["prompt_id"].iloc[0]].sort_values("pos")
        first = first["token"].tolist()
        labels = [f"{o} {first[len(first) + o]!r}" if -len(first) <= o < 0 else str(o)
                  for o in offsets]
    component, _, direction = str(condition).partition("; ")
    return heatmap_of_means(means, "score", where={"segment": task, "condition": condition},
                            label=f"{component} {label}", unit=unit, scale="diverging",
                            n_layers=n_layers, n_heads=len(offsets),
                            rows="position from the end", row_labels=labels, table=table,
                            name=safe_name(table, "grid", task, component, direction))


@register_figure_set("direct_logit_attribution", covers=("dla", "dla_mean", "dla_lo", "dla_hi",
                                                         "logit_diff"))
def dla_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """Per task: the layer x head heatmap of ``dla`` (logits, mean over prompts)."""
    rows = _read(source, table)
    rows = rows[(rows["metric"] == "dla") & (rows["condition"] == "head")]
    return [head_heatmap(part, "dla", where={"segment": task, "condition": "head"},
                         scale="diverging", **source.grid(),
                         **source.labels(table, "dla", "direct logit attribution"),
                         name=safe_name(table, "heatmap", "dla", task))
            for task, part in rows.groupby("segment", sort=False)]
