"""Live head reweighting for the app's Live page (the only app module that imports torch).

One prompt; the outputs of chosen heads are multiplied by alpha at ``attn.hook_z`` (MoH / VHR head
reweighting, METHODS.md section 7; alpha = 0 is zero ablation, alpha = 1 an exact no-op), with
:func:`workbench.heads.scale_heads_hooks`, :func:`workbench.forward.last_logits` and
:mod:`workbench.metrics`. The result holds the next-token distribution before and after, the
logit difference answer - distractor (Wang et al. 2022, arXiv 2211.00593) when both are given, the
KL divergence, an optional alpha sweep, and everything needed to save it as a run directory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from app.tables import LIVE_TABLE
from workbench.errors import InputError
from workbench.forward import last_logits
from workbench.heads import Head, check_heads, format_head, scale_heads_hooks
from workbench.metrics import answer_token_ids, kl_divergence, logit_diff
from workbench.prompts import Prompt
from workbench.records import (PROMPTS_SCHEMA, SCHEMA_VERSION, TOKENS_SCHEMA, concat, conform,
                               records)
from workbench.run import git_state, library_versions
from workbench.store import RunDir
from workbench.tokens import make_batches, prompt_rows, token_rows, tokenize_prompt

PROMPT_ID = "live"
PROBE = "scale_heads"
UNITS = {"logit_diff": "logits", "kl_divergence": "nats (KL(baseline || intervened))"}


@dataclass(frozen=True)
class LiveSpec:
    """One live experiment: ``heads`` scaled by ``alpha`` at ``attn.{point}`` on ``prompt``."""

    prompt: str
    heads: tuple[Head, ...]
    alpha: float
    answer: str | None = None
    distractor: str | None = None
    top_k: int = 10
    sweep: tuple[float, ...] = ()
    point: str = "hook_z"


@dataclass
class LiveResult:
    """Next-token tables (rank, token, token_id, probability), metrics and the run tables."""

    spec: LiveSpec
    model: dict  # ModelInfo.to_dict()
    baseline: pd.DataFrame
    intervened: pd.DataFrame
    kl: float  # nats
    logit_diff: dict[str, float] = field(default_factory=dict)  # condition -> LD
    sweep: pd.DataFrame | None = None  # alpha, logit_diff (if answer), kl_divergence
    records: pa.Table | None = None
    tables: dict[str, pa.Table] = field(default_factory=dict)  # prompts, tokens


def condition(alpha: float) -> str:
    return f"alpha={alpha:g}"


def _batch(model, prompt: Prompt):
    tok = tokenize_prompt(prompt, model.tokenizer, prepend_bos=model.info.prepend_bos)
    if tok.n_tokens == 0:
        raise InputError("the prompt has no tokens")
    if tok.n_tokens > model.info.n_ctx:
        raise InputError(f"the prompt has {tok.n_tokens} tokens; the model's context is "
                         f"{model.info.n_ctx}")
    pad = model.tokenizer.pad_token_id
    return tok, make_batches([tok], 1, pad if pad is not None else 0)[0]


def top_tokens(logits: torch.Tensor, tokenizer, k: int) -> pd.DataFrame:
    """The ``k`` most probable next tokens of ``logits`` ``[vocab]`` (softmax in fp32)."""
    probs = torch.softmax(logits.float(), -1)
    values, ids = probs.topk(k)
    ids = ids.tolist()
    return pd.DataFrame({"rank": np.arange(1, k + 1), "token": tokenizer.batch_decode(
        [[i] for i in ids]), "token_id": ids, "probability": values.double().numpy()})


def run_live(model, spec: LiveSpec) -> LiveResult:
    """Run the prompt without and with the intervention (and each sweep alpha).

    Raises:
        InputError: no heads, a head outside the model, an empty or too long prompt, only one of
            answer / distractor, or an answer that tokenises to nothing.
    """
    if not spec.heads:
        raise InputError("choose at least one head (e.g. 9.6)")
    check_heads(spec.heads, model.info.n_layers, model.info.n_heads, where="heads")
    if bool(spec.answer) != bool(spec.distractor):
        raise InputError("give both an answer and a distractor for the logit difference, or "
                         "neither")
    prompt = Prompt(id=PROMPT_ID, text=spec.prompt, answer=spec.answer or None,
                    distractor=spec.distractor or None, source="app")
    tok, batch = _batch(model, prompt)
    pair = None
    if spec.answer:
        pair = (answer_token_ids(model.tokenizer, [tok], "answer"),
                answer_token_ids(model.tokenizer, [tok], "distractor"))
    base = last_logits(model, batch)
    alphas = list(dict.fromkeys([spec.alpha, *spec.sweep]))
    logits = {a: last_logits(model, batch, scale_heads_hooks(spec.heads, a, spec.point))
              for a in alphas}
    rows = _rows(base, logits, pair, spec)
    result = LiveResult(spec, model.info.to_dict(), top_tokens(base[0], model.tokenizer,
                                                               spec.top_k),
                        top_tokens(logits[spec.alpha][0], model.tokenizer, spec.top_k),
                        float(kl_divergence(base, logits[spec.alpha])[0]))
    result.logit_diff = {r["condition"]: r["value"] for r in rows if r["metric"] == "logit_diff"}
    if spec.sweep:
        frame = pd.DataFrame(rows)
        frame = frame[frame["condition"] != "baseline"]
        result.sweep = frame.pivot(index="condition", columns="metric", values="value")
    result.records = _records(rows, spec)
    result.tables = {"prompts": pa.table(prompt_rows([tok]), schema=PROMPTS_SCHEMA),
                     "tokens": pa.table(token_rows([tok], model.tokenizer), schema=TOKENS_SCHEMA)}
    return result


def _rows(base, logits: dict, pair, spec: LiveSpec) -> list[dict]:
    rows = []
    if pair is not None:
        rows.append({"metric": "logit_diff", "condition": "baseline",
                     "value": float(logit_diff(base, *pair)[0])})
    for alpha, new in logits.items():
        if pair is not None:
            rows.append({"metric": "logit_diff", "condition": condition(alpha),
                         "value": float(logit_diff(new, *pair)[0])})
        rows.append({"metric": "kl_divergence", "condition": condition(alpha),
                     "value": float(kl_divergence(base, new)[0])})
    return rows


def _records(rows: list[dict], spec: LiveSpec) -> pa.Table:
    """Record rows; layer/head name the head when exactly one is scaled (else null)."""
    one = spec.heads[0] if len(spec.heads) == 1 else (None, None)
    return concat([records(r["metric"], r["value"], prompt_id=PROMPT_ID,
                           condition=r["condition"],
                           layer=None if r["condition"] == "baseline" else one[0],
                           head=None if r["condition"] == "baseline" else one[1])
                   for r in rows])


def save_run(runs_dir: Path, run_id: str, result: LiveResult) -> RunDir:
    """Write the experiment as ``runs_dir/run_id``: manifest, ``live_intervention``, prompts and
    tokens tables.

    Raises:
        InputError: ``run_id`` is not a plain folder name. RunStateError: the run exists.
    """
    spec = result.spec
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "run_id": run_id, "kind": "live_intervention", "status": "running", "created": now,
        "finished": None, "command": ["workbench app: live intervention"],
        "model": result.model,
        "prompts": {"name": PROMPT_ID, "n_prompts": 1,
                    "n_tokens": result.tables["tokens"].num_rows,
                    "sha256": hashlib.sha256(spec.prompt.encode()).hexdigest(),
                    "prepend_bos": result.model.get("prepend_bos")},
        "intervention": {"op": "scale_head", "heads": [format_head(h) for h in spec.heads],
                         "alpha": spec.alpha, "sweep": list(spec.sweep),
                         "hook": f"blocks.{{layer}}.attn.{spec.point}", "answer": spec.answer,
                         "distractor": spec.distractor,
                         "top_tokens": {"baseline": result.baseline.to_dict("records"),
                                        "intervened": result.intervened.to_dict("records")}},
        "probes": [], "units": UNITS, "record_schema_version": SCHEMA_VERSION,
        "versions": library_versions(), "git": git_state(), "timings": {}, "tables": {}}
    run, _ = RunDir.create(runs_dir, run_id, manifest, resume=False, overwrite=False,
                           same_config=lambda stored: None)
    table = conform(result.records, run_id=run_id, probe=PROBE)
    run.write_table(LIVE_TABLE, table)
    for name, meta in result.tables.items():
        run.write_table(name, meta)
    run.update_manifest(status="complete", finished=now, tables={LIVE_TABLE: {
        "rows": table.num_rows, "metrics": sorted(set(table["metric"].to_pylist()))}})
    return run


@dataclass
class PatternResult:
    """Every head's pattern on one prompt, before and (with heads scaled) after a live
    intervention; ``tokens`` are the prompt's tokens as text, position by position."""

    text: str
    model: str
    tokens: list[str]
    before: np.ndarray  # [layer, head, query, key]
    after: np.ndarray | None = None
    heads: tuple[Head, ...] = ()
    alpha: float = 1.0


def live_patterns(model, text: str, heads: tuple[Head, ...] = (), alpha: float = 1.0,
                  point: str = "hook_z") -> PatternResult:
    """The attention patterns of ``text`` (:func:`workbench.forward.attention_patterns`), and,
    when ``heads`` are given, those with the heads' outputs scaled by ``alpha`` at
    ``attn.{point}`` (the live intervention).

    Raises:
        InputError: an empty or too long prompt, a head outside the model.
    """
    from workbench.forward import attention_patterns

    if heads:
        check_heads(heads, model.info.n_layers, model.info.n_heads, where="heads")
    tok, batch = _batch(model, Prompt(id=PROMPT_ID, text=text, source="app"))
    tokens = [str(t) for t in token_rows([tok], model.tokenizer)["token"]]
    before = attention_patterns(model, batch).numpy()
    after = (attention_patterns(model, batch, scale_heads_hooks(heads, alpha, point)).numpy()
             if heads else None)
    return PatternResult(text, model.info.name, tokens[:before.shape[-1]], before, after,
                         tuple(heads), float(alpha))
