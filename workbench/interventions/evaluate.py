"""``workbench intervene``: run a prompt set without and with an intervention (and each sweep value)
and record what changed, as a run directory.

Tables in ``runs/<run_id>/`` (record schema, :mod:`workbench.records`; ``probe`` =
``intervention``; ``condition`` = ``baseline``, ``intervened`` or a sweep value such as
``alpha=0.5``, which the app's Interventions page draws as dose-response curves):

* ``interventions``: per prompt ``logit_diff`` (answer - distractor at the last token, when every
  prompt has both) and ``kl_divergence`` (``KL(baseline || intervened)`` of the next-token
  distribution, nats); per condition (``prompt_id`` null) ``mean_logit_diff``, ``accuracy``
  (fraction with LD > 0), ``logit_diff_change`` (mean LD minus the baseline's) and
  ``mean_kl_divergence``; per prompt ``head_output_rel_error`` (``||z' - z|| / ||z||`` of each
  edited head's ``hook_z`` at the last token, mean over the spec's heads; edits at
  ``hook_result`` do not show in it) and its ``mean_``; for a ``sigma`` sweep, ``critical_sigma``
  (the task metric, see :func:`critical_level`) and ``critical_sigma_head`` (the first sigma
  whose mean head-output relative error reaches 1: noise as large as the head's output).
  ``layer``/``head`` name the head when the spec acts on exactly one head, else null.
* one table per probe given (``--probes``), its records with ``condition`` set, so any probe
  metric can be compared between conditions; ``prompts`` and ``tokens``.

The manifest holds the spec verbatim (``intervention.spec_text``), the resolved heads of each
operation, the sweep, the edit verification and optional greedy generations.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from workbench.errors import InputError
from workbench.forward import last_logits
from workbench.heads import by_layer, format_head
from workbench.interventions.check import Checked, check_spec
from workbench.interventions.hooks import attn_result, intervention_hooks, needs_attn_result
from workbench.interventions.spec import SWEEPABLE, Spec, with_value
from workbench.interventions.verify import verify_edits
from workbench.metrics import answer_token_ids, kl_divergence, logit_diff
from workbench.records import (PROMPTS_SCHEMA, SCHEMA_VERSION, TOKENS_SCHEMA, concat, conform,
                               records)
from workbench.run import git_state, library_versions
from workbench.phases import Phases
from workbench.store import RunDir, same_config_key
from workbench.tokens import (TokenizedPrompt, make_batches, pad_token_id, prompt_rows,
                              token_rows, tokenize_prompt_set)

TABLE = "interventions"
PROBE = "intervention"
UNITS = {"logit_diff": "logits", "mean_logit_diff": "logits", "accuracy": "fraction of prompts",
         "logit_diff_change": "logits (mean LD minus the baseline's)",
         "kl_divergence": "nats, KL(baseline || intervened)", "mean_kl_divergence": "nats",
         "head_output_rel_error": "fraction (||z' - z|| / ||z|| at the last token)",
         "mean_head_output_rel_error": "fraction",
         "critical_sigma": "sigma (relative value-noise std); NaN: never degraded",
         "critical_sigma_head": "sigma; NaN: the head's output error never reached 1"}


@dataclass(frozen=True)
class Sweep:
    """One swept parameter and its values (``alpha=0,0.5,1``)."""

    name: str
    values: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> "Sweep":
        """``"alpha=0,0.5,1"`` -> ``Sweep("alpha", (0.0, 0.5, 1.0))``.

        Raises:
            InputError: not ``name=v1,v2,...`` with a sweepable name and finite numeric values.
        """
        name, sep, raw = str(text).partition("=")
        name = name.strip()
        if not sep or name not in SWEEPABLE:
            raise InputError(f"--sweep {text!r}: expected NAME=v1,v2,... with NAME one of "
                             f"{', '.join(SWEEPABLE)}")
        try:
            values = tuple(dict.fromkeys(float(v) for v in raw.split(",") if v.strip()))
        except ValueError:
            raise InputError(f"--sweep {text!r}: the values must be numbers") from None
        if not values:
            raise InputError(f"--sweep {text!r}: no values")
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise InputError(f"--sweep {text!r}: {bad[0]} is not a finite number; give finite "
                             "values")
        return cls(name, values)


@dataclass
class InterveneOptions:
    batch_size: int = 8
    sweep: Sweep | None = None
    threshold: float = 0.5  # critical_sigma: relative drop of mean LD (KL in nats without answers)
    generate: int = 0  # greedy tokens per condition for the first n_generate prompts (0: none)
    n_generate: int = 3
    probes: list = field(default_factory=list)  # probe objects whose metrics are compared
    runs_dir: Path = Path("runs")
    run_id: str | None = None
    overwrite: bool = False
    progress: bool = True
    command: list[str] | None = None
    resume: bool = False  # continue an interrupted run: finished batches reused

    def __post_init__(self) -> None:
        """Raises InputError for a non-finite or non-positive ``threshold``, a ``batch_size``
        below 1 or a negative ``generate`` / ``n_generate``."""
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise InputError(f"--threshold {self.threshold}: expected a finite number > 0")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: expected at least 1")
        if self.generate < 0 or self.n_generate < 0:
            raise InputError(f"--generate {self.generate} / --n-generate {self.n_generate}: "
                             "expected 0 or more")


def conditions(checked: Checked, sweep: Sweep | None) -> list[tuple[str, Checked]]:
    """``[(condition label, checked spec)]``: ``intervened``, or one per sweep value
    (``alpha=0.5``) with the parameter set in every operation that has it."""
    if sweep is None:
        return [("intervened", checked)]
    return [(f"{sweep.name}={v:g}", replace(checked, spec=with_value(checked.spec, sweep.name, v),
                                             cache=checked.cache)) for v in sweep.values]


def critical_level(levels: list[float], metric: list[float], base: float, threshold: float,
                   relative: bool = True) -> float:
    """The first level (in sweep order, ascending) at which ``metric`` degrades past
    ``threshold``: ``base - metric >= threshold * |base|`` (``relative``, e.g. mean LD) or
    ``metric >= threshold`` (not ``relative``, e.g. mean KL in nats). NaN when none does.

    Indirect Attention (arXiv 2509.26015) reports a critical noise level sigma* = 1.
    """
    for level, value in sorted(zip(levels, metric)):
        if (relative and base - value >= threshold * abs(base)) or \
                (not relative and value >= threshold):
            return float(level)
    return math.nan


def has_answers(tokenized: list[TokenizedPrompt]) -> bool:
    """True when every prompt has an answer and a distractor, False when none has.

    Raises:
        InputError: some prompts have them and others do not.
    """
    has = [bool(t.prompt.answer and t.prompt.distractor) for t in tokenized]
    if any(has) and not all(has):
        bad = tokenized[has.index(False)]
        raise InputError(f"{bad.prompt.source}: prompt {bad.id!r} has no answer/distractor while "
                         "others do; the logit difference needs them on every prompt")
    return all(has)


def intervene(model, prompt_set, spec: Spec, options: InterveneOptions) -> RunDir:
    """Evaluate ``spec`` on ``prompt_set`` and write the run (tables: module docstring).

    Everything is checked before the first forward pass and before the run directory exists.

    Raises:
        InputError: a bad spec, sweep or prompt set (see :func:`check_spec`, :meth:`Sweep.parse`).
        RunStateError: the run exists and neither ``resume`` nor ``overwrite`` is on, or it was
            made with another configuration (``resume`` reuses its finished batches).
        EditNotApplied: the model ignores an edit the spec makes.
    """
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer,
                                    prepend_bos=model.info.prepend_bos, n_ctx=model.info.n_ctx,
                                    model_name=model.info.name)
    checked = check_spec(model, spec, tokenized)
    conds = conditions(checked, options.sweep)
    answers = has_answers(tokenized)
    if options.generate > 0 and checked.sources:
        raise InputError("--generate: kv_misalign and resample ablation need a corrupted_text "
                         "of the same length, which a growing prompt does not have")
    probes = [p.prepare(model, tokenized) for p in options.probes]
    manifest = _manifest(model, prompt_set, tokenized, checked, options)
    run, state = RunDir.create(options.runs_dir, manifest["run_id"], manifest,
                               resume=options.resume, overwrite=options.overwrite,
                               same_config=same_config_key(manifest["config_key"]))
    if state == "complete":
        return run
    with Phases.guarding(run) as phases:  # finished batches and generations, reused by --resume
        verified = verify_edits(model, checked.kinds)
        tables = _evaluate(model, tokenized, conds, answers, probes, options, run.run_id,
                           phases)
        generations = phases.run("generations", lambda: _generations(model, tokenized, conds,
                                                                     options))
        tables["prompts"] = pa.table(prompt_rows(tokenized), schema=PROMPTS_SCHEMA)
        tables["tokens"] = pa.table(token_rows(tokenized, model.tokenizer), schema=TOKENS_SCHEMA)
        written = {}
        for name, table in tables.items():
            run.write_table(name, table)
            if "metric" in table.column_names:
                written[name] = {"rows": table.num_rows,
                                 "metrics": sorted(set(table.column("metric").to_pylist()))}
        run.update_manifest(status="complete", finished=_now(), tables=written,
                            verification=verified, generations=generations)
    return run


def _evaluate(model, tokenized, conds, answers: bool, probes, options, run_id: str,
              phases: Phases | None = None) -> dict[str, pa.Table]:
    from rich.progress import Progress

    batches = make_batches(tokenized, options.batch_size, pad_token_id(model.tokenizer))
    rows: list[pa.Table] = []
    probe_rows: dict[str, list[pa.Table]] = {}
    one = _one_head(conds[0][1])
    with Progress(disable=not options.progress, transient=True) as bar:
        task = bar.add_task("intervene", total=len(batches))
        for index, batch in enumerate(batches):
            def compute(batch=batch):
                mine: dict[str, list[pa.Table]] = {}
                return _batch_records(model, batch, conds, answers, probes, one, mine), mine

            found, theirs = (phases or Phases(None)).run(f"batch {index}", compute)
            rows += found
            for name, parts in theirs.items():
                probe_rows.setdefault(name, []).extend(parts)
            bar.advance(task)
    table = concat(rows)
    table = pa.concat_tables([table, _summaries(table, conds, options, one)])
    out = {TABLE: conform(table, run_id=run_id, probe=PROBE)}
    for name, parts in probe_rows.items():
        out[name] = conform(concat(parts), run_id=run_id, probe=name)
    return out


def _batch_records(model, batch, conds, answers: bool, probes, one: dict,
                   probe_rows: dict[str, list[pa.Table]]) -> list[pa.Table]:
    """One batch: the baseline, then every condition (records of the module docstring)."""
    from workbench.run import BatchHooks

    heads = sorted({h for hs in conds[0][1].heads for h in hs})
    pair = (answer_token_ids(model.tokenizer, batch.prompts, "answer"),
            answer_token_ids(model.tokenizer, batch.prompts, "distractor")) if answers else None
    ids, rows = batch.prompt_ids, []
    z_base: dict[int, torch.Tensor] = {}
    base = last_logits(model, batch, _z_hooks(heads, batch, z_base))
    if pair is not None:
        rows.append(records("logit_diff", logit_diff(base, *pair).cpu().numpy(), prompt_id=ids,
                            condition="baseline"))
    if probes:
        _probe_records(BatchHooks(model, probes, attention="eager"), batch, "baseline",
                       probe_rows)
    for label, checked in conds:
        hooks = intervention_hooks(model, checked, batch)
        z_new: dict[int, torch.Tensor] = {}
        with attn_result(model, needs_attn_result(checked)):
            new = last_logits(model, batch, hooks + _z_hooks(heads, batch, z_new))
            if probes:
                with model.bridge.hooks(fwd_hooks=hooks):
                    # eager always: under sdpa the edits of hook_pattern / hook_attn_scores
                    # would not fire, and a resid-only probe would see no intervention
                    _probe_records(BatchHooks(model, probes, attention="eager"), batch, label,
                                   probe_rows)
        cols = {"prompt_id": ids, "condition": label, **one}
        if pair is not None:
            rows.append(records("logit_diff", logit_diff(new, *pair).cpu().numpy(), **cols))
        rows += [records("kl_divergence", kl_divergence(base, new).cpu().numpy(), **cols),
                 records("head_output_rel_error", _rel_error(z_base, z_new), **cols)]
    return rows


def _z_hooks(heads, batch, into: dict) -> list:
    """Hooks keeping ``hook_z`` of ``heads`` at each prompt's last real token (registered after
    the intervention's hooks, so they see the edited ``z``): ``into[layer]`` ``[batch, n, d_head]``.
    """
    def keep(layer: int, idx: list[int]):
        def hook(z, hook):
            rows = torch.arange(batch.size, device=z.device)
            into[layer] = z[rows, batch.last_pos().to(z.device)][:, idx].float()
        return hook
    return [(f"blocks.{layer}.attn.hook_z", keep(layer, idx))
            for layer, idx in by_layer(heads).items()]


def _rel_error(z_base: dict, z_new: dict) -> np.ndarray:
    """``||z' - z|| / ||z||`` per head at the last token, averaged over the heads: ``[batch]``."""
    base = torch.cat([z_base[layer] for layer in sorted(z_base)], 1)
    new = torch.cat([z_new[layer] for layer in sorted(z_base)], 1)
    error = (new - base).norm(dim=-1) / base.norm(dim=-1).clamp_min(1e-12)
    return error.mean(1).cpu().numpy()


