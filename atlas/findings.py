"""What an atlas says, in lines a researcher would write down, and two atlases compared.

Every number in a finding is computed from ``atlas.parquet`` and the evidence in ``atlas.json``;
nothing is typed in. Layer bands are thirds of the depth (early, middle, late).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from atlas.roles import ROLES
from workbench.heads import format_head

BANDS = ("early", "middle", "late")


def band(layer: int | np.ndarray, n_layers: int):
    """0, 1, 2 for the early, middle and late third of ``n_layers`` (by relative depth)."""
    return np.minimum((np.asarray(layer) * 3) // n_layers, 2)


def band_ranges(n_layers: int) -> list[str]:
    """``["0-9", "10-19", "20-29"]`` for 30 layers."""
    layers = np.arange(n_layers)
    return [f"{layers[band(layers, n_layers) == b].min()}-{layers[band(layers, n_layers) == b].max()}"
            if (band(layers, n_layers) == b).any() else "-" for b in range(3)]


def head_name(layer: int, head: int) -> str:
    """The head as :func:`workbench.heads.format_head` writes it (``L9H6``)."""
    return format_head((layer, head))


def _role_doc(doc: dict, name: str) -> dict:
    return next(r for r in doc["roles"] if r["name"] == name)


def _layers(rows: pd.DataFrame) -> str:
    if rows.empty:
        return "none"
    lo, hi = int(rows["layer"].min()), int(rows["layer"].max())
    return f"layer {lo}" if lo == hi else f"layers {lo}-{hi}"


def top_heads(heads: pd.DataFrame, role: str, k: int = 5) -> pd.DataFrame:
    """The ``k`` best-ranked heads of ``role`` (rank order), with score and label."""
    ranked = heads[heads[f"{role}_rank"].notna()].sort_values([f"{role}_rank", "layer", "head"])
    return ranked.head(k)[["layer", "head", f"{role}_score", f"{role}_rank", role]]


def role_summary(heads: pd.DataFrame, n_layers: int) -> pd.DataFrame:
    """Per role: heads labelled, their share, counts per layer band and the top 5 heads."""
    rows = []
    for name, role in ROLES.items():
        if heads[f"{name}_score"].isna().all():
            continue
        held = heads[heads[name]]
        counts = np.bincount(band(held["layer"].to_numpy(), n_layers), minlength=3)
        top = top_heads(heads, name)
        rows.append({"role": name, "label": role.label, "heads": len(held),
                     "share": len(held) / len(heads),
                     **{b: int(c) for b, c in zip(BANDS, counts)},
                     "top": ", ".join(f"{head_name(r.layer, r.head)} {_fmt(getattr(r, name + '_score'))}"
                                      for r in top.itertuples())})
    return pd.DataFrame(rows)


def _fmt(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    if 0.001 <= abs(value) < 100:
        return f"{value:.3f}"
    return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"


def findings(heads: pd.DataFrame, doc: dict) -> list[str]:
    """The atlas's findings, one line each (see the module docstring)."""
    n_layers = int(doc["model"]["n_layers"])
    total = len(heads)
    ev = doc.get("evidence", {})
    out: list[str] = []
    if heads["sink_score"].notna().any():
        out.append(_sink_line(heads, doc, ev, total, n_layers))
    for name in ("previous_token", "duplicate_token", "induction"):
        if heads[f"{name}_score"].notna().any():
            out.append(_pattern_line(heads, doc, name, total))
    if heads["context_score"].notna().any():
        out.append(_context_line(heads, doc))
    if ev.get("layer_entropy_norm"):
        out.append(_entropy_line(heads, doc, ev["layer_entropy_norm"]))
    if ev.get("first_token_mass"):
        out.append(_position_line(ev["first_token_mass"]))
    out += _circuit_lines(heads, doc, ev.get("circuits"))
    if doc.get("ioi_classes"):
        out.append(_ioi_class_line(doc["ioi_classes"]))
    from atlas.evidence import causal_lines, composition_lines

    out += causal_lines(doc) + composition_lines(doc)
    return out


def _sink_line(heads, doc, ev, total, n_layers) -> str:
    sinks = heads[heads["sink"]]
    cut = _role_doc(doc, "sink")["threshold"]
    line = (f"sink heads (mean attention on token 0 > {cut:g}): {len(sinks)} of {total} "
            f"({len(sinks) / total:.0%})")
    first = ev.get("token0_massive_layer")
    if first is not None and len(sinks):
        late = (sinks["layer"] >= first).mean()
        dims = ", ".join(map(str, ev.get("sink_dims", []))) or "none found"
        return (line + f"; {late:.0%} of them in layers {first}-{n_layers - 1}, where token 0 "
                f"carries a massive activation (from layer {first}; sink dims {dims})")
    counts = np.bincount(band(sinks["layer"].to_numpy(), n_layers), minlength=3)
    return line + "; by depth " + ", ".join(f"{b} {c}" for b, c in zip(BANDS, counts))


