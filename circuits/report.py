"""The plain-text summary of a ``workbench circuits`` run (reads its parquet tables only)."""

from __future__ import annotations

from circuits.components import report_lines
from circuits.ioi_run import ioi_report_lines
from circuits.sized import report_lines as sized_report_lines
from workbench.heads import format_head
from workbench.store import RunDir

PROBE = {"activation": "activation_patching", "attribution": "attribution_patching",
         "path": "path_patching", "eap-ig": "eap_ig_nodes"}


def report(run: RunDir) -> str:
    """A plain-text summary of a circuits run: task metrics, circuits with faithfulness, overlap,
    method agreement and timings (reads the parquet tables only)."""
    def frame(name):
        return run.read_table(name).to_pandas() if name in run.tables() else None

    def value(df, metric, **where):
        rows = df[df.metric == metric]
        for column, wanted in where.items():
            rows = rows[rows[column] == wanted]
        return float(rows.value.iloc[0]) if len(rows) else float("nan")

    lines = ["task: mean LD clean / corrupted (logits), accuracy clean / corrupted"]
    tm = frame("task_metrics")
    for task in dict.fromkeys(tm.segment):
        ld = [value(tm, "mean_logit_diff", segment=task, condition=c)
              for c in ("clean", "corrupted")]
        acc = [value(tm, "accuracy", segment=task, condition=c) for c in ("clean", "corrupted")]
        lines.append(f"  {task}: {ld[0]:.3f} / {ld[1]:.3f}; {acc[0]:.2f} / {acc[1]:.2f}")
    lines.append("circuit: size, faithfulness (circuit/model), normalised (95% bootstrap intervals "
                 "over prompts), random-circuit baseline; top heads' scores [95% interval]")
    circ, faith = frame("circuits"), frame("faithfulness")
    timings = run.read_manifest().get("timings", {})
    for (probe, task), _ in faith.groupby(["probe", "segment"], sort=False):
        c, f = circ[(circ.probe == probe) & (circ.segment == task)], \
            faith[(faith.probe == probe) & (faith.segment == task)]
        heads = ", ".join(f"{format_head((r.layer, r.head))}" for r in c[c.metric == "member"]
                          .itertuples())
        method = next(k for k, v in PROBE.items() if v == probe)
        lines.append(f"  {probe} {task}: {int(value(c, 'size'))} heads, "
                     f"{value(f, 'faithfulness'):.3f} [{value(f, 'faithfulness_lo'):.3f}, "
                     f"{value(f, 'faithfulness_hi'):.3f}], "
                     f"{value(f, 'faithfulness_normalised'):.3f} "
                     f"[{value(f, 'faithfulness_normalised_lo'):.3f}, "
                     f"{value(f, 'faithfulness_normalised_hi'):.3f}], "
                     f"{value(f, 'faithfulness_random'):.3f}; "
                     f"{timings.get(f'{method}.{task}_s')} s; heads {heads}")
        lines += _score_lines(frame("head_effects"), probe, task)
        edges = c[c.metric == "edge"]
        if len(edges):
            lines.append("    edges (sender -> receiver: the sender's score through that receiver "
                         "alone): " + ", ".join(
                             f"{format_head((r.layer, r.head))}->{r.condition.split('=', 1)[1]} "
                             f"{r.value:+.3f}" for r in edges.itertuples()))
    lines += sized_report_lines(frame("circuit_search"), frame("faithfulness_curve"))
    ov = frame("overlap")
    if ov is not None:
        lines.append("overlap: shared, Jaccard, overlap coefficient, expected shared, "
                     "p (random sets)")
        for (probe, pair), o in ov.groupby(["probe", "segment"], sort=False):
            lines.append(f"  {probe} {pair}: {int(value(o, 'n_shared'))}, "
                         f"{value(o, 'jaccard'):.3f}, {value(o, 'overlap_coefficient'):.3f}, "
                         f"{value(o, 'expected_shared'):.2f}, {value(o, 'p_value'):.2e}")
    both = frame("directions")
    if both is not None:
        lines.append("both directions (activation patching of the circuit heads: noising = "
                     "corrupted into clean, denoising = clean into corrupted; ! = matters "
                     "(|score| >= 0.05) in one only)")
        for task, rows in both.groupby("segment", sort=False):
            wide = rows.pivot_table(index=["layer", "head"], columns="metric", values="value")
            lines.append(f"  {task}: {int(wide.one_direction_only.sum())} of {len(wide)} heads "
                         "matter in one direction only")
            lines.append("    " + ", ".join(
                f"{format_head((l, h))} {r.score_noising:+.3f}/{r.score_denoising:+.3f}"
                f"{'!' if r.one_direction_only else ''}" for (l, h), r in wide.iterrows()))
    spot = frame("spot_check")
    if spot is not None:
        lines += spot_check_lines(spot)
    lines += report_lines(frame("patching_grid"), frame("direct_logit_attribution"))
    lines += ioi_report_lines(frame("ioi_classes"))
    ag = frame("method_agreement")
    if ag is not None:
        lines.append("method agreement (Spearman of head scores)")
        lines += [f"  {r.segment} {r.condition}: {r.value:.3f}" for r in ag.itertuples()]
    return "\n".join(lines)


def spot_check_lines(spot) -> list[str]:
    """Report lines of the ``spot_check`` table: per task, how many heads disagree, then each head's
    attribution and activation scores and its worst prompt."""
    lines = ["spot check (attribution vs activation patching of the top heads by |attribution|; "
             "scores as fractions of the gap; worst prompt's effects in logits)"]
    for task, rows in spot.groupby("segment", sort=False):
        wide = rows.pivot_table(index=["layer", "head"], columns="metric", values="value")
        worst = rows[rows.metric == "worst_effect_attribution"].set_index(["layer", "head"])
        lines.append(f"  {task}: {int(wide.disagrees.sum())} of {len(wide)} disagree")
        for (layer, head), r in wide.sort_values("score_attribution", key=abs,
                                                 ascending=False).iterrows():
            flag = "  DISAGREES" if r.disagrees else ""
            lines.append(f"    {format_head((layer, head))}: {r.score_attribution:+.3f} vs "
                         f"{r.score_activation:+.3f}; worst prompt "
                         f"{worst.prompt_id[(layer, head)]}: {r.worst_effect_attribution:+.2f} vs "
                         f"{r.worst_effect_activation:+.2f}{flag}")
    return lines


def _score_lines(effects, probe: str, task: str, top: int = 10) -> list[str]:
    """The ``top`` heads by |score| of a method's first stage with their bootstrap intervals."""
    rows = effects[(effects.probe == probe) & (effects.segment == task)]
    first = rows.condition.iloc[0]
    wide = rows[rows.condition == first].pivot_table(index=["layer", "head"], columns="metric",
                                                     values="value")
    wide = wide.reindex(wide.score.abs().sort_values(ascending=False).index)[:top]
    return ["    " + ", ".join(f"{format_head((l, h))} {r.score:+.3f} [{r.score_lo:+.3f}, "
                               f"{r.score_hi:+.3f}]" for (l, h), r in wide.iterrows())]
