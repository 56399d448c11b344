"""Reading an atlas's scores and evidence back from its part runs (parquet only, plus the token ids
for the head-type ceilings).

Every score in ``atlas.parquet`` is a summary record of a part run (``prompt_id`` null), copied as
it is: :func:`role_scores` reads them, :func:`evidence` gathers the layer-level facts the findings
quote (massive activations, position bias, per-layer entropy, circuit faithfulness and overlap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from atlas.roles import ROLES, Role
from workbench.errors import RunStateError
from workbench.store import RunDir

_COLUMNS = ["metric", "layer", "head", "prompt_id", "segment", "condition", "probe", "key_pos",
            "dim", "value"]


def summary_rows(run: RunDir, table: str, metric: str, where: dict[str, str] | None = None
                 ) -> pd.DataFrame:
    """The summary records (``prompt_id`` null) of ``metric`` in ``table`` matching ``where``.

    Raises:
        RunStateError: the run has no such table.
    """
    t = run.read_table(table, columns=_COLUMNS, filters=[("metric", "=", metric)])
    t = t.filter(pc.is_null(t["prompt_id"]))
    df = t.to_pandas()
    for column, value in (where or {}).items():
        df = df[df[column] == value]
    return df.reset_index(drop=True)


def head_scores(run: RunDir, role: Role, where: dict[str, str]) -> pd.DataFrame:
    """``layer``, ``head``, ``value``: one row per head for ``role``'s metric.

    Raises:
        RunStateError: no rows, or more than one row for a head (an ambiguous filter).
    """
    df = summary_rows(run, role.table, role.metric, where)
    df = df[df["head"].notna()]
    if df.empty:
        raise RunStateError(f"run {run.run_id!r} has no {role.metric!r} records in table "
                            f"{role.table!r} {where or ''} for role {role.name!r}")
    if df.duplicated(["layer", "head"]).any():
        raise RunStateError(f"run {run.run_id!r}: {role.metric!r} has several rows per head "
                            f"{where}; the role {role.name!r} needs one")
    return df[["layer", "head", "value"]].astype({"layer": "int64", "head": "int64"})


def role_scores(runs: dict[str, RunDir], n_layers: int, n_heads: int, *,
                circuit_probe: str) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """All roles' scores on the full (layer, head) grid (NaN for a part not run) and the circuit
    roles' membership.

    ``circuit_probe``: the circuits method whose scores and circuits decide the circuit roles
    (``attribution_patching`` or ``activation_patching``).
    """
    grid = pd.DataFrame([(layer, head) for layer in range(n_layers) for head in range(n_heads)],
                        columns=["layer", "head"])
    members: dict[str, pd.Series] = {}
    for role in ROLES.values():
        run = runs.get(role.source)
        column = f"{role.name}_score"
        if run is None:
            grid[column] = np.nan
            continue
        where = dict(role.where)
        if role.rule == "member":
            where["probe"] = circuit_probe
            where["condition"] = _direction(run)
            member = summary_rows(run, "circuits", "member", {"probe": circuit_probe,
                                                               "segment": where["segment"]})
            if member.empty:  # the task was not among the atlas's circuit tasks
                grid[column] = np.nan
                continue
            heads = set(zip(member["layer"].astype(int), member["head"].astype(int)))
            members[role.name] = pd.Series([(lay, h) in heads for lay, h in
                                            zip(grid["layer"], grid["head"])])
        scores = head_scores(run, role, where)
        grid = grid.merge(scores.rename(columns={"value": column}), on=["layer", "head"],
                          how="left")
    return grid, members


def _direction(run: RunDir) -> str:
    return run.read_manifest().get("config_key", {}).get("discovery", {}).get(
        "direction", "corrupted_into_clean")


def pattern_ceilings(run: RunDir, detectors: list[str]) -> dict[str, float]:
    """Per built-in detector, the mul score of a head that puts all its attention on the pattern
    wherever a query has a pattern position: the mean over prompts of (queries with a pattern
    position) / (queries), from the run's token ids (``tokens.parquet``)."""
    import torch

    from probes.head_types import detection_pattern, parse_detector

    tokens = run.read_table("tokens", columns=["prompt_id", "pos", "token_id"]).to_pandas()
    out = {}
    for name in detectors:
        det = parse_detector(name, "atlas")
        fractions = []
        for _, rows in tokens.sort_values(["prompt_id", "pos"]).groupby("prompt_id", sort=False):
            ids = torch.tensor(rows["token_id"].to_numpy(), dtype=torch.long)[None]
            pattern = detection_pattern(det, ids, torch.tensor([ids.shape[1]]))[0]
            fractions.append(float(pattern.any(-1).double().mean()))
        out[name] = float(np.mean(fractions)) if fractions else float("nan")
    return out