def _pattern_line(heads, doc, name, total) -> str:
    role = _role_doc(doc, name)
    ceiling = role.get("ceiling") or float("nan")
    held = heads[heads[name]]
    top = top_heads(heads, name, 1).iloc[0]
    score = top[f"{name}_score"]
    best = (f"top {head_name(top['layer'], top['head'])} {score:.3f} ({score / ceiling:.2f} of the "
            f"ceiling)")
    label = ROLES[name].label + "s"
    if held.empty:
        return (f"{label}: none above {role['threshold']:g} of the ceiling {ceiling:.2f}; {best}")
    return (f"{label} (> {role['threshold']:g} of the ceiling {ceiling:.2f}): {len(held)} of "
            f"{total}, {_layers(held)}; {best}")


def _context_line(heads, doc) -> str:
    held = heads[heads["context"]]
    top = top_heads(heads, "context", 1).iloc[0]
    k = _role_doc(doc, "context")["threshold"]
    line = (f"context-reading heads (top {k:g} by VHD, passage removed): {_layers(held)}; top "
            f"{head_name(top['layer'], top['head'])} {top['context_score']:.3g}")
    if heads["sink_score"].notna().any():
        line += f"; {int((held['sink']).sum())} of them are sink heads"
    return line


def _entropy_line(heads, doc, per_layer) -> str:
    values = np.asarray(per_layer)
    lo, hi = int(values.argmin()), int(values.argmax())
    n_low, n_high = int(heads["low_entropy"].sum()), int(heads["high_entropy"].sum())
    return (f"attention entropy: broadest layer {hi} (mean normalised entropy {values[hi]:.2f}), "
            f"sharpest layer {lo} ({values[lo]:.2f}); {n_low} low-entropy heads "
            f"(< {_role_doc(doc, 'low_entropy')['threshold']:g}), {n_high} high-entropy "
            f"(> {_role_doc(doc, 'high_entropy')['threshold']:g})")


def _position_line(mass: dict, level: float = 0.9) -> str:
    parts = []
    names = {"product": "product of attention matrices", "rollout": "residual-aware rollout"}
    for cond in ("product", "rollout"):
        values = np.asarray(mass.get(cond, []))
        if not values.size:
            continue
        above = np.nonzero(values >= level)[0]
        parts.append(f"at depth {int(above[0])} ({names[cond]})" if above.size else
                     f"never by the {names[cond]} (max {values.max():.2f})")
    return (f"position bias: the last token's cumulative attention on token 0 reaches {level:g} "
            f"{' and '.join(parts)}")


def _ioi_class_line(classes: dict) -> str:
    """The IOI head classes (``atlas.json["ioi_classes"]``, :mod:`circuits.ioi_classes`) in one
    line, Wang et al.'s order; a class no head meets is named as empty, not left out."""
    from circuits.ioi_classes import CLASSES
    from workbench.figures.ioi_sets import LABELS

    parts = [f"{LABELS[name]} {', '.join(classes[name]['heads']) or 'none'}"
             for name in CLASSES if isinstance(classes.get(name), dict)]
    return ("IOI head classes (Wang et al. 2022, path patching with bootstrap intervals; criteria "
            "in atlas.json): " + "; ".join(parts))


def _sized_line(task: str, c: dict, row: dict) -> str:
    """One finding per task from ``atlas.json["circuits"]`` (:mod:`atlas.circuit_summary`): the
    circuit's size and normalised faithfulness with its interval, the random-circuit control,
    the held-out check, and plainly whether the target was reached."""
    method = c["method"].replace("_", " ")
    f, lo, hi = (c.get(k) if c.get(k) is not None else float("nan")
                 for k in ("faithfulness_normalised", "lo", "hi"))
    rand = c.get("random_mean")
    control = (f"random {c['size']}-head circuits {rand:.2f} +- {c.get('random_sd') or 0:.2f}"
               if rand is not None else "no random circuits drawn")
    if c.get("target") is None:
        head = f"{task} circuit ({method}, {c['selection']}): {c['size']} heads"
    elif c.get("reached"):
        head = (f"{task} circuit ({method}, smallest faithful prefix then refined, target "
                f"{c['target']:g}): {c['size']} heads")
    else:
        head = (f"{task} circuit: NO circuit of up to {c.get('cap')} heads reaches normalised "
                f"faithfulness {c['target']:g} ({method}); the most faithful found has "
                f"{c['size']} heads")
    line = (f"{head}, normalised faithfulness {f:.2f} [{lo:.2f}, {hi:.2f}] ({control}); LD clean "
            f"{row['mean_logit_diff_clean']:.2f} / corrupted {row['mean_logit_diff_corrupted']:.2f}")
    held = c.get("held_out")
    if held:
        line += (f"; on {held['n_prompts']} held-out prompts {held['faithfulness_normalised']:.2f} "
                 f"[{held['lo']:.2f}, {held['hi']:.2f}]")
    return line


