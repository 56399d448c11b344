"""Record frames reshaped into what the pages show: graphs, pair matrices, tables of prompts.

Pure pandas / networkx (no Streamlit, no torch), so each function is tested on its own. Nothing
here computes a probe quantity: it selects, averages over rows and rearranges stored records.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

from app.tables import PAIR_SEPARATOR, RECEIVER_PREFIX, TASK_COLUMN
from workbench.errors import InputError
from workbench.figures.shapes import group_mean
from workbench.graphs import attention_graph
from workbench.heads import format_head, parse_head
from workbench.stats import spearman


def circuit_digraph(members: pd.DataFrame, edges: pd.DataFrame | None = None) -> nx.DiGraph:
    """A circuit as a DiGraph of ``(layer, head)`` nodes (attribute ``value`` = the member row's
    value, e.g. its score) with the edge rows as weighted edges sender -> receiver.

    Args:
        members: rows with layer, head, value (one task's circuit).
        edges: rows with layer, head (the sender), condition ``receiver=L.H`` or
            ``receiver=<name>`` (a named node such as ``logits``), value (the weight).
    """
    graph = nx.DiGraph()
    for row in members.itertuples():
        graph.add_node((int(row.layer), int(row.head)), value=float(row.value))
    for row in (edges if edges is not None else pd.DataFrame()).itertuples():
        receiver = str(row.condition or "").removeprefix(RECEIVER_PREFIX)
        try:
            target: object = parse_head(receiver)
        except InputError:
            target = receiver or "?"
        graph.add_edge((int(row.layer), int(row.head)), target, weight=float(row.value))
    return graph


def attention_digraph(pattern: pd.DataFrame, tokens: pd.DataFrame, prompt_id: str,
                      threshold: float) -> nx.DiGraph:
    """The attention graph of a prompt in the convention of ``workbench.graphs`` (Wu et al. 2025,
    arXiv 2502.01951): one node per token position (attributes ``pos``, ``token``), an edge
    key -> query (information flows from j to i) with ``weight`` = the mean stored value over
    the rows of that (query, key), e.g. over the heads of a layer, when it is above ``threshold``.

    Raises:
        ValueError: no pattern rows for the prompt.
    """
    rows = pattern[pattern["prompt_id"] == prompt_id]
    if rows.empty:
        raise ValueError(f"no attention-pattern rows for prompt {prompt_id!r}")
    cells = group_mean(rows, ["query_pos", "key_pos"])
    mine = tokens[tokens["prompt_id"] == prompt_id].set_index("pos")["token"]
    n = int(max(cells["query_pos"].max(), cells["key_pos"].max())) + 1
    matrix = np.zeros((n, n))
    matrix[cells["query_pos"].astype(int), cells["key_pos"].astype(int)] = cells["value"]
    return attention_graph(matrix, threshold, tokens=[str(mine.get(pos, pos)) for pos in range(n)])


def split_pairs(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows whose task column names a pair ``"A|B"`` with ``task_a``, ``task_b`` added (rows
    that name no pair are dropped)."""
    parts = rows[TASK_COLUMN].astype(str).str.split(PAIR_SEPARATOR, n=1, regex=False)
    ok = parts.map(len) == 2
    out = rows[ok].copy()
    out["task_a"] = parts[ok].map(lambda p: p[0])
    out["task_b"] = parts[ok].map(lambda p: p[1])
    return out


def pair_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """A symmetric long frame (task_a, task_b, value) of a symmetric pair metric (Jaccard,
    overlap coefficient): each stored pair in both orders; the diagonal is left out."""
    pairs = split_pairs(rows)[["task_a", "task_b", "value"]]
    both = pd.concat([pairs, pairs.rename(columns={"task_a": "task_b", "task_b": "task_a"})])
    both = both[both["task_a"] != both["task_b"]]
    return both.drop_duplicates(["task_a", "task_b"]).reset_index(drop=True)


def shared_heads(rows: pd.DataFrame) -> pd.DataFrame:
    """Per pair of tasks, the shared heads (rows with layer and head), written by
    :func:`~workbench.heads.format_head` in (layer, head) order."""
    pairs = split_pairs(rows.dropna(subset=["layer", "head"]))
    pairs = pairs.assign(head_name=[format_head(h) for h in zip(pairs["layer"], pairs["head"])])
    out = pairs.groupby(["task_a", "task_b"], sort=True)["head_name"].agg(
        n_shared="size", heads=lambda h: ", ".join(sorted(h, key=parse_head)))
    return out.reset_index()


def scalar_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Values without a head or prompt (e.g. faithfulness per task) as metric x task: index
    ``metric`` (and ``condition`` when set), one column per task; means when rows repeat."""
    rows = rows[rows["head"].isna() & rows["prompt_id"].isna()]
    index = ["metric"] + (["condition"] if rows["condition"].notna().any() else [])
    rows = rows.assign(**{TASK_COLUMN: rows[TASK_COLUMN].fillna("(all)")},
                       **({"condition": rows["condition"].fillna("")} if "condition" in index
                          else {}))
    return rows.pivot_table(index=index, columns=TASK_COLUMN, values="value", aggfunc="mean")


def extreme_prompts(per_prompt: pd.DataFrame, prompts: pd.DataFrame | None, n: int
                    ) -> pd.DataFrame:
    """The ``n`` highest and ``n`` lowest prompts by ``value`` with their text (when known).

    Args:
        per_prompt: prompt_id, value (one row per prompt).
    """
    ranked = per_prompt.sort_values("value", ascending=False, kind="stable")
    top, bottom = ranked.head(n).assign(end="highest"), ranked.tail(n).iloc[::-1].assign(
        end="lowest")
    out = pd.concat([top, bottom[~bottom["prompt_id"].isin(top["prompt_id"])]])
    if prompts is not None:
        out = out.merge(prompts[["prompt_id", "text"]], on="prompt_id", how="left")
    return out.reset_index(drop=True)


def head_summary(rows: pd.DataFrame, units: dict[str, str]) -> pd.DataFrame:
    """One head's records of every metric: per (table, metric, segment, condition) the mean,
    min and max over rows, rows and distinct prompts, and the unit."""
    keys = ["table", "metric", "segment", "condition"]
    rows = rows.assign(segment=rows["segment"].fillna(""), condition=rows["condition"].fillna(""))
    grouped = rows.groupby(keys, sort=True)
    out = grouped["value"].agg(["mean", "min", "max", "size"]).rename(columns={"size": "rows"})
    out["prompts"] = grouped["prompt_id"].nunique()
    out = out.reset_index()
    out["unit"] = out["metric"].map(lambda m: units.get(m, ""))
    return out


def rank_of(means: pd.DataFrame, layer: int, head: int) -> tuple[int, int] | None:
    """(rank from the highest, number of heads) of a head in per-head means; None if absent."""
    order = means.sort_values("value", ascending=False, kind="stable").reset_index(drop=True)
    hit = np.flatnonzero((order["layer"] == layer).to_numpy() & (order["head"] == head).to_numpy())
    return (int(hit[0]) + 1, len(order)) if len(hit) else None


def runs_overview(entries: list) -> pd.DataFrame:
    """One row per run folder (``RunEntry``): what the Runs page lists."""
    rows = []
    for e in entries:
        m = e.manifest or {}
        tables = m.get("tables") or {}
        probes = [p.get("name", "?") for p in m.get("probes") or [] if isinstance(p, dict)]
        rows.append({
            "run": e.run_id, "status": m.get("status", "unreadable" if e.problem else "?"),
            "kind": m.get("kind", ""), "model": (m.get("model") or {}).get("name", ""),
            "prompt set": (m.get("prompts") or {}).get("name", ""),
            "prompts": (m.get("prompts") or {}).get("n_prompts"),
            "probes / tables": ", ".join(probes or [t for t in tables]),
            "records": sum(int(t.get("rows", 0)) for t in tables.values()
                           if isinstance(t, dict)),
            "created": m.get("created", ""), "total s": (m.get("timings") or {}).get("total_s"),
            "problem": e.problem or m.get("error") or ""})
    return pd.DataFrame(rows)


def manifest_facts(m: dict) -> pd.DataFrame:
    """The manifest essentials as (field, value) rows, values as text."""
    model, prompts = m.get("model") or {}, m.get("prompts") or {}
    parity = model.get("parity") or {}
    files = ", ".join(f"{f.get('path')} ({f.get('n_prompts')} prompts, sha256 "
                      f"{str(f.get('sha256'))[:12]})" for f in prompts.get("files") or [])
    facts = [
        ("run id", m.get("run_id")), ("kind", m.get("kind")), ("status", m.get("status")),
        ("created", m.get("created")), ("finished", m.get("finished")),
        ("model", model.get("name")), ("architecture", model.get("architecture")),
        ("layers x heads", f"{model.get('n_layers')} x {model.get('n_heads')}"
         if model.get("n_layers") else None),
        ("dtype / device", f"{model.get('dtype')} / {model.get('device')}"
         if model.get("dtype") else None),
        ("parity (max |diff| logits)", parity.get("max_abs_diff")),
        ("prompt set", prompts.get("name")), ("prompt files", files or None),
        ("prompts / tokens", f"{prompts.get('n_prompts')} / {prompts.get('n_tokens')}"
         if prompts else None),
        ("BOS prepended", prompts.get("prepend_bos")),
        ("git commit", (m.get("git") or {}).get("commit")),
        ("command", " ".join(map(str, m.get("command") or [])) or None),
    ]
    return pd.DataFrame([(k, str(v)) for k, v in facts if v is not None],
                        columns=["field", "value"])


def compare_heads(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per-head means of two runs (``head_means`` frames) side by side: the difference a - b as
    a per-head frame (``n_prompts`` = the smaller of the two), and summary numbers: heads in
    both, Spearman rank correlation (``scipy.stats.spearmanr``), mean and largest
    absolute difference."""
    both = a.merge(b, on=["layer", "head"], suffixes=("_a", "_b"))
    diff = pd.DataFrame({"layer": both["layer"], "head": both["head"],
                         "value": both["value_a"] - both["value_b"],
                         "n_rows": both["n_rows_a"] + both["n_rows_b"],
                         "n_prompts": np.minimum(both["n_prompts_a"], both["n_prompts_b"])})
    stats: dict = {"heads in both": len(both)}
    if len(both) > 1:
        stats["Spearman rank correlation"] = round(spearman(both["value_a"], both["value_b"]), 3)
    if len(both):
        worst = diff["value"].abs().idxmax()
        stats["mean |a - b|"] = f"{diff['value'].abs().mean():.4g}"
        layer, head = int(diff.loc[worst, "layer"]), int(diff.loc[worst, "head"])
        stats["largest |a - b|"] = (f"{abs(diff.loc[worst, 'value']):.4g} at "
                                    f"{format_head((layer, head))}")
    return diff, stats


def same_grid(model_a: dict, model_b: dict) -> bool:
    """True when two runs' models have the same layer x head grid (heads can be matched by
    index: the same model, or checkpoints of one architecture)."""
    return all(model_a.get(k) == model_b.get(k) for k in ("n_layers", "n_heads"))


def compare_by_depth(a: pd.DataFrame, b: pd.DataFrame, n_layers_a: int, n_layers_b: int
                     ) -> pd.DataFrame:
    """Per-head means of two runs of different models aligned by relative depth (layer /
    n_layers, in thirds, as the atlas comparison): per third, the mean over its heads in each
    run, the difference and the layers each third covers."""
    rows = []
    for i, band in enumerate(("early", "middle", "late")):
        out = {"depth": band}
        for side, means, n in (("a", a, n_layers_a), ("b", b, n_layers_b)):
            third = np.minimum(means["layer"].to_numpy() * 3 // max(n, 1), 2) == i
            layers = means.loc[third, "layer"]
            out[f"{side} layers"] = f"{layers.min()}-{layers.max()}" if len(layers) else "-"
            out[f"{side} mean"] = float(means.loc[third, "value"].mean()) if third.any() \
                else float("nan")
        out["b - a"] = out["b mean"] - out["a mean"]
        rows.append(out)
    return pd.DataFrame(rows).round({"a mean": 4, "b mean": 4, "b - a": 4})


def sweep_order(info, first: tuple[str, ...] = ()) -> tuple[list, list[str]]:
    """``[(metric, variant)]`` of the table's sweeps, the headline metrics (``first``, then the
    ``mean_*`` summaries) first; a per-prompt metric whose ``mean_`` summary is also swept is
    left out (the same curve twice), and named in the second list."""
    metrics = [m for m, mi in info.metrics.items() if mi.sweeps]
    twins = [m for m in metrics if f"mean_{m}" in metrics]
    kept = [m for m in metrics if m not in twins]
    rank = {m: (0, first.index(m)) if m in first else (1, 0) if m.startswith("mean_") else (2, 0)
            for m in kept}
    ordered = sorted(kept, key=lambda m: (*rank[m], m))
    found = [(m, s) for m in ordered for s in info.metrics[m].sweeps]
    return list(dict.fromkeys((m, tuple(sorted(s.items()))) for m, s in found)), twins
