"""A runs folder for the app tests: the figures' synthetic run extended with circuit, overlap and
intervention tables, prompts whose text and tokens are HTML, a second run to compare, and runs the
app must refuse or report (empty, bare, broken, corrupt, outside the folder via symlinks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from tests.figure_fixture import N_HEADS, N_LAYERS, PROMPTS, make_run
from workbench.records import PROMPTS_SCHEMA, TOKENS_SCHEMA, concat, conform, records
from workbench.store import RunDir, write_parquet

TASKS = ("ioi", "colored_objects", "induction")
CIRCUITS = {"ioi": [(1, 2), (2, 1), (3, 0)], "colored_objects": [(1, 2), (3, 0), (3, 2)],
            "induction": [(0, 1), (2, 1)]}
SCRIPT_TEXT = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
SCRIPT_TOKEN = "<script>"
ALPHAS = (0.0, 1.0, 2.0, 3.0)


def _circuits() -> pa.Table:
    parts = []
    for task, heads in CIRCUITS.items():
        layer, head = np.array(heads).T
        parts.append(records("member", np.linspace(0.9, 0.3, len(heads)), layer=layer, head=head,
                             segment=task))
        parts.append(records("size", len(heads), segment=task))
        receivers = [f"receiver={heads[-1][0]}.{heads[-1][1]}"] * (len(heads) - 1) + [
            "receiver=logits"]
        parts.append(records("edge", np.linspace(0.5, 1.0, len(heads)), layer=layer, head=head,
                             segment=task, condition=np.array(receivers)))
    return concat(parts)


def _head_effects(rng) -> pa.Table:
    layer, head = np.divmod(np.arange(N_LAYERS * N_HEADS), N_HEADS)
    return concat([records(m, rng.normal(0, 1, len(layer)), layer=layer, head=head, segment=t,
                           condition="clean_into_corrupted")
                   for t in TASKS for m in ("effect", "score")])


def _faithfulness() -> pa.Table:
    parts = []
    for i, task in enumerate(TASKS):
        parts += [records("logit_diff", v, segment=task, condition=c)
                  for c, v in (("model", 3.0 + i), ("circuit", 2.4 + i), ("empty", 0.1))]
        parts += [records(m, v, segment=task) for m, v in (
            ("faithfulness", 0.8 - 0.1 * i), ("faithfulness_random", 0.05),
            ("circuit_accuracy", 0.9))]
    return concat(parts)


def overlap_sets() -> dict[tuple[str, str], tuple[float, list]]:
    """Per pair of tasks: (Jaccard, shared heads), computed from CIRCUITS by hand-checkable sets."""
    out = {}
    for i, a in enumerate(TASKS):
        for b in TASKS[i + 1:]:
            sa, sb = set(CIRCUITS[a]), set(CIRCUITS[b])
            out[a, b] = (len(sa & sb) / len(sa | sb), sorted(sa & sb))
    return out


def _overlap() -> pa.Table:
    parts = []
    for (a, b), (jaccard, shared) in overlap_sets().items():
        pair = f"{a}|{b}"
        parts += [records("jaccard", jaccard, segment=pair),
                  records("expected_shared", 0.4, segment=pair),
                  records("p_value", 0.02, segment=pair), records("jaccard_random", 0.07,
                                                                  segment=pair)]
        if shared:
            layer, head = np.array(shared).T
            parts.append(records("shared", np.ones(len(shared)), layer=layer, head=head,
                                 segment=pair))
    return concat(parts)


def _interventions(rng) -> pa.Table:
    parts = []
    for pid in PROMPTS:
        parts.append(records("logit_diff", 2.0, prompt_id=pid, segment="ioi",
                             condition="baseline"))
        for alpha in ALPHAS:
            parts.append(records("logit_diff", 1.0 + alpha + rng.normal(0, 0.05), layer=3, head=0,
                                 prompt_id=pid, segment="ioi", condition=f"alpha={alpha:g}"))
            parts.append(records("kl_divergence", abs(alpha - 1) * 0.3, layer=3, head=0,
                                 prompt_id=pid, segment="ioi", condition=f"alpha={alpha:g}"))
    return concat(parts)


def _text_tables() -> tuple[pa.Table, pa.Table]:
    """Prompts and tokens where prompt p0's text and one token are HTML (must show literally)."""
    prompts, tokens = [], []
    for pid, toks in PROMPTS.items():
        toks = [SCRIPT_TOKEN if (pid, i) == ("p0", 1) else t for i, t in enumerate(toks)]
        text = SCRIPT_TEXT if pid == "p0" else "".join(toks)
        prompts.append({"prompt_id": pid, "text": text, "n_tokens": len(toks), "task": "fixture",
                        "answer": None, "distractor": None, "corrupted_text": None,
                        "segments": None, "source": f"fixture.jsonl:{len(prompts) + 1}"})
        tokens += [{"prompt_id": pid, "pos": i, "token_id": i, "token": t, "char_start": 0,
                    "char_end": 0} for i, t in enumerate(toks)]
    return (pa.Table.from_pylist(prompts, schema=PROMPTS_SCHEMA),
            pa.Table.from_pylist(tokens, schema=TOKENS_SCHEMA))


