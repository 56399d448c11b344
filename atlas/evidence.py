"""The atlas's causal and weight-based evidence, read back from the ``causal`` and ``composition``
part runs (:mod:`atlas.causal_part`) into ``atlas.parquet``, ``atlas.json`` and files beside them.
Torch-free: the app and ``atlas.findings`` import it.

What :func:`attach_evidence` adds (each only when its part was run):

* ``atlas.parquet``: per role ``<role>_effect`` and ``<role>_effect_p`` (the role-level effect and
  empirical p-value, on the rows of the heads holding the role, NaN elsewhere) and
  ``<role>_head_effect`` (that head ablated alone, on the role's metric, for the role's top heads);
* ``atlas.json["causal"][role]``: the role's test (:mod:`atlas.role_tests`): effect, 95% interval,
  control mean and sd, p-value, metric, unit, ablation, source, heads, note; descriptive roles
  ``{"descriptive": true, "note"}``; a role no head holds ``{"n_heads": 0, "note"}``;
* ``atlas.json["composition"]``: the random baseline, the top pairs per mode, and the K-composition
  of the previous-token heads into the induction heads against all other pairs of the same layers;
* ``atlas.json["head_evidence"][head]``: for the top heads of each role, its roles, its strongest
  composition partners (senders and receivers), its ablation effects, its direct logit
  attribution on the circuit tasks it is a top head for (``dla``, logits), and the prompt sets
  its attention pattern is stored for;
* ``head_patterns.parquet``, ``tokens.parquet``, ``composition.parquet`` copied from the part runs.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from atlas.roles import ROLES, top_heads
from workbench.heads import format_head, parse_head
from workbench.store import RunDir, write_parquet

TOP_PAIRS = 10  # per mode in atlas.json
PARTNERS = 3  # per head and direction in head_evidence
MODE_NAMES = {"q": "Q", "k": "K", "v": "V"}


def attach_evidence(heads: pd.DataFrame, runs: dict[str, RunDir], path) -> dict:
    """Add the causal columns to ``heads`` (in place), copy the evidence tables into ``path`` and
    return the ``atlas.json`` entries (module docstring)."""
    doc: dict = {}
    causal, comp = runs.get("causal"), runs.get("composition")
    entries = {}
    if causal is not None:
        entries = causal.read_manifest().get("causal", {})
        _causal_columns(heads, entries)
        doc["causal"] = entries
        for table in ("head_patterns", "tokens"):
            if table in causal.tables():
                write_parquet(path / f"{table}.parquet", causal.read_table(table))
    pairs = None
    if comp is not None and "composition" in comp.tables():
        table = comp.read_table("composition")
        write_parquet(path / "composition.parquet", table)
        frame = table.to_pandas()
        pairs = composition_pairs(frame)
        doc["composition"] = _composition_doc(frame, pairs, heads,
                                              comp.read_manifest().get("baseline", {}))
    dla = None
    if causal is not None and "role_effects" in causal.tables():
        rec = causal.read_table("role_effects").to_pandas()
        dla = rec[rec["metric"] == "dla"]
    doc["head_evidence"] = _head_evidence(heads, entries, pairs,
                                          causal.read_manifest().get("pattern_sets", {})
                                          if causal is not None else {}, dla)
    return doc


def _causal_columns(heads: pd.DataFrame, entries: dict) -> None:
    keys = list(zip(heads["layer"].astype(int), heads["head"].astype(int)))
    for role in ROLES:
        if role not in heads.columns:
            continue
        entry = entries.get(role, {})
        held = heads[role].to_numpy(bool)
        effect = entry.get("effect", float("nan"))
        p = entry.get("p_value", float("nan"))
        heads[f"{role}_effect"] = np.where(held, _num(effect), np.nan)
        heads[f"{role}_effect_p"] = np.where(held, _num(p), np.nan)
        single = {parse_head(h): v for h, v in entry.get("head_effects", {}).items()}
        heads[f"{role}_head_effect"] = [_num(single.get(k, float("nan"))) for k in keys]


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def composition_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Pair rows of a composition table: ``mode, sender_layer, sender_head, receiver_layer,
    receiver_head, score``."""
    rows = frame[frame["metric"].str.endswith("_composition")]
    senders = rows["condition"].str.removeprefix("sender=").map(parse_head)
    return pd.DataFrame({"mode": rows["metric"].str[0].to_numpy(),
                         "sender_layer": [s[0] for s in senders],
                         "sender_head": [s[1] for s in senders],
                         "receiver_layer": rows["layer"].astype(int).to_numpy(),
                         "receiver_head": rows["head"].astype(int).to_numpy(),
                         "score": rows["value"].to_numpy()})


