"""The atlas's evidence parts: ``composition`` (weights only) and ``causal`` (role ablations with
random-head controls, per-head ablations, and the top heads' attention patterns).

Both are ordinary runs beside the atlas (``<out>-composition``, ``<out>-causal``):

* ``composition`` (kind ``composition``): table ``composition`` (:meth:`atlas.composition.
  Composition.table`); the manifest keeps the baseline and the timing.
* ``causal`` (kind ``causal``): table ``role_effects`` (probe ``role_ablation``; ``segment`` = the
  role): per role ``effect``, ``effect_lo``, ``effect_hi``, ``control_mean``, ``control_sd``,
  ``p_value``, ``n_heads``; ``control_effect`` per draw (``condition`` ``draw=i``);
  ``control_member`` (value 1) naming each draw's heads; ``head_effect`` per top head (that head
  ablated alone); ``metric`` per prompt with ``condition`` ``unablated`` / ``role``; the same with
  the prefix ``secondary_`` for a role's second behaviour. Table ``head_patterns`` (probe
  ``attention_pattern``, metric ``pattern``) and ``tokens`` for the example prompts. The manifest's
  ``causal`` holds the per-role summaries the atlas copies into ``atlas.json``.

A finished part is reused on ``--resume`` when its configuration (model, role head sets, prompt
files, draws, seed, prompts) is the one asked for; this is decided from the part runs alone, before
the model loads. A differently configured one is made again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from atlas.controls import control_draws, role_seed, summarize
from atlas.role_tests import DESCRIPTIVE, test_for
from atlas.roles import ROLES, TOP_HEADS, top_heads
from workbench.errors import RunStateError
from workbench.heads import Head, format_head
from workbench.records import SCHEMA_VERSION, TOKENS_SCHEMA, concat, records
from workbench.store import MANIFEST, RunDir

EXAMPLES = 2  # example prompts per prompt set for the stored patterns
PATTERN_SETS = {"repeated": "repeated", "context": "context", "natural": "natural"}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def role_heads(heads: pd.DataFrame) -> dict[str, list[Head]]:
    """Per role of :data:`ROLES`, the heads holding it (from the atlas's role columns, as they
    are), sorted."""
    return {name: sorted((int(r.layer), int(r.head)) for r in heads[heads[name]].itertuples())
            for name in ROLES if name in heads.columns}


def _finished(path, config: dict) -> bool:
    if not (path / MANIFEST).is_file():
        return False
    try:
        stored = RunDir(path).read_manifest()
    except RunStateError:
        return False
    return stored.get("status") == "complete" and stored.get("config_key") == config


def _create(options, part: str, kind: str, config: dict, model, extra: dict) -> RunDir:
    from workbench.run import git_state, library_versions

    manifest = {"run_id": options.run_id(part), "kind": kind, "status": "running",
                "created": _now(), "finished": None, "command": options.command or sys.argv,
                "config_key": config, "model": model.info.to_dict(), "probes": [],
                "record_schema_version": SCHEMA_VERSION, "versions": library_versions(),
                "git": git_state(), "timings": {}, "tables": {}, **extra}
    path = options.runs_dir / options.run_id(part)
    run, _ = RunDir.create(options.runs_dir, path.name, manifest, resume=False,
                           overwrite=path.exists(), same_config=lambda stored: None)
    return run


def _finish(run: RunDir, tables: dict[str, pa.Table], **changes: Any) -> None:
    written = {}
    for name, table in tables.items():
        run.write_table(name, table)
        if "metric" in table.column_names:
            written[name] = {"rows": table.num_rows,
                             "metrics": sorted(set(table.column("metric").to_pylist()))}
        else:
            written[name] = {"rows": table.num_rows}
    run.update_manifest(status="complete", finished=_now(), tables=written, **changes)


# --- composition ---------------------------------------------------------------------------------

def composition_config(model_spec: str) -> dict:
    from atlas.composition import N_BASELINE

    return {"model_spec": model_spec, "baseline_draws": N_BASELINE, "seed": 0, "version": 1}


def composition_finished(options, model_spec: str) -> bool:
    """The part's run is complete with this configuration (no model needed)."""
    return options.resume and _finished(options.runs_dir / options.run_id("composition"),
                                        composition_config(model_spec))


