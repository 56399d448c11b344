"""``workbench circuits --level edge``: edge scores, edge circuits, faithfulness curves, overlap.

Tables in ``runs/<run_id>/`` (record schema; ``probe`` = ``eap`` / ``eap-ig``; ``segment`` = task;
edges named ``sender->receiver`` in ``condition``, e.g. ``a3.5->a7.kv1.k``; ``layer``/``head`` =
the sender head where the sender is a head):

* ``task_metrics`` (probe ``task``): the metric per prompt, ``condition`` ``clean`` / ``ablated``
  (every edge ablated), and its mean per condition (``mean_<metric>``);
* ``edge_scores``: ``edge_score`` (mean over prompts), ``edge_score_low`` / ``edge_score_high``
  (bootstrap interval) per edge; ``node_score`` per sender (sum of its outgoing edges);
* ``circuits``: ``edge_member`` (value = score) per circuit edge after pruning, ``n_edges``,
  ``n_nodes``;
* ``faithfulness``: MIB's two curves per size (``condition`` ``fraction=x``): the ``absolute``
  ranking's ``faithfulness`` / ``faithfulness_low`` / ``faithfulness_high``, ``n_edges_requested``
  / ``n_edges_kept``, the ``signed`` ranking's ``faithfulness_signed`` (``_low`` / ``_high``) and
  ``n_edges_kept_signed``; ``cpr`` (area under the signed curve) and ``cmd`` (area under ``|1 -
  f|`` of the absolute curve) with ``_low`` / ``_high``, as MIB defines them; ``auc_absolute`` (the
  area under the absolute curve, what this table called ``cpr`` before); ``metric_model`` /
  ``metric_empty`` (means);
* ``edge_faithfulness_curve``: every circuit size the faithfulness search measured, with the
  random-circuit band and the chosen size (:func:`circuits.edges.sized.curve_rows`);
* ``overlap`` (two or more tasks; ``segment`` ``taskA|taskB``, ``condition`` ``edges`` or
  ``nodes``): Jaccard, overlap coefficient, shared counts, the hypergeometric ``p_value`` and the
  random baseline ``expected_jaccard`` (:mod:`circuits.overlap`);
* ``method_agreement`` (two methods): ``spearman`` of the head node scores per task.

Each circuit is also written as GraphML: ``edge_circuit_<method>_<task>.graphml``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import networkx as nx
import numpy as np
import pyarrow as pa

from circuits.edges.ablation import UNITS as METRIC_UNITS
from circuits.edges.ablation import check_ablation
from circuits.edges.eap import EdgeScores, check_method, edge_scores
from circuits.edges.faithfulness import MIB_FRACTIONS, FaithfulnessCurve, bootstrap_mean_ci
from circuits.edges.forward import GraphModel
from circuits.edges.patching import EdgeSelection
from circuits.edges.sized import EdgeEvaluation, curve_rows, evaluate_edges
from circuits.effects import spearman
from circuits.overlap import overlap
from workbench.bounds import check
from workbench.errors import InputError, RunStateError
from workbench.records import concat, conform, records, string_column
from workbench.store import RunDir

DEFAULT_EDGE_SELECT = "faithfulness=0.8"
UNITS = {
    "edge_score": "metric units; first-order change of the metric when the edge is ablated",
    "edge_score_low": "bootstrap percentile bound of edge_score",
    "edge_score_high": "bootstrap percentile bound of edge_score",
    "node_score": "metric units; sum of the node's outgoing edge scores",
    "edge_member": "edge score", "n_edges": "edges", "n_nodes": "nodes",
    "faithfulness": "(m(C) - m(empty)) / (m(model) - m(empty))",
    "n_edges_requested": "edges", "n_edges_kept": "edges after pruning",
    "faithfulness_signed": "(m(C) - m(empty)) / (m(model) - m(empty)); signed ranking",
    "n_edges_kept_signed": "edges after pruning (signed ranking)",
    "cpr": "area under faithfulness over the edge fraction, signed ranking (MIB's CPR)",
    "cmd": "area under |1 - faithfulness| over the edge fraction, |score| ranking (MIB's CMD)",
    "auc_absolute": "area under faithfulness over the edge fraction, |score| ranking",
    "faithfulness_normalised": "(m(C) - m(empty)) / (m(model) - m(empty)) of the searched ranking",
    "search_ranking": "1 = signed, 0 = absolute (|score|)",
    "faithfulness_random": "mean faithfulness of random edge sets of the same size",
    "faithfulness_random_draw": "faithfulness of one random edge set of the same size",
    "n_edges_requested_search": "edges", "on_grid": "1 = an MIB grid size, 0 = a bisection step",
    "target": "faithfulness", "chosen_size": "edges",
    "size_for_target": "edges; smallest measured circuit reaching the target", "chosen_faithfulness": "faithfulness",
    "reached": "1 = the target was reached", "forwards_curves": "patched forwards",
    "forwards_random": "patched forwards", "forwards_search": "patched forwards",
    "jaccard": "fraction", "overlap_coefficient": "fraction", "n_shared": "edges or nodes",
    "expected_jaccard": "fraction (random sets of the same sizes)", "p_value": "probability",
    "spearman": "rank correlation",
}


@dataclass
class EdgeOptions:
    methods: list[str]
    selection: EdgeSelection
    metric: str = "logit_diff"
    ablation: str = "corrupted"
    ig_steps: int = 5
    ig_rule: str = "right"
    fractions: tuple[float, ...] = MIB_FRACTIONS
    n_boot: int = 1000
    n_random: int = 3
    batch_size: int = 16
    runs_dir: Path = Path("runs")
    run_id: str | None = None
    overwrite: bool = False
    progress: bool = True
    extra: dict = field(default_factory=dict)


def check_edge_options(methods: list[str], select: str | None, *, metric: str, ablation: str,
                       ig_steps: int, n_boot: int, batch_size: int, ig_rule: str = "right",
                       n_random: int = 3, **run) -> EdgeOptions:
    """Validate the edge-level command line before the model loads.

    Bounds: ``--ig-steps`` 1 to :data:`circuits.edges.eap.MAX_IG_STEPS` (64); ``--n-boot``
    (1 to 10,000: the edge intervals hold n_boot x 4096 floats at once), ``--n-random`` (0 to 100)
    and ``--batch-size`` from the one bounds table, :data:`workbench.bounds.BOUNDS`.

    Raises:
        InputError: an unknown method, metric, ablation, Riemann rule or selection; a count out of
            its bounds.
    """
    if not methods or len(set(methods)) != len(methods):
        raise InputError(f"--method: name each edge method once (eap, eap-ig), got {methods}")
    for method in methods:
        check_method(method, metric, ig_steps, ig_rule)
    check_ablation(ablation)
    check("circuits", batch_size=batch_size, n_boot=n_boot, n_random=n_random)
    return EdgeOptions(methods, EdgeSelection.parse(select or DEFAULT_EDGE_SELECT), metric,
                       ablation, ig_steps, ig_rule, MIB_FRACTIONS, n_boot, n_random, batch_size,
                       **run)


def execute_edge_circuits(model, tasks, options: EdgeOptions) -> RunDir:
    """Score, select, evaluate and compare edge circuits of every task; write the run."""
    gm = GraphModel(model)
    manifest = _manifest(model, tasks, options)
    if (Path(options.runs_dir) / manifest["run_id"]).exists() and not options.overwrite:
        raise RunStateError(f"run {manifest['run_id']!r} already exists; use --overwrite or "
                            "another --run-id")
    manifest["units"] = {**UNITS, "metric": METRIC_UNITS[options.metric]}
    run, _ = RunDir.create(options.runs_dir, manifest["run_id"], manifest, resume=False,
                           overwrite=options.overwrite, same_config=lambda stored: None)
    timings: dict[str, float] = {}
    try:
        tables = _compute(model, gm, tasks, options, timings, run)
        written = {}
        for name, table in tables.items():
            run.write_table(name, table)
            written[name] = {"rows": table.num_rows}
        run.update_manifest(status="complete", tables=written, timings=timings)
    except BaseException as err:
        run.update_manifest(status="failed", error=f"{type(err).__name__}: {err}",
                            timings=timings)
        raise
    return run


def _manifest(model, tasks, options: EdgeOptions) -> dict:
    import datetime as dt
    import hashlib
    import json
    import sys

    from workbench.records import SCHEMA_VERSION
    from workbench.run import git_state, library_versions

    info = model.info
    config = {"level": "edge", "model": info.name, "dtype": info.dtype,
              "model_file_sha256": info.details.get("file_sha256"),
              "prepend_bos": info.prepend_bos, **_config(options),
              "tasks": [{"name": t.name, "sha256": t.prompt_set.sha256, "n_prompts": len(t)}
                        for t in tasks]}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    slug = info.name.rstrip("/").split("/")[-1].replace(" ", "-")
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return {"run_id": options.run_id or
            f"{slug}-edge-circuits-{'+'.join(t.name for t in tasks)}-{digest}",
            "kind": "circuits", "status": "running", "created": now, "command": sys.argv,
            "config_key": config, "model": info.to_dict(),
            "prompts": {"name": "+".join(t.name for t in tasks),
                        "files": [vars(f) for t in tasks for f in t.prompt_set.files],
                        "n_prompts": sum(len(t) for t in tasks),
                        "prepend_bos": info.prepend_bos},
            "probes": [{"name": m, "params": config} for m in options.methods],
            "record_schema_version": SCHEMA_VERSION,
            "conventions": {"segment": "task name (overlap: 'taskA|taskB')",
                            "condition": "edge 'sender->receiver', node name, fraction=x, "
                                         "clean|ablated, edges|nodes"},
            "versions": library_versions(), "git": git_state(), "device": info.device,
            "timings": {}, "tables": {}}


def _config(options: EdgeOptions) -> dict:
    out = asdict(options)
    for key in ("runs_dir", "run_id", "overwrite", "progress", "extra"):
        out.pop(key)
    out["selection"] = str(options.selection)
    return out


def _compute(model, gm, tasks, options, timings, run) -> dict[str, pa.Table]:
    graph = gm.graph
    parts: dict[str, list[pa.Table]] = {k: [] for k in ("task_metrics", "edge_scores",
                                                        "circuits", "faithfulness",
                                                        "edge_faithfulness_curve")}
    circuits: dict[str, dict[str, np.ndarray]] = {m: {} for m in options.methods}
    heads: dict[tuple[str, str], np.ndarray] = {}
    for method in options.methods:
        for task in tasks:
            start = time.perf_counter()
            scores = edge_scores(model, task, method=method, metric=options.metric,
                                 ablation=options.ablation, ig_steps=options.ig_steps,
                                 ig_rule=options.ig_rule, batch_size=options.batch_size,
                                 graph_model=gm)
            timings[f"{method}.{task.name}_s"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            found = evaluate_edges(model, task, scores, options.selection,
                                   n_random=options.n_random, n_boot=options.n_boot,
                                   batch_size=options.batch_size, graph_model=gm)
            timings[f"faithfulness.{method}.{task.name}_s"] = round(time.perf_counter() - start,
                                                                    3)
            curve, chosen = found.absolute, found.chosen
            circuits[method][task.name] = chosen
            heads[method, task.name] = scores.head_scores()
            probe = dict(run_id=run.run_id, probe=method)
            if method == options.methods[0]:
                parts["task_metrics"].append(conform(_task_rows(curve, scores), run_id=run.run_id,
                                                     probe="task"))
            parts["edge_scores"].append(conform(_score_rows(scores, options.n_boot), **probe))
            parts["circuits"].append(conform(_circuit_rows(scores, chosen), **probe))
            parts["faithfulness"].append(conform(_faith_rows(found), **probe))
            parts["edge_faithfulness_curve"].append(conform(curve_rows(found), **probe))
            nx.write_graphml(graph.to_networkx(chosen, scores.scores[chosen]),
                             run.path / f"edge_circuit_{method}_{task.name}.graphml")
    tables = {k: concat(v) for k, v in parts.items()}
    if len(tasks) > 1:
        tables["overlap"] = concat([conform(_overlap_rows(graph, circuits[m]), run_id=run.run_id,
                                            probe=m) for m in options.methods])
    if len(options.methods) > 1:
        rows = [records("spearman", spearman(heads[a, t.name], heads[b, t.name]),
                        segment=t.name, condition=f"{a}~{b}")
                for a, b in combinations(options.methods, 2) for t in tasks]
        tables["method_agreement"] = conform(concat(rows), run_id=run.run_id, probe="agreement")
    return tables


def _sender_columns(graph, senders: np.ndarray) -> dict:
    layer = np.full(len(senders), -1)
    head = np.full(len(senders), -1)
    for i, s in enumerate(senders):
        h = graph.head_of(int(s))
        if h is not None:
            layer[i], head[i] = h
    return dict(layer=np.where(layer >= 0, layer, None), head=np.where(head >= 0, head, None))


def _task_rows(curve: FaithfulnessCurve, scores: EdgeScores) -> pa.Table:
    ids = scores.prompt_ids
    out = []
    for condition, values in (("clean", curve.model), ("ablated", curve.empty)):
        out += [records(scores.metric, values, prompt_id=string_column(ids, np.arange(len(ids))),
                        segment=scores.task, condition=condition),
                records(f"mean_{scores.metric}", values.mean(), segment=scores.task,
                        condition=condition)]
    return concat(out)


def _score_rows(scores: EdgeScores, n_boot: int) -> pa.Table:
    graph = scores.graph
    s, _ = graph.edges
    names = np.array(graph.edge_names())
    low, high = bootstrap_mean_ci(scores.per_prompt, n_boot=n_boot)
    cols = dict(segment=scores.task, condition=names, **_sender_columns(graph, s))
    nodes = graph.node_scores(scores.scores)
    senders = np.arange(graph.n_senders)
    return concat([records("edge_score", scores.scores, **cols),
                   records("edge_score_low", low, **cols),
                   records("edge_score_high", high, **cols),
                   records("node_score", list(nodes.values()), segment=scores.task,
                           condition=np.array(list(nodes)), **_sender_columns(graph, senders))])


def _circuit_rows(scores: EdgeScores, chosen: np.ndarray) -> pa.Table:
    graph = scores.graph
    s, r = graph.edges
    nodes = {graph.sender_names[i] for i in s[chosen]} | \
        {graph.receiver_node(i) for i in r[chosen]}
    return concat([records("edge_member", scores.scores[chosen], segment=scores.task,
                           condition=np.array(graph.edge_names(chosen), dtype=object),
                           **_sender_columns(graph, s[chosen])),
                   records("n_edges", len(chosen), segment=scores.task),
                   records("n_nodes", len(nodes), segment=scores.task)])


def _faith_rows(found: EdgeEvaluation) -> pa.Table:
    curve, signed = found.absolute, found.signed
    cond = np.array([f"fraction={x:g}" for x in curve.fractions])
    out = [records(name, values, segment=curve.task, condition=cond) for name, values in (
        ("faithfulness", curve.faithfulness), ("faithfulness_low", curve.low),
        ("faithfulness_high", curve.high), ("n_edges_requested", curve.n_requested),
        ("n_edges_kept", curve.n_kept), ("faithfulness_signed", signed.faithfulness),
        ("faithfulness_signed_low", signed.low), ("faithfulness_signed_high", signed.high),
        ("n_edges_kept_signed", signed.n_kept))]
    out += [records(name, getattr(signed, name), segment=curve.task) for name in (
        "cpr", "cpr_low", "cpr_high")]
    out += [records(name, getattr(curve, name), segment=curve.task) for name in (
        "cmd", "cmd_low", "cmd_high")]
    out += [records("auc_absolute", curve.cpr, segment=curve.task),
            records("metric_model", curve.model.mean(), segment=curve.task),
            records("metric_empty", curve.empty.mean(), segment=curve.task)]
    return concat(out)


def circuit_nodes(graph, chosen: np.ndarray) -> set[tuple]:
    """The sender nodes of a circuit's edges plus the logits if reached, as ``(name,)`` tuples."""
    s, r = graph.edges
    names = {graph.sender_names[i] for i in s[chosen]}
    if (r[chosen] == graph.logits_receiver).any():
        names.add("logits")
    return {(n,) for n in names}