EXTRA_UNITS = {"member": "score", "edge": "score", "jaccard": "fraction", "logit_diff": "logits",
               "kl_divergence": "nats", "faithfulness": "fraction of the model's LD"}


def make_full_run(runs_dir: Path, run_id: str = "fixture", seed: int = 0,
                  model: str = "synthetic") -> RunDir:
    """The figures' synthetic run plus every table shape the app pages read."""
    rng = np.random.default_rng(seed)
    run = make_run(runs_dir, run_id)
    extra = {"circuits": _circuits(), "head_effects": _head_effects(rng),
             "faithfulness": _faithfulness(), "overlap": _overlap(),
             "interventions": _interventions(rng)}
    manifest = run.read_manifest()
    if seed:  # a second run: other numbers in probe_a
        from tests.figure_fixture import fixture_table

        run.write_table("probe_a", fixture_table(seed))
    for name, table in extra.items():
        table = conform(table, run_id=run_id, probe=name)
        run.write_table(name, table)
        manifest["tables"][name] = {"rows": table.num_rows,
                                    "metrics": sorted(set(table["metric"].to_pylist()))}
    prompts, tokens = _text_tables()
    run.write_table("prompts", prompts)
    run.write_table("tokens", tokens)
    manifest["units"] = {**manifest["units"], **EXTRA_UNITS}
    manifest["model"]["name"] = model
    manifest.update(kind="probes", created=f"2026-01-0{1 + seed}T00:00:00+00:00",
                    prompts={"name": "fixture", "n_prompts": len(PROMPTS), "sha256": "0" * 64},
                    probes=[{"name": "probe_a", "params": {"x": 1}, "headline": ["score"]}],
                    timings={"total_s": 1.5})
    run.write_manifest(manifest)
    return run


def make_app_runs(runs_dir: Path, outside: Path) -> Path:
    """The runs folder: fixture, second, empty, bare, broken, corrupt, escape (a symlink to a run
    outside the folder) and leaky (a table symlinked to a file outside the folder)."""
    make_full_run(runs_dir)
    make_full_run(runs_dir, "second", seed=1, model="synthetic-b")
    empty = make_run(runs_dir, "empty")
    empty.write_table("probe_a", conform(records("score", []), run_id="empty", probe="probe_a"))
    RunDir.create(runs_dir, "bare", {"run_id": "bare", "status": "running",
                                 "model": {"name": "synthetic"}},
                  resume=False, overwrite=True, same_config=lambda m: None)
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "run.json").write_text("{not json")
    corrupt = make_run(runs_dir, "corrupt")
    (corrupt.path / "probe_a.parquet").write_bytes(b"PAR1 this is not parquet")
    secret = make_run(outside, "secret")
    (runs_dir / "escape").symlink_to(secret.path, target_is_directory=True)
    leaky = make_run(runs_dir, "leaky")
    write_parquet(outside / "stolen.parquet", conform(records("stolen", [1.0], layer=0, head=0),
                                                      run_id="x", probe="stolen"))
    (leaky.path / "stolen.parquet").symlink_to(outside / "stolen.parquet")
    return runs_dir