def evidence(runs: dict[str, RunDir]) -> dict:
    """Layer-level facts of the parts, JSON-ready: massive activations (first layer where token 0
    is massive, sink dimensions), position bias (last token's cumulative attention on token 0 per
    depth), per-layer mean normalised entropy, circuits (task metrics, faithfulness, overlap)."""
    out: dict = {}
    natural = runs.get("natural")
    if natural is not None:
        first = summary_rows(natural, "massive_activations", "token0_massive_layer")
        dims = summary_rows(natural, "massive_activations", "sink_dim")
        out["token0_massive_layer"] = int(first["value"].iloc[0]) if len(first) else None
        out["sink_dims"] = sorted(int(d) for d in dims["dim"].dropna())
        mass = summary_rows(natural, "position_bias", "mean_first_token_mass")
        mass = mass[mass["head"].isna()]
        out["first_token_mass"] = {
            cond: [round(float(v), 6) for v in rows.sort_values("layer")["value"]]
            for cond, rows in mass.groupby("condition")}
        ent = summary_rows(natural, "attention_entropy", "mean_entropy_norm")
        ent = ent[ent["head"].notna()]
        out["layer_entropy_norm"] = [round(float(v), 6) for v in
                                     ent.groupby("layer")["value"].mean().sort_index()]
    circuits = runs.get("circuits")
    if circuits is not None:
        out["circuits"] = _circuit_evidence(circuits)
    return out


def _circuit_evidence(run: RunDir) -> dict:
    tm = run.read_table("task_metrics").to_pandas()
    faith = run.read_table("faithfulness").to_pandas()
    tasks = {}
    for task in dict.fromkeys(tm["segment"]):
        row = {}
        for cond in ("clean", "corrupted"):
            sel = tm[(tm.segment == task) & (tm.condition == cond) & tm.prompt_id.isna()]
            for metric in ("mean_logit_diff", "accuracy"):
                row[f"{metric}_{cond}"] = float(sel[sel.metric == metric]["value"].iloc[0])
        for probe, rows in faith[faith.segment == task].groupby("probe"):
            row[probe] = {m: float(rows[rows.metric == m]["value"].iloc[0]) for m in
                          ("faithfulness", "faithfulness_normalised", "faithfulness_random")}
        tasks[task] = row
    overlap = {}
    if "overlap" in run.tables():
        ov = run.read_table("overlap").to_pandas()
        for (probe, pair), rows in ov.groupby(["probe", "segment"]):
            overlap.setdefault(probe, {})[pair] = {
                m: float(rows[rows.metric == m]["value"].iloc[0]) for m in
                ("n_shared", "jaccard", "expected_jaccard", "expected_shared", "p_value")}
    return {"tasks": tasks, "overlap": overlap}


def ioi_class_scores(run: RunDir, n_layers: int, n_heads: int
                     ) -> tuple[pd.Series | None, dict | None]:
    """The IOI head classes of a circuits run (its ``ioi_classes`` table, ``workbench circuits
    --ioi-classes``): ``ioi_class`` per (layer, head) on the full grid (a class name or None) and
    ``{class: {"criterion", "heads", "task", "evidence": {head: {metric: value}}}}`` for
    ``atlas.json``; ``(None, None)`` when the run has no such table.
    """
    from circuits.ioi_classes import CLASSES, IOICriteria, criterion_text
    from workbench.heads import format_head

    if "ioi_classes" not in run.tables():
        return None, None
    table = run.read_table("ioi_classes", columns=_COLUMNS).to_pandas()
    stored = run.read_manifest().get("config_key", {}).get("ioi_classes", {})
    criteria = IOICriteria(**stored.get("criteria", {}))
    grid = pd.Series([None] * (n_layers * n_heads), dtype=object)
    doc: dict = {}
    stage = {"name_mover": "name_mover", "negative_name_mover": "name_mover",
             "s_inhibition": "s_inhibition", "induction": "induction",
             "duplicate_token": "induction", "previous_token": "previous_token"}
    for name in CLASSES:
        rows = table[(table.metric == "ioi_class") & (table.condition == name)]
        heads = sorted((int(r.layer), int(r.head)) for r in rows.itertuples())
        evidence = {}
        for task, layer, head in sorted((r.segment, int(r.layer), int(r.head))
                                        for r in rows.itertuples()):
            grid[layer * n_heads + head] = name
            mine = table[(table.segment == task) & (table["layer"] == layer)
                         & (table["head"] == head)]
            facts = {f"attention {r.condition}": round(float(r.value), 6)
                     for r in mine[mine.metric == "ioi_attention"].itertuples()}
            for metric in ("ioi_path_score", "ioi_path_score_lo", "ioi_path_score_hi"):
                sel = mine[(mine.metric == metric)
                           & mine.condition.str.startswith(f"stage={stage.get(name)};")]
                if len(sel):
                    facts[metric] = round(float(sel.value.iloc[0]), 6)
            for metric in ("ioi_copy_score", "ioi_negative_copy_score", "ioi_backup_delta",
                           "ioi_backup_delta_lo", "ioi_backup_delta_hi"):
                sel = mine[mine.metric == metric]
                if len(sel):
                    facts[metric] = round(float(sel.value.iloc[0]), 6)
            evidence[format_head((layer, head))] = {"task": task, **facts}
        doc[name] = {"criterion": criterion_text(name, criteria),
                     "heads": [format_head(h) for h in heads], "evidence": evidence}
    return grid, doc