def _composition_doc(frame: pd.DataFrame, pairs: pd.DataFrame, heads: pd.DataFrame,
                     baseline: dict) -> dict:
    base_mean, base_sd = baseline.get("mean", float("nan")), baseline.get("sd", float("nan"))
    top = []
    for mode in ("q", "k", "v"):
        best = pairs[pairs["mode"] == mode].nlargest(TOP_PAIRS, "score")
        top += [{"mode": MODE_NAMES[mode],
                 "sender": format_head((int(r.sender_layer), int(r.sender_head))),
                 "receiver": format_head((int(r.receiver_layer), int(r.receiver_head))),
                 "score": float(r.score), "over_baseline": float(r.score / base_mean)}
                for r in best.itertuples()]
    doc = {"baseline": baseline, "top_pairs": top,
           "source": "Elhage et al. 2021, A Mathematical Framework for Transformer Circuits; "
                     "scores as TransformerLens's all_composition_scores, norms folded "
                     "(atlas.composition)"}
    per_head = frame[frame["metric"] == "ov_copying"]
    if len(per_head):
        doc["ov_copying_positive"] = int((per_head["value"] > 0).sum())
    role_pair = role_pair_composition(pairs, heads, "previous_token", "induction", "k")
    if role_pair:
        doc["previous_token_to_induction"] = role_pair
    return doc


def role_pair_composition(pairs: pd.DataFrame, heads: pd.DataFrame, sender_role: str,
                          receiver_role: str, mode: str) -> dict | None:
    """Mean ``mode``-composition of the pairs (sender holds ``sender_role``, receiver holds
    ``receiver_role``, sender earlier) against every other pair between the same sender and
    receiver layers; ``None`` when no such pair exists."""
    if sender_role not in heads or receiver_role not in heads:
        return None
    senders = {(int(r.layer), int(r.head)) for r in heads[heads[sender_role]].itertuples()}
    receivers = {(int(r.layer), int(r.head)) for r in heads[heads[receiver_role]].itertuples()}
    m = pairs[pairs["mode"] == mode]
    s = list(zip(m["sender_layer"], m["sender_head"]))
    r = list(zip(m["receiver_layer"], m["receiver_head"]))
    role = np.array([a in senders and b in receivers for a, b in zip(s, r)])
    if not role.any():
        return None
    s_layers = {lay for lay, _ in senders}
    r_layers = {lay for lay, _ in receivers}
    same = np.array([a[0] in s_layers and b[0] in r_layers for a, b in zip(s, r)]) & ~role
    others = m["score"].to_numpy()[same]
    values = m["score"].to_numpy()[role]
    best = m[role].nlargest(1, "score").iloc[0]
    return {"mode": MODE_NAMES[mode], "n_pairs": int(role.sum()), "mean": float(values.mean()),
            "others_mean": float(others.mean()) if others.size else float("nan"),
            "others_sd": float(others.std(ddof=1)) if others.size > 1 else float("nan"),
            "share_above_others": float((values[:, None] > others[None]).mean())
            if others.size else float("nan"),
            "best": {"sender": format_head((int(best.sender_layer), int(best.sender_head))),
                     "receiver": format_head((int(best.receiver_layer),
                                              int(best.receiver_head))),
                     "score": float(best.score)}}


def _head_evidence(heads: pd.DataFrame, entries: dict, pairs: pd.DataFrame | None,
                   pattern_sets: dict, dla: pd.DataFrame | None = None) -> dict:
    out: dict = {}
    top: dict[tuple[int, int], list[str]] = {}
    for role in ROLES:
        if role not in heads.columns:
            continue
        for head in top_heads(heads, role):  # the heads the causal part ablates alone
            top.setdefault(head, []).append(role)
    for head, roles in sorted(top.items()):
        item: dict = {"roles": roles}
        effects = {role: entries[role]["head_effects"][format_head(head)] for role in roles
                   if format_head(head) in entries.get(role, {}).get("head_effects", {})}
        if effects:
            item["head_effect"] = effects
        if pairs is not None:
            item["partners"] = _partners(pairs, head)
        if dla is not None:
            mine = dla[(dla["layer"] == head[0]) & (dla["head"] == head[1])]
            if len(mine):
                item["dla"] = {str(r.segment): float(r.value) for r in mine.itertuples()}
        sets = [name for name, hs in pattern_sets.items() if format_head(head) in hs]
        if sets:
            item["pattern_sets"] = sets
        out[format_head(head)] = item
    return out