def _overlap_rows(graph, circuits: dict[str, np.ndarray]) -> pa.Table:
    out = []
    s, r = graph.edges
    for a, b in combinations(circuits, 2):
        pair = f"{a}|{b}"
        edge_sets = [{(int(i),) for i in circuits[x]} for x in (a, b)]
        node_sets = [circuit_nodes(graph, circuits[x]) for x in (a, b)]
        for level, sets, total in (("edges", edge_sets, graph.n_edges),
                                   ("nodes", node_sets, graph.n_senders + 1)):
            o = overlap(sets[0], sets[1], total, (a, b))
            out += [records(metric, getattr(o, metric), segment=pair, condition=level)
                    for metric in ("jaccard", "overlap_coefficient", "n_shared", "size_first",
                                   "size_second", "expected_shared", "p_value",
                                   "expected_jaccard")]
    return concat(out)


def graph_edges(rows) -> float:
    """The largest requested prefix in a curve's rows (the search's cap: every edge)."""
    req = rows[rows.metric == "n_edges_requested"].value
    return float(req.max()) if len(req) else float("nan")


def edge_report(run: RunDir) -> str:
    """Plain-text summary: faithfulness areas per method and task, overlap, agreement."""
    faith = run.read_table("faithfulness").to_pandas()
    circ = run.read_table("circuits").to_pandas()

    def val(df, metric, **where):
        rows = df[df.metric == metric]
        for k, v in where.items():
            rows = rows[rows[k] == v]
        return float(rows.value.iloc[0]) if len(rows) else float("nan")

    sized = run.read_table("edge_faithfulness_curve").to_pandas() \
        if "edge_faithfulness_curve" in run.tables() else None
    selection = run.read_manifest().get("config_key", {}).get("selection", "")
    lines = [f"edge circuits ({selection}): method task: circuit edges / nodes, faithfulness "
             "[95% CI] against random edge sets of that size (mean); CPR (signed ranking) and "
             "CMD (|score| ranking) [95% CI]; faithfulness by edge fraction, signed | |score|"]
    for (probe, task), f in faith.groupby(["probe", "segment"], sort=False):
        c = circ[(circ.probe == probe) & (circ.segment == task)]
        curve = f[f.metric == "faithfulness"]
        signed = dict(zip(f[f.metric == "faithfulness_signed"].condition,
                          f[f.metric == "faithfulness_signed"].value))
        pts = ", ".join(f"{cond.split('=')[1]}: {signed.get(cond, float('nan')):.2f} | {v:.2f}"
                        for cond, v in zip(curve.condition, curve.value))
        chosen = f"{int(val(c, 'n_edges'))} / {int(val(c, 'n_nodes'))}"
        note = None
        if sized is not None:
            e = sized[(sized.probe == probe) & (sized.segment == task)]
            size = int(val(e, "chosen_size"))
            ci = ""
            if not np.isnan(val(e, "target")):
                point = e[e.condition == f"size={size}"]
                ci = (f" [{val(point, 'faithfulness_normalised_low'):.2f}, "
                      f"{val(point, 'faithfulness_normalised_high'):.2f}]")
                if not val(e, "reached"):
                    note = (f"    no circuit of up to {int(graph_edges(e))} edges reaches "
                            f"faithfulness {val(e, 'target'):g}; kept the best measured")
            ranking = "" if np.isnan(val(e, "search_ranking")) else \
                (" (signed ranking)" if val(e, "search_ranking") == 1 else " (|score| ranking)")
            control = "no random control (--n-random 0)" if np.isnan(
                val(e, "chosen_random_mean")) else f"random {val(e, 'chosen_random_mean'):.2f}"
            chosen += (f"{ranking}, faithfulness {val(e, 'chosen_faithfulness'):.2f}{ci} "
                       f"({control})")
        lines.append(f"  {probe} {task}: {chosen}; CPR {val(f, 'cpr'):.3f} "
                     f"[{val(f, 'cpr_low'):.3f}, {val(f, 'cpr_high'):.3f}], CMD "
                     f"{val(f, 'cmd'):.3f} [{val(f, 'cmd_low'):.3f}, {val(f, 'cmd_high'):.3f}], "
                     f"area under the |score| curve {val(f, 'auc_absolute'):.3f}")
        if note:
            lines.append(note)
        lines.append(f"    {pts}")
    if "overlap" in run.tables():
        ov = run.read_table("overlap").to_pandas()
        lines.append("overlap: level: Jaccard (random baseline), shared, p")
        for (probe, pair, level), o in ov.groupby(["probe", "segment", "condition"], sort=False):
            lines.append(f"  {probe} {pair} {level}: {val(o, 'jaccard'):.3f} "
                         f"({val(o, 'expected_jaccard'):.4f}), {int(val(o, 'n_shared'))}, "
                         f"{val(o, 'p_value'):.1e}")
    if "method_agreement" in run.tables():
        ag = run.read_table("method_agreement").to_pandas()
        lines.append("method agreement (Spearman of head node scores)")
        lines += [f"  {r.segment} {r.condition}: {r.value:.3f}" for r in ag.itertuples()]
    return "\n".join(lines)