def _circuit_lines(heads, doc, circuits) -> list[str]:
    if not circuits:
        return []
    probe = doc.get("circuit_method", "attribution_patching")
    out = []
    sized = doc.get("circuits", {})
    for task, row in circuits["tasks"].items():
        if task in sized:
            line = _sized_line(task, sized[task], row)
            name = f"{task}_circuit"
            if name in ROLES and heads["sink_score"].notna().any():
                members = heads[heads[name]]
                line += f"; {int(members['sink'].sum())} of its {len(members)} heads are sink heads"
            out.append(line)
            continue
        name = f"{task}_circuit"
        faith = row.get(probe, {})
        line = (f"{task} circuit ({probe.replace('_', ' ')}, top "
                f"{_role_doc(doc, name)['threshold']:g} heads" if name in ROLES else
                f"{task} circuit ({probe.replace('_', ' ')}")
        line += (f"): faithfulness {faith.get('faithfulness', float('nan')):.3f} of the model's "
                 f"LD (random circuits {faith.get('faithfulness_random', float('nan')):.3f}); "
                 f"LD clean {row['mean_logit_diff_clean']:.2f} / corrupted "
                 f"{row['mean_logit_diff_corrupted']:.2f}")
        if name in ROLES and heads["sink_score"].notna().any():
            members = heads[heads[name]]
            line += f"; {int(members['sink'].sum())} of its {len(members)} heads are sink heads"
        out.append(line)
    for pair, o in circuits.get("overlap", {}).get(probe, {}).items():
        first, second = pair.split("|")
        out.append(f"{first} and {second} circuits share {int(o['n_shared'])} heads (Jaccard "
                   f"{o['jaccard']:.3f}; random sets {o['expected_jaccard']:.3f}, "
                   f"{o['expected_shared']:.2f} shared expected; p = {o['p_value']:.2g})")
    return out


def compare(a, b) -> tuple[pd.DataFrame, list[str]]:
    """Two atlases side by side. Heads are matched by index only when both come from the same
    model; otherwise by relative depth (``layer / n_layers``, thirds), with a warning that head
    indices are not comparable. Returns a table (one row per role, or per role and band) and
    the lines to print (warnings first)."""
    same = (a.doc["model"]["name"] == b.doc["model"]["name"] and a.n_layers == b.n_layers
            and a.n_heads == b.n_heads)
    lines, rows = [], []
    roles = [r for r in ROLES if a.heads[f"{r}_score"].notna().any()
             and b.heads[f"{r}_score"].notna().any()]
    if same:
        for r in roles:
            sa = set(zip(*[a.heads.loc[a.heads[r], c] for c in ("layer", "head")]))
            sb = set(zip(*[b.heads.loc[b.heads[r], c] for c in ("layer", "head")]))
            union = sa | sb
            rows.append({"role": r, "a_heads": len(sa), "b_heads": len(sb),
                         "shared": len(sa & sb),
                         "jaccard": len(sa & sb) / len(union) if union else float("nan")})
        return pd.DataFrame(rows), lines
    lines.append(f"warning: the models differ ({a.doc['model']['name']} {a.n_layers}x{a.n_heads} "
                 f"vs {b.doc['model']['name']} {b.n_layers}x{b.n_heads}): head indices are not "
                 "comparable; heads are aligned by relative depth (layer / n_layers, thirds)")
    for r in roles:
        for i, name in enumerate(BANDS):
            fa = _band_share(a, r, i)
            fb = _band_share(b, r, i)
            hi = max(fa, fb)
            rows.append({"role": r, "band": name, "a_layers": band_ranges(a.n_layers)[i],
                         "b_layers": band_ranges(b.n_layers)[i], "a_share": fa, "b_share": fb,
                         "overlap": min(fa, fb) / hi if hi > 0 else float("nan")})
    return pd.DataFrame(rows), lines


def _band_share(atlas, role: str, i: int) -> float:
    """The share of the band's heads that hold ``role``."""
    h = atlas.heads
    in_band = band(h["layer"].to_numpy(), atlas.n_layers) == i
    return float(h.loc[in_band, role].mean()) if in_band.any() else float("nan")