def run_composition(model, options, model_spec: str) -> RunDir:
    """Compute and write the ``composition`` part run."""
    from atlas.composition import SOURCE, UNITS, compose

    run = _create(options, "composition", "composition", composition_config(model_spec), model,
                  {"prompts": {"name": "none (weights only)", "files": []}, "units": UNITS,
                   "source": SOURCE})
    try:
        comp = compose(model)
        table = comp.table()
        from workbench.records import conform

        _finish(run, {"composition": conform(table, run_id=run.run_id, probe="composition")},
                baseline=comp.baseline, timings={"composition_s": comp.seconds,
                                                 "composition_cpu_s": comp.cpu_seconds})
    except BaseException as err:
        run.stopped(err)  # interrupted (Ctrl-C, SIGTERM) or failed, as every run records it
        raise
    return run


# --- causal --------------------------------------------------------------------------------------

def causal_config(heads: pd.DataFrame, options, model_spec: str) -> dict:
    """What decides the causal part: model, the role head sets and top heads, files, counts."""
    sets = role_heads(heads)
    files = {"repeated": str(options.repeated), "context": str(options.context),
             "natural": str(options.natural), "tasks": [str(t) for t in options.tasks]}
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    return {"model_spec": model_spec, "draws": options.causal_draws, "seed": options.causal_seed,
            "n_prompts": options.causal_prompts, "mean_prompts": options.n_prompts,
            "files": digest, "version": 1,
            "roles": {r: [format_head(h) for h in hs] for r, hs in sets.items()},
            "top": {r: [format_head(h) for h in top_heads(heads, r)] for r in sets}}


def causal_finished(heads: pd.DataFrame, options, model_spec: str) -> bool:
    """The part's run is complete with this configuration (no model needed)."""
    return options.resume and _finished(options.runs_dir / options.run_id("causal"),
                                        causal_config(heads, options, model_spec))


def _task_spec(options, name: str) -> str | None:
    from circuits.tasks import resolve_task

    for spec in options.tasks:
        if resolve_task(str(spec))[0] == name:
            return str(spec)
    return None


class _Behaviours:
    """Behaviours built on first use (each prompt set tokenised and its means taken once)."""

    def __init__(self, model, options, batch_size: int):
        self.model, self.options, self.batch_size = model, options, batch_size
        self.built: dict[str, Any] = {}

    def get(self, key: str, heads: dict[str, list[Head]]):
        from atlas import role_tests as rt

        if key in self.built:
            return self.built[key]
        n, bs, o = self.options.causal_prompts, self.batch_size, self.options
        if key == "repeated_loss":
            beh = rt.repeated_loss(self.model, o.repeated, n, bs)
        elif key == "induction_attention":
            induction = heads.get("induction", [])
            beh = rt.induction_attention(self.get("repeated_loss", heads), induction) \
                if induction else None
        elif key == "context_logit_diff":
            beh = rt.context_logit_diff(self.model, o.context, n, bs)
        elif key == "natural_loss":
            beh = rt.natural_loss(self.model, o.natural, n, bs)
        else:
            spec = _task_spec(o, key.split(":", 1)[1])
            beh = None if spec is None else rt.task_logit_diff(self.model, spec, n, bs,
                                                                o.n_prompts)
        self.built[key] = beh
        return beh