ATLAS_ROLES = (("sink", "sink head"), ("previous_token", "previous-token head"),
               ("induction", "induction head"), ("low_entropy", "low-entropy head"))
TOP_INDUCTION = (2, 1)  # the fixture atlas's top induction head (the fixture run has its pattern)


def make_atlas(runs_dir: Path, run_id: str = "atlas-fixture", part: str = "fixture",
               n_layers: int = N_LAYERS, n_heads: int = N_HEADS, model: str = "synthetic",
               seed: int = 0, created: str = "2026-02-01T00:00:00+00:00") -> Path:
    """An atlas folder as ``workbench atlas`` writes it (atlas.parquet, atlas.json, run.json),
    with hand-made scores for four roles; its part run ``part`` (the fixture run) stores
    attention patterns. The top induction head is :data:`TOP_INDUCTION` when it exists."""
    import json

    import pandas as pd

    rng = np.random.default_rng(seed)
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    heads = pd.DataFrame({"model": model, "layer": layer, "head": head,
                          "depth": layer / n_layers})
    held_roles = [[] for _ in range(len(heads))]
    for name, _ in ATLAS_ROLES:
        score = rng.uniform(0, 0.5, len(heads))
        if name == "induction" and n_layers > TOP_INDUCTION[0]:
            score[TOP_INDUCTION[0] * n_heads + TOP_INDUCTION[1]] = 0.95
        rank = pd.Series(score).rank(ascending=False, method="first").astype("Int64")
        heads[f"{name}_score"], heads[f"{name}_rank"] = score, rank.to_numpy()
        heads[name] = score > 0.4
        for i in np.flatnonzero(score > 0.4):
            held_roles[i].append(name)
    heads["roles"] = [",".join(r) for r in held_roles]
    folder = runs_dir / run_id
    folder.mkdir(parents=True, exist_ok=True)
    heads.to_parquet(folder / "atlas.parquet", index=False)
    model_doc = {"name": model, "n_layers": n_layers, "n_heads": n_heads}
    doc = {"model": model_doc, "prompt_sets": {},
           "roles": [{"name": n, "label": label, "source": "natural", "table": "probe_a",
                      "metric": "score", "where": {}, "rule": "above", "threshold": 0.4,
                      "reason": "hand-made fixture threshold", "ceiling": None}
                     for n, label in ATLAS_ROLES],
           "runs": {"natural": {"run_id": part, "path": f"../{part}"}},
           "findings": [f"induction heads (score > 0.4): {int(heads['induction'].sum())} of "
                        f"{len(heads)}"]}
    (folder / "atlas.json").write_text(json.dumps(doc))
    (folder / "run.json").write_text(json.dumps({
        "run_id": run_id, "kind": "atlas", "status": "complete", "model": model_doc,
        "created": created, "probes": [], "tables": {}}))
    return folder


def make_atlas_runs(runs_dir: Path) -> Path:
    """A runs folder with an atlas: the fixture run (its part run, with patterns), the atlas, and
    a second atlas of a deeper model with fewer heads (to compare by relative depth)."""
    make_full_run(runs_dir)
    make_atlas(runs_dir)
    make_atlas(runs_dir, "atlas-deeper", part="missing", n_layers=6, n_heads=2,
               model="synthetic-deep", seed=1, created="2026-01-15T00:00:00+00:00")
    return runs_dir
