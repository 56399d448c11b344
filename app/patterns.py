"""A head's stored attention pattern on a prompt (runs with ``attention_pattern`` records), shared
by the Heads and Atlas pages."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import streamlit as st

from app import data, ui
from app.components import token_view
from workbench.figures import attention_pattern
from workbench.heads import format_head


def pattern_metrics(infos: dict) -> list[tuple[str, str]]:
    """``[(table, metric)]`` of the records that are attention patterns (query_pos, key_pos,
    head)."""
    return [(t, m) for t, ms in ui.metrics_with(infos, "query_pos", "key_pos", "head").items()
            for m in ms]


def stored_pattern(root: data.RunsRoot, run_id: str, infos: dict, layer: int, head: int,
                   prefix: str) -> bool:
    """Pickers (pattern metric, variant, prompt) and the pattern of head ``layer.head`` over the
    prompt's tokens; widget keys start with ``prefix``. False (with a message) when the run
    stores no pattern of this head."""
    found = pattern_metrics(infos)
    if not found:
        st.info("This run stores no attention patterns (records with query_pos and key_pos). "
                "Add the attention_pattern probe to a run to see them: workbench run ... "
                "--probes attention_entropy,attention_pattern")
        return False
    tokens = data.tokens(root, run_id)
    if tokens is None:
        st.info("This run has no tokens table, so patterns cannot be drawn over tokens.")
        return False
    choice = st.selectbox("Pattern metric", range(len(found)), key=f"{prefix}-pattern-metric",
                          format_func=lambda i: f"{found[i][0]} · {found[i][1]}")
    table, metric = found[choice]
    where = ui.pick_variant(infos[table].metrics[metric], key=f"{prefix}-pattern-variant")
    head_rows = data.read(root.table(run_id, table), ("prompt_id",),
                          (("metric", metric), *where, ("layer", layer), ("head", head)))
    prompt_ids = sorted(str(p) for p in pc.unique(head_rows["prompt_id"]).to_pylist() if p)
    if not prompt_ids:
        st.info(f"No pattern records for {format_head((layer, head))}; the probe stored other "
                "heads.")
        return False
    prompt_id = st.selectbox("Prompt", prompt_ids, key=f"{prefix}-pattern-prompt")
    ui.show_prompt(root, run_id, prompt_id)
    rows = data.records(root.table(run_id, table), metric,
                        (*where, ("layer", layer), ("head", head), ("prompt_id", prompt_id)))
    unit = (root.manifest(run_id).get("units") or {}).get(metric)
    matrix, labels = pattern_matrix(rows, tokens, prompt_id)
    if matrix is not None:
        st.caption("Hover a token: where it attends (top strip) and what attends to it (bottom).")
        token_view(matrix, labels, key=ui.plot_key(f"{prefix}-tokens", table, metric, prompt_id,
                                                  layer, head))
    ui.show_plot(attention_pattern(rows, tokens, metric, prompt_id, layer, head, unit=unit,
                                   table=table),
                 key=ui.plot_key(f"{prefix}-pattern", table, metric, prompt_id, layer, head))
    return True


def pattern_matrix(rows, tokens, prompt_id: str) -> tuple[np.ndarray | None, list[str]]:
    """One head's stored pattern on one prompt as a ``[query_pos, key_pos]`` matrix over the
    prompt's tokens (the mean of rows of the same cell; 0 where nothing is stored), and the
    tokens; ``(None, [])`` when the values are not attention weights in [0, 1] or a position
    has no token."""
    mine = tokens[tokens["prompt_id"] == prompt_id].sort_values("pos")
    labels = [str(t) for t in mine["token"]]
    n = len(labels)
    cells = rows.groupby(["query_pos", "key_pos"], as_index=False)["value"].mean()
    q, k = cells["query_pos"].astype(int).to_numpy(), cells["key_pos"].astype(int).to_numpy()
    v = cells["value"].to_numpy(dtype=float)
    if not n or not len(v) or q.max() >= n or k.max() >= n or not np.isfinite(v).all() \
            or v.min() < 0 or v.max() > 1:
        return None, []
    matrix = np.zeros((n, n))
    matrix[q, k] = v
    return matrix, labels
