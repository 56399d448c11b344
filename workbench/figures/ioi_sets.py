"""The IOI head classes' circuit figure (``workbench circuits --ioi-classes``; the ``ioi_classes``
table of a circuits run): the classified heads drawn as in Wang et al. 2022 (arXiv 2211.00593),
Fig. 2, one horizontal lane per class in the order the information flows (previous-token ->
induction / duplicate-token -> S-inhibition -> name movers -> logits), each head at x = its layer,
arrows from each head to the heads its class was found through (path patching into their
queries / keys / values, or to the logits), width = the sender's path-patching score.

Torch-free: everything is read from the table's records.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from workbench.figures.graph import NEGATIVE_EDGE, POSITIVE_EDGE
from workbench.figures.plot import Plot, drawer, safe_name
from workbench.figures.registry import FigureOptions, RunSource, register_figure_set
from workbench.figures.style import (INK, TICK_PT, Width, base_figure, categorical, plot_text,
                                     pt)
from workbench.heads import format_head, parse_heads

# lane (bottom to top) and the stage whose path score draws the class's arrows
LANES = {"previous_token": "previous_token", "duplicate_token": "induction",
         "induction": "induction", "s_inhibition": "s_inhibition",
         "negative_name_mover": "name_mover", "name_mover": "name_mover",
         "backup_name_mover": None}
LABELS = {"previous_token": "previous token", "duplicate_token": "duplicate token",
          "induction": "induction", "s_inhibition": "S-inhibition",
          "negative_name_mover": "negative name mover", "name_mover": "name mover",
          "backup_name_mover": "backup name mover"}
RECEIVER_CLASS = {"name_mover": "logits", "s_inhibition": "name_mover",
                  "induction": "s_inhibition", "previous_token": "induction"}
METRICS = ("ioi_class", "ioi_path_score", "ioi_path_score_lo", "ioi_path_score_hi",
           "ioi_path_estimate", "ioi_attention", "ioi_copy_score", "ioi_negative_copy_score",
           "ioi_dla", "ioi_dla_ablated", "ioi_backup_delta", "ioi_backup_delta_lo",
           "ioi_backup_delta_hi")


def _stage_of(condition: str) -> tuple[str, str]:
    """``"stage=s; receivers=q of 1.2,3.4"`` -> ``("s", "q of 1.2,3.4")``."""
    parts = dict(p.strip().split("=", 1) for p in str(condition).split(";"))
    return parts.get("stage", ""), parts.get("receivers", "")


def _receivers(target: str) -> list:
    if target == "logits":
        return ["logits"]
    return parse_heads(target.split(" of ", 1)[1]) if " of " in target else []


def ioi_class_plot(rows: pd.DataFrame, task: str, *, n_layers: int | None = None,
                   table: str | None = "ioi_classes") -> Plot:
    """The class-lane circuit of one task from the ``ioi_classes`` records.

    Data columns: element (node/edge), node, label, cls, layer, head, x, y, value (nodes: the
    score the class was decided on; edges: the sender's path-patching score), source, target, x1,
    y1.

    Raises:
        ValueError: the task has no classified head.
    """
    mine = rows[rows["segment"] == task]
    classes = mine[mine["metric"] == "ioi_class"]
    if classes.empty:
        raise ValueError(f"task {task!r}: no head has an IOI class")
    lanes = [c for c in LANES if c in set(classes["condition"])]
    score = mine[mine["metric"] == "ioi_path_score"]
    stage_rows = {(s, int(r.layer), int(r.head)): (float(r.value), t)
                  for r in score.itertuples() for s, t in [_stage_of(r.condition)]}
    backup = {(int(r.layer), int(r.head)): float(r.value)
              for r in mine[mine["metric"] == "ioi_backup_delta"].itertuples()}
    nodes, where, heads_of = [], {}, {}
    top = max(int(classes["layer"].max()), 0)
    for y, cls in enumerate(lanes):
        members = classes[classes["condition"] == cls].sort_values(["layer", "head"])
        seen: dict[int, int] = {}
        for r in members.itertuples():
            head = (int(r.layer), int(r.head))
            k = seen.get(head[0], 0)
            seen[head[0]] = k + 1
            stage = LANES[cls]
            value = backup.get(head) if stage is None else \
                stage_rows.get((stage, *head), (float("nan"), ""))[0]
            name = format_head(head)
            where[name] = (float(head[0]), y + 0.3 * k)
            heads_of.setdefault(cls, []).append(head)
            nodes.append({"element": "node", "node": name, "label": name, "cls": cls,
                          "layer": head[0], "head": head[1], "x": where[name][0],
                          "y": where[name][1], "value": value})
    logits_x = float((n_layers or top + 1))
    where["logits"] = (logits_x, (len(lanes) - 1) / 2)
    nodes.append({"element": "node", "node": "logits", "label": "logits", "cls": "logits",
                  "layer": None, "head": None, "x": logits_x, "y": where["logits"][1],
                  "value": None})
    edges = []
    for cls, heads in heads_of.items():
        stage = LANES[cls]
        for head in heads:
            if stage is None:  # backup name movers write to the logits directly
                targets, value = ["logits"], backup.get(head, float("nan"))
            else:
                value, target = stage_rows.get((stage, *head), (float("nan"), ""))
                targets = [t if t == "logits" else format_head(t) for t in _receivers(target)]
            for t in targets:
                if t in where:
                    edges.append({"element": "edge", "source": format_head(head), "target": t,
                                  "x": where[format_head(head)][0],
                                  "y": where[format_head(head)][1], "x1": where[t][0],
                                  "y1": where[t][1], "value": value, "cls": cls})
    columns = ["element", "node", "label", "cls", "layer", "head", "x", "y", "value", "source",
               "target", "x1", "y1"]
    data = pd.DataFrame(nodes + edges, columns=columns)
    data = data.astype({"layer": "float64", "head": "float64", "value": "float64",
                        "x1": "float64", "y1": "float64"})
    for column in ("node", "label", "cls", "source", "target"):
        data[column] = data[column].astype(object).fillna("").astype(str)
    params = {"task": task, "lanes": lanes, "labels": [LABELS[c] for c in lanes],
              "n_layers": n_layers,
              "edge_note": "arrows: sender -> the heads its class was path-patched into "
                           "(or the logits); width = |path-patching score|, blue = negative "
                           "(backup: rise of the direct effect, logits)"}
    return Plot("ioi_circuit", safe_name(table, "ioi_circuit", task), data, params)


@drawer("ioi_circuit")
def draw_ioi_circuit(data: pd.DataFrame, params: dict, width: Width) -> go.Figure:
    nodes, edges = data[data["element"] == "node"], data[data["element"] == "edge"]
    fig = base_figure(width, aspect=0.6 if width == "single" else 0.4)
    biggest = float(edges["value"].abs().max()) if len(edges) else 1.0
    for _, e in edges.iterrows():
        fig.add_annotation(x=e["x1"], y=e["y1"], ax=e["x"], ay=e["y"], xref="x", yref="y",
                           axref="x", ayref="y", showarrow=True, arrowhead=2, arrowsize=1,
                           arrowwidth=0.5 + 1.5 * abs(e["value"]) / (biggest or 1.0),
                           arrowcolor=NEGATIVE_EDGE if e["value"] < 0 else POSITIVE_EDGE,
                           standoff=6, startstandoff=6, text="")
    order = list(LANES) + ["logits"]
    for cls, rows in nodes.groupby("cls", sort=False):
        colour = INK if cls == "logits" else categorical(order.index(cls))
        fig.add_trace(go.Scatter(
            x=rows["x"], y=rows["y"], mode="markers+text", name=LABELS.get(cls, cls),
            text=[plot_text(label) for label in rows["label"]], textposition="middle right",
            textfont={"size": pt(TICK_PT - 1)},
            marker={"size": 10, "color": colour, "line": {"width": 0.5, "color": INK},
                    "symbol": "square" if cls == "logits" else "circle"},
            hovertemplate="%{text}<extra></extra>", showlegend=False))
    lanes = params["lanes"]
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(lanes))),
                     ticktext=[plot_text(t) for t in params["labels"]],
                     range=[-0.6, len(lanes) - 0.2])
    fig.update_xaxes(title_text="layer")
    fig.update_layout(margin={"t": 8 + pt(TICK_PT) * 1.6})
    fig.add_annotation(text=plot_text(params["edge_note"]), xref="paper", yref="paper", x=0, y=1,
                       xanchor="left", yanchor="bottom", showarrow=False,
                       font={"size": pt(TICK_PT - 1)})
    return fig


@register_figure_set("ioi_classes", covers=METRICS)
def ioi_class_figures(source: RunSource, table: str, options: FigureOptions) -> list[Plot]:
    """One class-lane circuit per task (module docstring)."""
    rows = source.run.read_table(table, columns=["metric", "layer", "head", "segment",
                                                 "condition", "value"]).to_pandas()
    n_layers = getattr(source, "n_layers", None)
    return [ioi_class_plot(rows, task, n_layers=n_layers, table=table)
            for task in rows[rows["metric"] == "ioi_class"]["segment"].drop_duplicates()]
