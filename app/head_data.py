"""What an atlas knows about one head, for the head page: its roles (score, rank, rule and
threshold, the role's causal test and the head's own ablation effect), its IOI class, its faithful
circuits, its composition partners and its direct logit attribution. Torch-free; read against the
names of the atlas contract (``atlas.json`` keys ``causal``, ``circuits``, ``ioi_classes``,
``composition``; ``atlas.parquet`` columns ``<role>_effect``, ``<role>_effect_p``,
``<role>_head_effect``, ``ioi_class``; files ``composition.parquet``, ``head_patterns.parquet``).

Every reader returns ``None`` when the atlas lacks that part (an atlas made before it existed, or
with the part skipped): the page then says "not in this atlas". Pure selection and formatting;
the numbers are the atlas's own.
"""

from __future__ import annotations

import math

import pandas as pd

from app import data
from app.atlas_data import AtlasDoc
from atlas.roles import rule_text  # torch-free
from workbench.errors import RunStateError
from workbench.heads import format_head, parse_head

NOT_IN_ATLAS = "not in this atlas"
COMPOSITION = ("q_composition", "k_composition", "v_composition")
SENDER_PREFIX = "sender="


def _num(value: object, spec: str = ".3g") -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(v) else format(v, spec)


def head_row(atlas: AtlasDoc, layer: int, head: int) -> pd.Series:
    """The head's row of ``atlas.parquet``.

    Raises:
        RunStateError: the atlas has no such head.
    """
    rows = atlas.heads[(atlas.heads["layer"] == layer) & (atlas.heads["head"] == head)]
    if rows.empty:
        raise RunStateError(f"the atlas {atlas.run_id!r} has no head {format_head((layer, head))}"
                            f" (its model has {atlas.n_layers} layers x {atlas.n_heads} heads)")
    return rows.iloc[0]


def causal_text(test: dict | None) -> str:
    """One line for a role's causal test (``atlas.json["causal"][role]``): effect [interval],
    control mean ± sd over n draws, p; or the test's note; or :data:`NOT_IN_ATLAS`."""
    if not test:
        return NOT_IN_ATLAS
    if test.get("descriptive"):
        return f"descriptive role, not tested: {test.get('note', '')}".strip()
    if not test.get("n_heads"):
        return str(test.get("note") or "no held heads to ablate")
    unit = f" {test['unit']}" if test.get("unit") else ""
    text = (f"{test.get('metric', 'effect')} {_num(test.get('effect'))}{unit} "
            f"[{_num(test.get('effect_lo'))}, {_num(test.get('effect_hi'))}] ablating the "
            f"{test.get('n_heads')} held heads vs {_num(test.get('control_mean'))} ± "
            f"{_num(test.get('control_sd'))} for random heads ({test.get('n_draws')} draws), "
            f"p = {_num(test.get('p_value'))}")
    return text + (f"; {test['note']}" if test.get("note") else "")


def roles(atlas: AtlasDoc, layer: int, head: int) -> pd.DataFrame:
    """One row per measured role: role, score, rank ("r of N"), rule (with its threshold), held
    ("yes"/"no"), the role's causal test and this head ablated alone (each "not in this atlas"
    when absent)."""
    row = head_row(atlas, layer, head)
    total, causal = len(atlas.heads), atlas.doc.get("causal")
    out = []
    for role in atlas.roles():
        name = role["name"]
        rank = row.get(f"{name}_rank")
        own = row.get(f"{name}_head_effect") if f"{name}_head_effect" in row.index else None
        out.append({
            "role": role.get("label", name), "score": _num(row[f"{name}_score"], ".4g"),
            "rank": _rank(atlas, role, row, rank, total),
            "held": "yes" if bool(row[name]) else "no",
            "rule": rule_text(role) if "rule" in role and "threshold" in role else "",
            "role's causal test": (causal_text((causal or {}).get(name)) if causal is not None
                                   else NOT_IN_ATLAS),
            "this head ablated": (NOT_IN_ATLAS if own is None else
                                  (_num(own) or "not tested (not a top head of the role)"))})
    return pd.DataFrame(out)


def _rank(atlas: AtlasDoc, role: dict, row: pd.Series, rank: object, total: int) -> str:
    """"r of N"; for a circuit role (rule ``member``: held = in the circuit, whatever the sign of
    the head's patching score) the rank by |score|, so that a negative name mover in the circuit
    does not read "rank 263 of 270, held"."""
    if pd.isna(rank):
        return ""
    if role.get("rule") != "member":
        return f"{int(rank)} of {total}"
    scores = atlas.heads[f"{role['name']}_score"].abs()
    mine = abs(float(row[f"{role['name']}_score"]))
    return f"{int((scores > mine).sum()) + 1} of {total} by |score|"