def _probe_records(hooks, batch, label: str, into: dict[str, list[pa.Table]]) -> None:
    """The probes' records of ``batch`` with ``condition`` = ``label`` (a probe's own condition,
    if any, is kept after a slash: ``alpha=2/without``)."""
    for name, table in hooks.run_batch(batch).items():
        own = table.column("condition").to_pylist()
        labels = [label if c is None else f"{label}/{c}" for c in own]
        table = table.set_column(table.schema.get_field_index("condition"), "condition",
                                 pa.array(labels, pa.string()))
        into.setdefault(name, []).append(table)


def _one_head(checked: Checked) -> dict:
    heads = {h for hs in checked.heads for h in hs}
    return {"layer": next(iter(heads))[0], "head": next(iter(heads))[1]} if len(heads) == 1 \
        else {}


def _summaries(table: pa.Table, conds, options, one: dict) -> pa.Table:
    frame = table.to_pandas()
    means = frame.groupby(["metric", "condition"])["value"].mean()
    accuracy = frame[frame["metric"] == "logit_diff"].groupby("condition")["value"].apply(
        lambda v: float((v > 0).mean()))
    has_ld = "logit_diff" in means.index.get_level_values(0)
    base = float(means.get(("logit_diff", "baseline"), math.nan))
    out = []
    for label in ["baseline"] + [c for c, _ in conds]:
        head = {} if label == "baseline" else one
        if has_ld:
            out += [records("mean_logit_diff", means["logit_diff", label], condition=label,
                            **head),
                    records("accuracy", accuracy[label], condition=label, **head)]
            if label != "baseline":
                out.append(records("logit_diff_change", means["logit_diff", label] - base,
                                   condition=label, **head))
        if label != "baseline":
            out += [records(f"mean_{m}", means[m, label], condition=label, **head)
                    for m in ("kl_divergence", "head_output_rel_error")]
    if options.sweep is not None and options.sweep.name == "sigma":
        metric = "logit_diff" if has_ld else "kl_divergence"
        levels = list(options.sweep.values)
        values = [float(means[metric, f"sigma={v:g}"]) for v in levels]
        errors = [float(means["head_output_rel_error", f"sigma={v:g}"]) for v in levels]
        out += [records("critical_sigma", critical_level(levels, values, base, options.threshold,
                                                         has_ld), **one),
                records("critical_sigma_head", critical_level(levels, errors, 0.0, 1.0, False),
                        **one)]
    return concat(out)