def _role_records(role: str, beh_name: str, values: np.ndarray, draws: list[list[Head]],
                  tops: list[Head], beh, prefix: str = "") -> tuple[pa.Table, dict]:
    """Records and summary of one behaviour's ``[copies, n_prompts]`` values (copy 0 unablated,
    1 the role, then the draws, then the top heads alone)."""
    n_draws = len(draws)
    diff = values - values[0]
    per_draw = diff[2:2 + n_draws].mean(1)
    summary = summarize(diff[1], per_draw)
    summary["unablated"] = float(values[0].mean())
    summary["head_effects"] = {format_head(h): float(diff[2 + n_draws + i].mean())
                               for i, h in enumerate(tops)}
    ids = [None] * beh.n_prompts
    for b, idx in zip(beh.batches, beh.index):
        for i, p in zip(idx, b.prompt_ids):
            ids[int(i)] = p
    tables = [records(f"{prefix}{m}", summary[m], segment=role, condition=beh_name)
              for m in ("effect", "effect_lo", "effect_hi", "control_mean", "control_sd",
                        "p_value")]
    tables.append(records(f"{prefix}control_effect", per_draw, segment=role,
                          condition=pa.array([f"draw={i}" for i in range(n_draws)])))
    tables.append(records(f"{prefix}metric", np.concatenate([values[0], values[1]]),
                          segment=role, prompt_id=pa.array(ids + ids),
                          condition=pa.array(["unablated"] * len(ids) + ["role"] * len(ids))))
    if tops:
        tables.append(records(f"{prefix}head_effect", [summary["head_effects"][format_head(h)]
                                                       for h in tops],
                              layer=[h[0] for h in tops], head=[h[1] for h in tops],
                              segment=role))
    return concat(tables), summary


def test_role(model, behaviours: _Behaviours, role: str, heads: dict[str, list[Head]],
              tops: list[Head], options) -> tuple[dict, list[pa.Table]]:
    """Ablate one role's heads, the control draws and each top head alone; returns the role's
    ``atlas.json["causal"]`` entry and its records."""
    from atlas.causal import run_copies

    test = test_for(ROLES[role])
    held = heads.get(role, [])
    if test is None:
        return {"descriptive": True, "note": DESCRIPTIVE.get(role, "no behaviour is defined to "
                                                         "test this role; descriptive only")}, []
    base = {"metric": test.metric, "unit": test.unit, "ablation": test.ablation,
            "source": test.source, "reason": test.reason, "heads": [format_head(h) for h in held],
            "n_heads": len(held)}
    if not held:
        return {**base, "note": "no head holds this role in this atlas; nothing to ablate"}, []
    beh = behaviours.get(test.behaviour, heads)
    if beh is None:
        return {**base, "note": f"behaviour {test.behaviour} is not available (its task or part "
                                "was not run); not tested"}, []
    second_note = None
    if test.secondary:  # measured in the same pass when its heads exist
        with_second = behaviours.get(test.secondary, heads)
        if with_second is None:
            second_note = ("no induction heads in this atlas; the induction heads' attention is "
                           "not measured")
        else:
            beh = with_second
    draws = control_draws(held, model.info.n_heads, options.causal_draws,
                          role_seed(options.causal_seed, role))
    sets = [[], held, *draws, *[[h] for h in tops]]
    start = time.perf_counter()
    found = run_copies(model, beh, sets, ablation=test.ablation)
    values = found[beh.name]
    table, summary = _role_records(role, beh.name, values, draws, tops, beh)
    members = [h for d in draws for h in d]
    tables = [table, records("control_member", np.ones(len(members)),
                             layer=[h[0] for h in members], head=[h[1] for h in members],
                             segment=role, condition=pa.array([f"draw={i}" for i, d in
                                                               enumerate(draws) for _ in d]))]
    entry = {**base, **{k: v for k, v in summary.items() if k != "head_effects"},
             "head_effects": summary["head_effects"], "behaviour": beh.name,
             "control": "layer-matched random heads (atlas.controls)",
             "note": (f"the effect is beyond the {len(draws)} random head sets of the same layers "
                      f"(p = {summary['p_value']:.2g})" if summary["p_value"] <= 0.05 else
                      f"the effect is NOT beyond random head sets of the same layers (p = "
                      f"{summary['p_value']:.2g}): a finding too")}
    if beh.name == "context_logit_diff":
        entry["answer_flips"] = float(((values[1] > 0) != (values[0] > 0)).mean())
        entry["control_answer_flips"] = float(
            ((values[2:2 + len(draws)] > 0) != (values[0] > 0)[None]).mean())
    if second_note:
        entry["secondary"] = {"metric": test.secondary, "note": second_note}
    elif test.secondary:
        t2, s2 = _role_records(role, "induction_attention", found["induction_attention"], draws,
                               tops, beh, "secondary_")
        tables.append(t2)
        s2.pop("head_effects")
        entry["secondary"] = {"metric": "attention of the atlas's induction heads on the "
                              "induction pattern (match:1)", "unit": "fraction of attention",
                              "behaviour": "induction_attention",
                              "heads": [format_head(h) for h in beh.pattern_heads], **s2}
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry, tables