def ioi_class(atlas: AtlasDoc, layer: int, head: int) -> tuple[str, str] | None:
    """(class, criterion) of the head's IOI class (Wang et al. 2211.00593), ("none", ...) when the
    head has none; None when the atlas has no IOI classes."""
    if "ioi_class" not in atlas.heads.columns:
        return None
    value = head_row(atlas, layer, head)["ioi_class"]
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value):
        return "none", "the head meets no IOI class's criterion"
    criterion = ((atlas.doc.get("ioi_classes") or {}).get(str(value)) or {}).get("criterion", "")
    return str(value), str(criterion)


def circuits(atlas: AtlasDoc, layer: int, head: int) -> pd.DataFrame | None:
    """Per task of ``atlas.json["circuits"]``: whether the head is in the faithful circuit, the
    circuit's size, faithfulness [lo, hi] vs its target and the random circuits' mean. None when
    the atlas has no faithful circuits."""
    found = atlas.doc.get("circuits")
    if not isinstance(found, dict) or not found:
        return None
    row, name = head_row(atlas, layer, head), format_head((layer, head))
    out = []
    for task, info in found.items():
        if not isinstance(info, dict):
            continue
        column = f"{task}_circuit"
        member = (bool(row[column]) if column in row.index and pd.notna(row[column])
                  else name in {format_head(parse_head(h)) for h in info.get("heads") or []})
        out.append({
            "task": task, "member": "yes" if member else "no", "size": info.get("size"),
            "faithfulness": f"{_num(info.get('faithfulness_normalised'))} "
                            f"[{_num(info.get('lo'))}, {_num(info.get('hi'))}]",
            "target": _num(info.get("target")),
            "reached": "yes" if info.get("reached") else "no",
            "random circuits": f"{_num(info.get('random_mean'))} ± "
                               f"{_num(info.get('random_sd'))}",
            "selection": str(info.get("selection") or info.get("method") or "")})
    return pd.DataFrame(out)


def composition(root: data.RunsRoot, atlas: AtlasDoc, layer: int, head: int, k: int = 5
                ) -> dict[str, pd.DataFrame] | None:
    """The head's composition partners from ``composition.parquet`` (Elhage et al. 2021): the
    ``k`` strongest senders into this head and receivers of it per Q/K/V composition, and its
    per-head scores (``ov_copying``, ...). Keys ``senders``, ``receivers``, ``own``; None when
    the atlas has no composition table."""
    try:
        ref = root.table(atlas.run_id, "composition")
    except RunStateError:
        return None
    name = format_head((layer, head))
    rows = data.frame(data.read(ref, ("metric", "layer", "head", "condition", "value")))
    scored = rows[rows["metric"].isin(COMPOSITION) & rows["condition"].notna()].copy()
    scored["other"] = [_sender(c) for c in scored["condition"]]
    into = scored[(scored["layer"] == layer) & (scored["head"] == head)]
    senders = (into.sort_values("value", ascending=False)
               .groupby("metric", sort=True).head(k)
               .rename(columns={"other": "sender"})[["metric", "sender", "value"]])
    out_of = scored[scored["other"] == name]
    receivers = out_of.assign(receiver=[format_head(h) for h in zip(out_of["layer"],
                                                                     out_of["head"])])
    receivers = (receivers.sort_values("value", ascending=False)
                 .groupby("metric", sort=True).head(k)[["metric", "receiver", "value"]])
    own = rows[rows["condition"].isna() & (rows["layer"] == layer) & (rows["head"] == head)]
    return {"senders": senders.reset_index(drop=True),
            "receivers": receivers.reset_index(drop=True),
            "own": own[["metric", "value"]].reset_index(drop=True)}


def _sender(condition: str) -> str:
    """``"sender=L3H1"`` (or an older ``"sender=3.1"``) -> ``"L3H1"``."""
    text = str(condition).removeprefix(SENDER_PREFIX)
    try:
        return format_head(parse_head(text))
    except Exception:  # noqa: BLE001 - a foreign condition string: shown as stored
        return text


def dla(root: data.RunsRoot, atlas: AtlasDoc, layer: int, head: int) -> pd.DataFrame | None:
    """The head's direct logit attribution per task (``dla_mean`` [``dla_lo``, ``dla_hi``], in
    logits) from the atlas's circuits part run; None when that run has no DLA table."""
    run_id = atlas.part_runs().get("circuits")
    if not run_id:
        return None
    try:
        ref = root.table(run_id, "direct_logit_attribution")
    except (RunStateError, data.OutsideRunsFolder):
        return None
    rows = data.frame(data.read(ref, ("metric", "segment", "value"),
                                (("layer", layer), ("head", head))))
    rows = rows[rows["metric"].isin(["dla_mean", "dla_lo", "dla_hi"])]
    if rows.empty:
        return pd.DataFrame(columns=["task", "dla_mean", "dla_lo", "dla_hi"])
    wide = rows.pivot_table(index="segment", columns="metric", values="value").reset_index()
    return wide.rename(columns={"segment": "task"}).rename_axis(None, axis=1)