def _partners(pairs: pd.DataFrame, head: tuple[int, int]) -> dict:
    layer, h = head
    send = pairs[(pairs["receiver_layer"] == layer) & (pairs["receiver_head"] == h)]
    recv = pairs[(pairs["sender_layer"] == layer) & (pairs["sender_head"] == h)]
    return {"senders": [{"head": format_head((int(r.sender_layer), int(r.sender_head))),
                         "mode": MODE_NAMES[r.mode], "score": float(r.score)}
                        for r in send.nlargest(PARTNERS, "score").itertuples()],
            "receivers": [{"head": format_head((int(r.receiver_layer), int(r.receiver_head))),
                           "mode": MODE_NAMES[r.mode], "score": float(r.score)}
                          for r in recv.nlargest(PARTNERS, "score").itertuples()]}


# --- findings ------------------------------------------------------------------------------------

def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "nan"
    return f"{x:.{digits}g}"


def causal_lines(doc: dict, labels: dict[str, str] | None = None) -> list[str]:
    """One finding per role tested (and one per descriptive or empty role), with its control;
    ``labels`` name the heads of a role otherwise than "<role label>s"."""
    out = []
    for role, e in doc.get("causal", {}).items():
        label = (labels or {}).get(role) or (ROLES[role].label + "s" if role in ROLES else role)
        if e.get("descriptive"):
            out.append(f"{label}: descriptive only, no causal test: {e.get('note', '')}")
            continue
        if "effect" not in e:
            out.append(f"{label}: not tested: {e.get('note', '')}")
            continue
        edit = "redistributing the attention on token 0 of" if e["ablation"] == "redistribute" \
            else "mean-ablating"
        verdict = ("beyond random heads" if e["p_value"] <= 0.05 else
                   "NOT beyond random heads of the same layers")
        line = (f"{edit} the {e['n_heads']} {label} changes the {e['metric']} by "
                f"{_fmt(e['effect'])} {e['unit']} (95% CI {_fmt(e['effect_lo'])} to "
                f"{_fmt(e['effect_hi'])}, {e['n_prompts']} prompts); {e['n_draws']} random head "
                f"sets of the same layers: {_fmt(e['control_mean'])} ± {_fmt(e['control_sd'])}, "
                f"p = {_fmt(e['p_value'], 2)}: {verdict} ({e['source']})")
        if "answer_flips" in e:
            line += (f"; the preferred answer flips on {e['answer_flips']:.0%} of prompts "
                     f"(random heads {e['control_answer_flips']:.0%})")
        second = e.get("secondary")
        if second and "effect" in second:
            line += (f"; the {len(second['heads'])} induction heads' attention on the induction "
                     f"pattern changes by {_fmt(second['effect'])} (random "
                     f"{_fmt(second['control_mean'])} ± {_fmt(second['control_sd'])}, p = "
                     f"{_fmt(second['p_value'], 2)})")
        out.append(line)
    return out


def composition_lines(doc: dict) -> list[str]:
    """The baseline, the top pair per mode, and previous-token -> induction K-composition."""
    comp = doc.get("composition")
    if not comp:
        return []
    base = comp.get("baseline", {})
    bits = []
    for mode in ("Q", "K", "V"):
        best = [p for p in comp.get("top_pairs", []) if p["mode"] == mode][:1]
        if best:
            b = best[0]
            bits.append(f"{mode} {b['sender']} -> {b['receiver']} {b['score']:.3f}")
    out = [f"composition scores (weights only, norms folded): random-matrix baseline "
           f"{_fmt(base.get('mean'))} ± {_fmt(base.get('sd'))}; strongest pairs: "
           f"{'; '.join(bits)}"]
    pair = comp.get("previous_token_to_induction")
    if pair:
        out.append(f"previous-token -> induction heads by K-composition: mean "
                   f"{pair['mean']:.3f} over {pair['n_pairs']} pairs vs {_fmt(pair['others_mean'])}"
                   f" ± {_fmt(pair['others_sd'])} for the other pairs of the same layers "
                   f"({pair['share_above_others']:.0%} of comparisons higher); best "
                   f"{pair['best']['sender']} -> {pair['best']['receiver']} "
                   f"{pair['best']['score']:.3f}")
    return out