def _patterns(model, behaviours: _Behaviours, heads_by_set: dict[str, list[Head]]
              ) -> tuple[pa.Table | None, pa.Table | None]:
    """The attention patterns of the chosen heads on the first :data:`EXAMPLES` prompts of each
    behaviour's prompt set, and those prompts' tokens."""
    import torch

    from probes.pattern import pattern_entries
    from workbench.forward import attention_patterns
    from workbench.tokens import make_batches, pad_token_id, token_rows

    tables, tokenized = [], []
    for key, chosen in heads_by_set.items():
        beh = behaviours.built.get(key)
        if beh is None or not chosen:
            continue
        prompts = [p for b in beh.batches for p in b.prompts]
        order = np.argsort(np.concatenate(beh.index))
        examples = [prompts[i] for i in order[:EXAMPLES]]
        for tok in examples:
            batch = make_batches([tok], 1, pad_token_id(model.tokenizer))[0]
            with torch.inference_mode():
                pats = attention_patterns(model, batch)  # [layer, head, q, k]
            sel = torch.stack([pats[lay, h] for lay, h in chosen])
            slot, q, k, v = pattern_entries(sel, None)
            tables.append(records("pattern", v, layer=np.array([chosen[s][0] for s in slot]),
                                  head=np.array([chosen[s][1] for s in slot]), prompt_id=tok.id,
                                  query_pos=q, key_pos=k))
            tokenized.append(tok)
    if not tables:
        return None, None
    unique = list({t.id: t for t in tokenized}.values())
    return concat(tables), pa.table(token_rows(unique, model.tokenizer), schema=TOKENS_SCHEMA)


def _dla(model, behaviours: _Behaviours, heads_by_set: dict[str, list[Head]]
         ) -> pa.Table | None:
    """Direct logit attribution (:mod:`circuits.dla`, logits, mean over the prompts) of the top
    heads of each circuit-task role on that task: records ``dla`` with ``segment`` the task."""
    from circuits.dla import direct_logit_attribution

    tables = []
    for key, chosen in heads_by_set.items():
        beh = behaviours.built.get(key)
        if beh is None or beh.task is None or not chosen:
            continue
        found = direct_logit_attribution(model, beh.task, batch_size=behaviours.batch_size)
        mean = found.heads.mean(0)
        tables.append(records("dla", [mean[lay, h] for lay, h in chosen],
                              layer=[h[0] for h in chosen], head=[h[1] for h in chosen],
                              segment=beh.task.name))
    return concat(tables)


def run_causal(model, heads: pd.DataFrame, options, model_spec: str,
               batch_size: int | None = None) -> RunDir:
    """Test every role (:data:`ROLES`) and write the ``causal`` part run (module docstring)."""
    from workbench.records import conform

    config = causal_config(heads, options, model_spec)
    run = _create(options, "causal", "causal", config, model,
                  {"prompts": {"name": "atlas prompt files", "files": []}})
    try:
        start, cpu = time.perf_counter(), time.process_time()
        sets = role_heads(heads)
        behaviours = _Behaviours(model, options, batch_size or 8)
        entries, tables, timings = {}, [], {}
        for role in ROLES:
            if role not in sets:
                continue
            entry, role_tables = test_role(model, behaviours, role, sets, top_heads(heads, role),
                                           options)
            entries[role] = entry
            tables += role_tables
            if "seconds" in entry:
                timings[f"{role}_s"] = entry["seconds"]
        by_set: dict[str, list[Head]] = {}
        for role in entries:
            test = test_for(ROLES[role])
            key = test.behaviour if test else ("natural_loss" if role in DESCRIPTIVE else None)
            if key is None:
                continue
            if key not in behaviours.built and key == "natural_loss":
                behaviours.get(key, sets)
            by_set.setdefault(key, [])
            for h in top_heads(heads, role):
                if h not in by_set[key]:
                    by_set[key].append(h)
        dla_start = time.perf_counter()
        dla = _dla(model, behaviours, by_set)
        if dla is not None:
            tables.append(dla)
        timings["dla_s"] = round(time.perf_counter() - dla_start, 3)
        pattern_start = time.perf_counter()
        patterns, tokens = _patterns(model, behaviours, by_set)
        timings["patterns_s"] = round(time.perf_counter() - pattern_start, 3)
        timings["total_s"] = round(time.perf_counter() - start, 3)
        timings["total_cpu_s"] = round(time.process_time() - cpu, 3)
        out = {}
        effects = concat(tables)
        if effects is not None:
            out["role_effects"] = conform(effects, run_id=run.run_id, probe="role_ablation")
        if patterns is not None:
            out["head_patterns"] = conform(patterns, run_id=run.run_id,
                                           probe="attention_pattern")
            out["tokens"] = tokens
        _finish(run, out, causal=entries, timings=timings,
                pattern_sets={k: [format_head(h) for h in v] for k, v in by_set.items()})
    except BaseException as err:
        run.stopped(err)  # interrupted (Ctrl-C, SIGTERM) or failed, as every run records it
        raise
    return run