def _generations(model, tokenized, conds, options) -> list[dict]:
    """Greedy continuations (``options.generate`` tokens) of the first ``n_generate`` prompts,
    baseline and every condition (operations that read ``corrupted_text`` are refused earlier:
    they cannot follow a growing prompt)."""
    if options.generate <= 0:
        return []
    out = []
    for tok in tokenized[:options.n_generate]:
        row = {"prompt_id": tok.id, "baseline": _greedy(model, tok, None, options.generate)}
        for label, checked in conds:
            row[label] = _greedy(model, tok, checked, options.generate)
        out.append(row)
    return out


def _greedy(model, tok: TokenizedPrompt, checked: Checked | None, n: int) -> str:
    """``n`` greedy tokens after ``tok`` (full forward per step, hooks rebuilt per step)."""
    ids = list(tok.input_ids)
    for _ in range(n):
        grown = replace(tok, input_ids=np.asarray(ids, dtype=np.int64),
                        offsets=np.zeros((len(ids), 2), dtype=np.int64))
        batch = make_batches([grown], 1, pad_token_id(model.tokenizer))[0]
        hooks = [] if checked is None else intervention_hooks(model, checked, batch)
        with attn_result(model, checked is not None and needs_attn_result(checked)):
            ids.append(int(last_logits(model, batch, hooks)[0].argmax()))
    return model.tokenizer.decode(ids[tok.n_tokens:])


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _manifest(model, prompt_set, tokenized, checked: Checked, options) -> dict:
    spec = checked.spec
    sweep = None if options.sweep is None else {"name": options.sweep.name,
                                                "values": list(options.sweep.values)}
    digest = hashlib.sha256(f"{spec.text}|{sweep}|{prompt_set.sha256}".encode()).hexdigest()
    run_id = options.run_id or f"intervene-{model.info.name}-{prompt_set.name}-{digest[:8]}"
    config = {"model": model.info.name, "dtype": model.info.dtype,
              "prepend_bos": model.info.prepend_bos, "prompts": prompt_set.sha256,
              "spec": spec.text, "sweep": sweep, "threshold": options.threshold,
              "batch_size": options.batch_size, "generate": options.generate,
              "n_generate": options.n_generate,
              "probes": [{"name": p.name, "params": p.params()} for p in options.probes]}
    return {"config_key": config,
        "run_id": run_id, "kind": "intervention", "status": "running", "created": _now(),
        "finished": None, "command": options.command or sys.argv, "model": model.info.to_dict(),
        "prompts": {"name": prompt_set.name, "files": [vars(f) for f in prompt_set.files],
                    "sha256": prompt_set.sha256, "n_prompts": len(tokenized),
                    "n_tokens": int(sum(t.n_tokens for t in tokenized)),
                    "prepend_bos": model.info.prepend_bos},
        "intervention": {
            "spec_text": spec.text, "spec_source": spec.source,
            "operations": [op.model_dump() for op in spec.operations],
            "heads": [[format_head(h) for h in hs] for hs in checked.heads],
            "sweep": sweep, "threshold": options.threshold,
            "conventions": {"redistribute_attention": "p = fraction moved off the sinks, rho = "
                            "minimum non-sink share of segment attention (paper, not code)",
                            "value_noise": "per-component std sigma*||v_k||/sqrt(d_head), "
                            "per query head at hook_z", "ablate_head.mean": "per-head mean "
                            "over every real token of the reference prompts"}},
        "probes": [{"name": p.name, "params": p.params(), "units": dict(p.units)}
                   for p in options.probes],
        "units": {**UNITS, **{k: v for p in options.probes for k, v in p.units.items()}},
        "batching": {"batch_size": options.batch_size, "order": "by token length (stable)",
                     "padding": "right"},
        "record_schema_version": SCHEMA_VERSION, "versions": library_versions(),
        "git": git_state(), "device": model.info.device, "timings": {}, "tables": {}}


def report(run: RunDir) -> str:
    """A short text table of the run's per-condition summaries (and generations)."""
    frame = run.read_table(TABLE).to_pandas()
    summary = frame[frame["prompt_id"].isna() & frame["condition"].notna()]
    wide = summary.pivot_table(index="condition", columns="metric", values="value",
                               sort=False)
    lines = [wide.to_string(float_format=lambda v: f"{v:.4g}")]
    for metric in ("critical_sigma", "critical_sigma_head"):
        critical = frame[frame["metric"] == metric]["value"]
        if len(critical):
            lines.append(f"{metric}: {critical.iloc[0]:g}")
    for row in run.read_manifest().get("generations") or []:
        lines.append(f"generations for {row['prompt_id']}:")
        lines += [f"  {k:>14}: {v!r}" for k, v in row.items() if k != "prompt_id"]
    return "\n".join(lines)
