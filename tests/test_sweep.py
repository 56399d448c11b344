"""Sweeps: the sharded tables equal one `workbench run`, the Ray engine equals the local one,
interrupted sweeps resume without duplicates, failing shards are reported and lose nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import ClassVar, Literal

import pandas as pd
import pytest
from rich.console import Console

from probes import make_probes
from sweeps import Job, SweepOptions, parse_spec, register_job_kind, run_sweep
from sweeps.shards import ShardWorker
from tests.conftest import write_jsonl
from workbench.errors import InputError, RunStateError
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.store import RunDir
from workbench.summary import describe_run

KEYS = ["probe", "metric", "layer", "head", "prompt_id", "query_pos", "key_pos", "segment",
        "condition", "dim"]
PROBES = ["attention_entropy", "massive_activations"]
RUN = "tiny-llama--five"


@register_job_kind
class FailWhileMarked(Job):
    """Fails on the chunk holding ``prompt_id`` while the file ``marker`` exists."""

    kind: Literal["fail_while_marked"] = "fail_while_marked"
    prompt_id: str
    marker: str
    description: ClassVar[str] = "test job"

    def tables(self):
        return []

    def prepare(self, model, prompt_set):
        return None

    def run(self, prepared, model, ids):
        if self.prompt_id in ids and Path(self.marker).exists():
            raise ValueError(f"marked prompt {self.prompt_id}")
        return {}


@pytest.fixture
def five(tmp_path) -> Path:
    return write_jsonl(tmp_path / "five.jsonl", [
        {"id": "a", "text": "Then, Mary and John went to the store. John gave a drink to",
         "segments": {"names": [6, 19]}},
        {"id": "b", "text": "The quick brown fox jumps over the lazy dog.",
         "segments": {"names": [4, 9]}},
        {"id": "c", "text": "Hello there, attention", "segments": {"names": [0, 5]}},
        {"id": "d", "text": "Heads read the residual stream and write back",
         "segments": {"names": [0, 5]}},
        {"id": "e", "text": "Short one", "segments": {"names": [0, 5]}},
    ])


def spec_for(prompts: Path, *extra_jobs: dict):
    return parse_spec({
        "name": "sw", "chunk_size": 2, "models": [{"spec": "tiny-llama", "device": "cpu"}],
        "prompt_sets": [str(prompts)],
        "jobs": [{"kind": "probes", "probes": PROBES, "batch_size": 2,
                  "params": {"attention_entropy": {"segment": "names"}}}, *extra_jobs]},
        prompts.parent)


def tables(run_dir: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(run_dir / f"{name}.parquet").sort_values(
        KEYS, na_position="first").reset_index(drop=True) for name in PROBES}


def test_sweep_equals_one_run_and_rerun_skips(tiny_llama, five, tmp_path):
    manifest = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "runs"))
    assert manifest["status"] == "complete" and manifest["n_shards"] == 3
    assert [(r["chunk"], r["first_id"], r["last_id"], r["status"]) for r in manifest["shards"]] \
        == [(0, "a", "b", "done"), (1, "c", "d", "done"), (2, "e", "e", "done")]
    got = tables(tmp_path / "runs" / "sw" / RUN)
    ref_run = execute_run(tiny_llama, load_prompt_set(five),
                          make_probes(PROBES, {"attention_entropy": {"segment": "names"}}),
                          RunOptions(runs_dir=tmp_path / "ref", run_id=RUN, batch_size=2,
                                     progress=False))
    ref = tables(ref_run.path)
    for name in PROBES:  # summaries (prompt_id null) included: computed over the joined table
        assert len(got[name]) == len(ref[name]) > 50
        pd.testing.assert_frame_equal(got[name], ref[name], check_exact=False, rtol=1e-5,
                                      atol=1e-6)
    prompts = pd.read_parquet(tmp_path / "runs" / "sw" / RUN / "prompts.parquet")
    assert list(prompts.prompt_id) == list("abcde")
    shown = io.StringIO()  # `workbench runs show` reads a sweep's run like any other
    describe_run(RunDir(tmp_path / "runs" / "sw" / RUN), Console(file=shown, width=200))
    assert "probe attention_entropy: {'segment': 'names'" in shown.getvalue()
    assert f"{int(prompts.n_tokens.sum())} tokens" in shown.getvalue()
    again = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "runs"))
    assert again["n_skipped"] == 3 and all(r["skipped"] for r in again["shards"])


def test_interrupted_sweep_resumes_without_duplicates(five, tmp_path, monkeypatch):
    full = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "full"))
    assert full["status"] == "complete"
    real_run = ShardWorker.run

    def stop_at_third(self, shard):
        if shard.index == 2:
            raise KeyboardInterrupt
        return real_run(self, shard)
    monkeypatch.setattr(ShardWorker, "run", stop_at_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "runs"))
    ledger = json.loads((tmp_path / "runs" / "sw" / "sweep.json").read_text())
    assert ledger["status"] == "interrupted"
    assert [r["status"] for r in ledger["shards"]] == ["done", "done", "pending"]
    monkeypatch.setattr(ShardWorker, "run", real_run)
    resumed = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "runs"))
    assert resumed["status"] == "complete" and resumed["n_skipped"] == 2
    assert [r.get("skipped", False) for r in resumed["shards"]] == [True, True, False]
    got, want = tables(tmp_path / "runs" / "sw" / RUN), tables(tmp_path / "full" / "sw" / RUN)
    for name in PROBES:
        assert not got[name].duplicated(KEYS).any()
        pd.testing.assert_frame_equal(got[name], want[name])


def test_failing_shard_is_reported_and_finished_shards_stay(five, tmp_path, capsys):
    from tests.test_run import cli

    marker = tmp_path / "marker"
    marker.touch()
    fail = {"kind": "fail_while_marked", "prompt_id": "c", "marker": str(marker)}
    manifest = run_sweep(spec_for(five, fail), SweepOptions(runs_dir=tmp_path / "runs"))
    rows = manifest["shards"]
    assert manifest["status"] == "failed" and manifest["n_failed"] == 1
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == "ValueError: marked prompt c" and "marked" in rows[1]["traceback"]
    run_dir = tmp_path / "runs" / "sw" / RUN
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert sorted(p.name for p in (run_dir / ".parts").iterdir()) == ["b00000", "b00002"]
    # the CLI exits 1 and names the shard; the finished shards are skipped
    sweep_file = tmp_path / "sweep.yaml"
    spec = spec_for(five, fail).model_dump(mode="json")
    sweep_file.write_text(json.dumps({**spec, "runs_dir": str(tmp_path / "runs")}))
    code, out, err = cli(capsys, "sweep", str(sweep_file))
    assert code == 1 and "chunk 1 (c..d): ValueError: marked prompt c" in " ".join(err.split())
    assert "2 skipped as finished" in out
    marker.unlink()  # "fix" the failure: only the failed shard runs again
    code, out, err = cli(capsys, "sweep", str(sweep_file))
    assert code == 0 and "3/3 shards done, 2 skipped as finished" in out
    got = tables(run_dir)
    run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "ref"))
    whole = tables(tmp_path / "ref" / "sw" / RUN)
    for name in PROBES:
        pd.testing.assert_frame_equal(got[name], whole[name])


def test_duplicate_runs_are_refused_before_any_write(five, tmp_path):
    spec = spec_for(five)
    twice = spec.model_copy(update={"models": spec.models * 2})
    with pytest.raises(InputError, match="tiny-llama--five"):
        run_sweep(twice, SweepOptions(runs_dir=tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


def test_changed_sweep_file_needs_overwrite(five, tmp_path):
    run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path))
    changed = spec_for(five).model_copy(update={"chunk_size": 3})
    with pytest.raises(RunStateError, match="sweep file changed"):
        run_sweep(changed, SweepOptions(runs_dir=tmp_path))
    assert run_sweep(changed, SweepOptions(runs_dir=tmp_path, overwrite=True))["n_shards"] == 2


@pytest.mark.parametrize("change, message", [
    ({"jobs": [{"kind": "nope"}]}, "kind 'nope' is not one of"),
    ({"jobs": [{"kind": "probes", "probes": ["nope"]}]}, "jobs[0] (probes): unknown probe"),
    ({"jobs": [{"kind": "probes", "probes": ["attention_entropy"], "bacth_size": 2}]},
     "bacth_size"),
    ({"jobs": [{"kind": "probes", "probes": ["attention_entropy"]}] * 2},
     "attention_entropy written by more than one job"),
    ({"prompt_sets": ["missing.jsonl"]}, "missing.jsonl"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"name": "../x"}, "name"),
])
def test_bad_sweep_files(five, change, message):
    raw = {"name": "sw", "models": ["tiny-llama"], "prompt_sets": [str(five)],
           "jobs": [{"kind": "probes", "probes": ["attention_entropy"]}], **change}
    with pytest.raises(InputError, match=None) as info:
        parse_spec(raw, five.parent, "s.yaml")
    assert message in str(info.value) and str(info.value).startswith("s.yaml: ")


def test_ray_engine_gives_the_local_tables(five, tmp_path):
    ray = pytest.importorskip("ray")
    local = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "local"))
    assert not ray.is_initialized()
    remote = run_sweep(spec_for(five), SweepOptions(runs_dir=tmp_path / "ray", engine="ray",
                                                    workers=2))
    assert local["status"] == remote["status"] == "complete"
    assert len({r["worker"] for r in remote["shards"]}) == 2  # both actors ran shards
    assert not ray.is_initialized()  # the local cluster was shut down
    got, want = tables(tmp_path / "ray" / "sw" / RUN), tables(tmp_path / "local" / "sw" / RUN)
    for name in PROBES:
        pd.testing.assert_frame_equal(got[name], want[name])
    for meta in ("prompts", "tokens"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path / "ray" / "sw" / RUN / f"{meta}.parquet"),
            pd.read_parquet(tmp_path / "local" / "sw" / RUN / f"{meta}.parquet"))


def test_head_patching_job_equals_one_pass_over_the_task(tiny_llama, tmp_path):
    from circuits.patching import activation_patching
    from circuits.tasks import load_task
    from tests.circuit_tasks import tiny_ioi_file

    task_file = tiny_ioi_file(tmp_path, n=6)
    spec = parse_spec({"name": "sw", "chunk_size": 2,
                       "models": [{"spec": "tiny-llama", "device": "cpu"}],
                       "prompt_sets": [str(task_file)],
                       "jobs": [{"kind": "head_patching", "batch_size": 4}]}, tmp_path)
    assert run_sweep(spec, SweepOptions(runs_dir=tmp_path / "runs"))["status"] == "complete"
    got = pd.read_parquet(tmp_path / "runs" / "sw" / "tiny-llama--tiny_ioi"
                          / "head_effects.parquet")
    whole = activation_patching(tiny_llama, load_task(str(task_file), tiny_llama), batch_size=4)
    for metric, want in (("effect", whole.effect), ("score", whole.score)):
        rows = got[got.metric == metric]
        assert len(rows) == want.size
        values = rows.value.to_numpy()
        assert abs(values - want[rows["layer"].astype(int), rows["head"].astype(int)]).max() < 1e-5
    per_prompt = got[got.metric == "logit_diff"]
    order = {p: i for i, p in enumerate(whole.prompt_ids)}
    expect = whole.patched[per_prompt.prompt_id.map(order), per_prompt.layer.astype(int),
                           per_prompt["head"].astype(int)]
    assert len(per_prompt) == whole.patched.size
    assert abs(per_prompt.value.to_numpy() - expect).max() < 1e-5
    clean = got[got.metric == "clean_logit_diff"].set_index("prompt_id").value
    assert abs(clean[whole.prompt_ids].to_numpy() - whole.clean).max() < 1e-5


@pytest.mark.parametrize("bad, message", [
    ({"id": "long", "text": "attention " * 400, "segments": {"names": [0, 5]}},
     "prompt 'long' has"),
    ({"id": "noseg", "text": "No segment here"}, "prompt 'noseg' has no segment 'names'"),
])
def test_bad_prompt_is_refused_before_any_shard(five, tmp_path, bad, message):
    """One bad prompt fails the sweep with exit-2 input error naming it, before any run folder or
    shard (it used to fail every shard of its prompt set, each blamed on its own chunk)."""
    rows = [json.loads(line) for line in five.read_text().splitlines()]
    prompts = write_jsonl(tmp_path / "five.jsonl", rows[:3] + [bad] + rows[3:])
    with pytest.raises(InputError, match=None) as info:
        run_sweep(spec_for(prompts), SweepOptions(runs_dir=tmp_path / "runs"))
    assert message in str(info.value) and "sweep 'sw': model tiny-llama" in str(info.value)
    assert info.value.exit_code == 2
    assert not (tmp_path / "runs").exists()


def test_sweep_runs_record_empty_segment_warnings(five, tmp_path):
    rows = [json.loads(line) for line in five.read_text().splitlines()]
    rows[1]["segments"] = {"names": [3, 3]}  # prompt b: an empty segment
    prompts = write_jsonl(tmp_path / "five.jsonl", rows)
    manifest = run_sweep(spec_for(prompts), SweepOptions(runs_dir=tmp_path / "runs"))
    [line] = manifest["warnings"][RUN]
    assert line.startswith("attention_entropy: segment 'names' has no tokens in 1 prompt(s) ('b')")
    stored = json.loads((tmp_path / "runs" / "sw" / RUN / "run.json").read_text())
    assert stored["warnings"] == [line] and stored["status"] == "complete"