def run_late_parts(load: Callable[[], Any], atlas, options, model_spec: str, parts: dict,
                   on_part: Callable[[str, int, int], None] = lambda *_: None) -> bool:
    """Run (or keep, on resume) the ``causal`` part on the roles of ``atlas``; add it to
    ``parts``. Returns False when it is skipped."""
    from atlas.battery import PARTS

    if "causal" in options.skip:
        return False
    todo = [p for p in PARTS if p not in options.skip]
    on_part("causal", len(todo), len(todo))
    start = time.perf_counter()
    state = "kept"
    if not causal_finished(atlas.heads, options, model_spec):
        run_causal(load(), atlas.heads, options, model_spec, options.batch_size)
        state = "run"
    parts["causal"] = {"run_id": options.run_id("causal"),
                       "seconds": round(time.perf_counter() - start, 3), "state": state}
    return True


def test_heads(load: Callable[[], Any], atlas, heads: list[Head], role: str, *, draws: int = 20,
               prompts: int = 12, seed: int = 0, batch_size: int | None = None) -> dict:
    """Test any head set on the behaviour of ``role`` (:data:`atlas.role_tests.ROLE_TESTS`),
    against ``draws`` layer-matched random head sets, with the prompt files and tasks ``atlas``
    was built with; the heads are also ablated one by one (up to :data:`TOP_HEADS`). Returns the
    entry :func:`test_role` gives (``atlas.json["causal"]`` format; nothing is written).

    Raises:
        InputError: an unknown or descriptive role, a head outside the model, bad counts, all
            before ``load`` is called.
    """
    from atlas.battery import AtlasOptions
    from workbench.errors import InputError
    from workbench.heads import check_heads

    if role not in ROLES:
        raise InputError(f"--test {role!r} is not an atlas role; roles: {', '.join(ROLES)}")
    if test_for(ROLES[role]) is None:
        raise InputError(f"--test {role}: the role is descriptive only ({DESCRIPTIVE.get(role)}); "
                         "choose a role with a behaviour")
    if not heads:
        raise InputError("--heads names no head")
    check_heads(heads, atlas.n_layers, atlas.n_heads, "--heads")
    stored = RunDir(atlas.path).read_manifest().get("config_key", {})
    natural, repeated, context = stored.get("prompt_files", [None] * 3)
    options = AtlasOptions(out=atlas.path, natural=natural, repeated=repeated, context=context,
                           tasks=tuple(stored.get("tasks", ("ioi", "induction"))),
                           n_prompts=stored.get("n_prompts", 32),
                           causal_draws=draws, causal_prompts=prompts, causal_seed=seed,
                           progress=False)
    model = load()
    sets = {**role_heads(atlas.heads), role: sorted(set(heads))}
    behaviours = _Behaviours(model, options, batch_size or 8)
    entry, _ = test_role(model, behaviours, role, sets, sorted(set(heads))[:TOP_HEADS], options)
    return entry
