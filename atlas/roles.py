"""Head roles: one registry of what a head can do, where its score comes from, and the rule that
labels it.

Every role has a headline score per (layer, head) read from one probe or circuits record, a rank
among all heads (1 = most role-like: highest score, or lowest for ``low_entropy``) and a boolean
label decided by a stated threshold. A head may hold several roles. The thresholds, their rules
and their sources are recorded in ``atlas.json``; :func:`assign_roles` is pure pandas, so the rules
are tested on hand-made tables.

Rules:

* ``above`` / ``below``: the score is strictly above / below the threshold;
* ``of_ceiling``: the score is above ``threshold x ceiling``, where the ceiling is the score a head
  would get that puts all its attention on the detection pattern wherever the pattern has a
  position (head-type mul scores divide by every query row, including rows with no target, so a
  perfect induction head scores about 0.5 on a sequence repeated twice, not 1);
* ``top_k``: the ``threshold`` best-ranked heads (ties at the cut all included);
* ``member``: the head belongs to the circuit (the score is the score it was selected on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from workbench.errors import InputError

Rule = Literal["above", "below", "of_ceiling", "top_k", "member"]


@dataclass(frozen=True)
class Role:
    """One head role.

    Attributes:
        name: column stem in ``atlas.parquet`` (``<name>``, ``<name>_score``, ``<name>_rank``).
        label: how a researcher says it ("sink head").
        source: the atlas part it is read from (``natural``, ``repeated``, ``context``,
            ``circuits``; see :mod:`atlas.battery`).
        table, metric: the record table and summary metric holding the score (``prompt_id`` null).
        where: equality filters on other record columns (circuits: probe, segment, condition).
        higher: rank 1 is the highest score (False: the lowest).
        rule, threshold: how the label is decided (module docstring).
        reason: where the threshold comes from.
    """

    name: str
    label: str
    source: str
    table: str
    metric: str
    rule: Rule
    threshold: float
    reason: str
    higher: bool = True
    where: tuple[tuple[str, str], ...] = ()


_TL_CUT = ("0.4 of the ceiling: the ARENA / TransformerLens tutorial detectors call a head a "
           "previous-token or induction head when its mean attention on the pattern's positions "
           "exceeds 0.4")

ROLES: dict[str, Role] = {r.name: r for r in (
    Role("sink", "sink head", "natural", "attention_sink", "mean_sink_share_first", "above", 0.3,
         "Gu et al. 2025 (arXiv 2410.10781): token 0 is a sink for a head when it receives more "
         "than eps = 0.3 of the attention (here: mean over queries and prompts)"),
    Role("previous_token", "previous-token head", "repeated", "head_types",
         "mean_previous_token_mul", "of_ceiling", 0.4, _TL_CUT),
    Role("duplicate_token", "duplicate-token head", "repeated", "head_types",
         "mean_duplicate_token_mul", "of_ceiling", 0.4, _TL_CUT),
    Role("induction", "induction head", "repeated", "head_types", "mean_induction_mul",
         "of_ceiling", 0.4, _TL_CUT),
    Role("context", "context-reading head", "context", "head_divergence", "mean_vhd", "top_k", 10,
         "the 10 heads whose output changes most when the passage is removed (VHD, arXiv "
         "2412.13949); 10 is the set whose ablation the head-divergence experiment measured"),
    Role("low_entropy", "low-entropy head", "natural", "attention_entropy", "mean_entropy_norm",
         "below", 0.2, "workbench convention (CARVE, arXiv 2509.06461, reports entropies without "
         "a cut): under 0.2 of ln(visible keys), attention on a few keys", higher=False),
    Role("high_entropy", "high-entropy head", "natural", "attention_entropy", "mean_entropy_norm",
         "above", 0.8, "workbench convention: over 0.8 of ln(visible keys), attention spread "
         "nearly uniformly"),
    Role("ioi_circuit", "IOI circuit head", "circuits", "head_effects", "score", "member", 0.8,
         "member of the task's circuit chosen by the atlas's --circuit-select (default "
         "faithfulness=0.8: the smallest prefix of the heads ranked by |score| whose normalised "
         "faithfulness (circuit - empty) / (model - empty) reaches 0.8, then refined by greedy "
         "pruning and addition; MIB arXiv 2504.13151, ACDC arXiv 2304.14997; the IOI paper's "
         "GPT-2 circuit has 26 of 144 heads); the threshold is the selection's value",
         where=(("segment", "ioi"),)),
    Role("induction_circuit", "induction circuit head", "circuits", "head_effects", "score",
         "member", 0.8, "member of the task's circuit chosen by --circuit-select (as for IOI)",
         where=(("segment", "induction"),)),
)}


def rank(scores: pd.Series, higher: bool = True) -> pd.Series:
    """Rank 1 = best (highest, or lowest with ``higher=False``); ties share the best rank; NaN
    scores get no rank (``<NA>``)."""
    return scores.rank(ascending=not higher, method="min").astype("Int64")


def label(role: Role, scores: pd.Series, ranks: pd.Series, *, threshold: float | None = None,
          ceiling: float | None = None, members: pd.Series | None = None) -> pd.Series:
    """The boolean role label of every head (False where the score is NaN).

    Raises:
        InputError: an ``of_ceiling`` role without a ceiling, a ``member`` role without members.
    """
    cut = role.threshold if threshold is None else threshold
    known = scores.notna()
    if not known.any():  # not measured in this atlas (e.g. no circuits): no head holds the role
        return pd.Series(False, index=scores.index)
    if role.rule == "above":
        out = scores > cut
    elif role.rule == "below":
        out = scores < cut
    elif role.rule == "of_ceiling":
        if ceiling is None or not np.isfinite(ceiling):
            raise InputError(f"role {role.name!r}: the rule of_ceiling needs the pattern's ceiling")
        out = scores > cut * ceiling
    elif role.rule == "top_k":
        out = ranks.fillna(np.iinfo(np.int64).max).astype("int64") <= int(cut)
    else:
        if members is None:
            raise InputError(f"role {role.name!r}: the rule member needs the circuit's heads")
        out = members.fillna(False).astype(bool)
    return (out & known).astype(bool)


def assign_roles(scores: pd.DataFrame, *, thresholds: dict[str, float] | None = None,
                 ceilings: dict[str, float] | None = None,
                 members: dict[str, pd.Series] | None = None,
                 roles: dict[str, Role] | None = None) -> pd.DataFrame:
    """One row per (layer, head) with ``<role>_score``, ``<role>_rank`` and ``<role>`` per role,
    and ``roles``: the comma-joined names of the roles the head holds.

    Args:
        scores: ``layer``, ``head`` and one ``<role>_score`` column per role (NaN: not measured).
        thresholds: per-role overrides of :data:`ROLES` thresholds.
        ceilings: per-role ceiling of ``of_ceiling`` roles.
        members: per-role boolean Series (aligned with ``scores``) of ``member`` roles.

    Raises:
        InputError: a threshold for an unknown role, or a role's score column is missing.
    """
    roles = ROLES if roles is None else roles
    thresholds, ceilings, members = thresholds or {}, ceilings or {}, members or {}
    stray = sorted(set(thresholds) - set(roles))
    if stray:
        raise InputError(f"threshold(s) for unknown role(s) {stray}; roles: {', '.join(roles)}")
    out = scores[["layer", "head"]].astype("int64").reset_index(drop=True)
    for role in roles.values():
        column = f"{role.name}_score"
        if column not in scores.columns:
            raise InputError(f"no score column {column!r} for role {role.name!r}")
        values = scores[column].astype("float64").reset_index(drop=True)
        ranks = rank(values, role.higher)
        out[column], out[f"{role.name}_rank"] = values, ranks
        member = members.get(role.name)
        out[role.name] = label(role, values, ranks, threshold=thresholds.get(role.name),
                               ceiling=ceilings.get(role.name),
                               members=None if member is None else member.reset_index(drop=True))
    held = out[[r for r in roles]].to_numpy()
    names = np.array(list(roles))
    out["roles"] = [",".join(names[row]) for row in held]
    return out


def role_table(thresholds: dict[str, float] | None = None) -> list[dict]:
    """The roles as recorded in ``atlas.json``: name, label, source, metric, rule, threshold,
    reason."""
    thresholds = thresholds or {}
    return [{"name": r.name, "label": r.label, "source": r.source, "table": r.table,
             "metric": r.metric, "where": dict(r.where), "rule": r.rule,
             "threshold": thresholds.get(r.name, r.threshold),
             "rank_1_is": "highest" if r.higher else "lowest", "reason": r.reason}
            for r in ROLES.values()]


def rule_text(rule: dict) -> str:
    """How a role's rule reads to a person, from its ``atlas.json["roles"]`` entry: ``> 0.3``,
    ``< 0.2``, ``> 0.4 x 0.98`` (threshold x ceiling), ``top 10``, ``in f>=0.8 circuit``. The CLI's
    atlas table and the app's head page both print it."""
    cut = rule["threshold"]
    return {"above": f"> {cut:g}", "below": f"< {cut:g}",
            "of_ceiling": f"> {cut:g} x {rule.get('ceiling') or float('nan'):.2f}",
            "top_k": f"top {cut:g}", "member": _member_text(rule)}[rule["rule"]]


def _member_text(rule: dict) -> str:
    """``in f>=0.8 circuit`` / ``in top-5 circuit``: the selection that chose the circuit."""
    method, _, value = str(rule.get("selection", f"top_k={rule['threshold']:g}")).partition("=")
    return {"faithfulness": f"in f>={value} circuit", "top_k": f"in top-{value} circuit",
            "top_percent": f"in top-{value}% circuit"}.get(method, f"in {method}>={value} circuit")


TOP_HEADS = 3  # per role: heads ablated alone, whose patterns and evidence the atlas stores


def top_heads(heads: pd.DataFrame, role: str, k: int = TOP_HEADS) -> list[tuple[int, int]]:
    """The ``k`` best-ranked heads holding ``role`` (``(layer, head)``; ties by layer, head)."""
    held = heads[heads[role]].sort_values([f"{role}_rank", "layer", "head"])
    return [(int(r.layer), int(r.head)) for r in held.head(k).itertuples()]
