"""The run loop end to end through the CLI: the run directory, bad input, interruption and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT, write_jsonl
from workbench_cli.cli import main
from workbench.records import RECORD_SCHEMA
from workbench.store import RunDir, list_runs


def cli(capsys, *argv) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_args(prompts, runs, *extra):
    return ["run", "--model", "tiny-llama", "--prompts", str(prompts), "--runs-dir", str(runs),
            "--device", "cpu", "--no-progress", *extra]


def test_run_writes_manifest_and_tables(capsys, small_prompts, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, *run_args(small_prompts, runs, "--batch-size", "2",
                                           "--param", "attention_entropy.segment=names"))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    assert manifest["status"] == "complete" and f"complete: {run.path}" in out
    assert manifest["model"]["name"] == "tiny-llama" and manifest["model"]["parity"]["ok"]
    assert manifest["prompts"]["sha256"] == __import__("hashlib").sha256(
        small_prompts.read_bytes()).hexdigest()
    assert manifest["probes"] == [{"name": "attention_entropy", "params": {
        "segment": "names", "segment_query": "last", "segment_renormalise": True},
        "hook_points": ["attn.hook_pattern"], "units": manifest["probes"][0]["units"],
        "headline": ["mean_entropy_norm", "mean_entropy"]}]  # the class's, read by the app
    assert manifest["units"]["entropy"] == "nats"
    assert set(manifest["versions"]) >= {"torch", "transformer-lens", "transformers", "python"}
    assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40
    assert set(manifest["timings"]) >= {"load_model_s", "tokenize_s", "forward_s", "total_s"}
    assert run.tables() == ["attention_entropy", "prompts", "tokens"]
    table = pq.read_table(run.table_path("attention_entropy"))
    assert table.schema.equals(RECORD_SCHEMA, check_metadata=False)
    assert set(table.column("run_id").to_pylist()) == {run.run_id}
    assert manifest["tables"]["attention_entropy"]["rows"] == table.num_rows
    tokens = run.read_table("tokens").to_pandas()
    assert tokens.groupby("prompt_id").pos.max().to_dict() == {
        p: n - 1 for p, n in run.read_table("prompts").to_pandas().set_index(
            "prompt_id").n_tokens.items()}
    assert not (run.path / ".parts").exists()

    code, out, _ = cli(capsys, "runs", "--runs-dir", str(runs), "show", run.run_id)
    assert code == 0
    assert "status: complete" in out and "mean_entropy" in out and "highest L" in out
    code, out, _ = cli(capsys, "runs", "--runs-dir", str(runs))
    assert code == 0 and run.run_id[:8] in out


@pytest.mark.parametrize("name, lines, extra, message", [
    ("malformed", ['{"id": "a", "text": "ok"}', '{"id": "b", "text": '], [],
     "bad.jsonl:2: not valid JSON"),
    ("duplicate", ['{"id": "a", "text": "one"}', '{"id": "a", "text": "two"}'], [],
     "bad.jsonl:2: duplicate id 'a' (first on"),
    ("segment", ['{"id": "a", "text": "short", "segments": {"s": [2, 40]}}'], [],
     "bad.jsonl:1: field 'segments.s': span [2, 40) is outside the text (length 5)"),
    ("empty", [""], [], "is empty: no prompts"),
    ("too-long", ['{"id": "a", "text": "' + "word " * 300 + '"}'], [],
     "bad.jsonl:1: prompt 'a' has"),
    ("unknown-model", ['{"id": "a", "text": "ok"}'], ["--model", "no-such/model-anywhere"],
     "model 'no-such/model-anywhere' is not a registry model"),
    ("unknown-probe", ['{"id": "a", "text": "ok"}'], ["--probes", "nope"], "unknown probe(s) 'nope'"),
    ("bad-param", ['{"id": "a", "text": "ok"}'], ["--param", "attention_entropy.sgment=x"],
     "probe 'attention_entropy' has no parameter 'sgment'"),
    ("missing-segment", ['{"id": "a", "text": "ok"}'],
     ["--param", "attention_entropy.segment=passage"], "prompt 'a' has no segment 'passage'"),
])
def test_bad_input_gives_one_line_and_no_run(capsys, tmp_path, name, lines, extra, message,
                                             monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    prompts = write_jsonl(tmp_path / "bad.jsonl", lines)
    runs = tmp_path / "runs"
    args = run_args(prompts, runs)
    if "--model" in extra:
        args[2] = extra[1]
        extra = []
    code, out, err = cli(capsys, *args, *extra)
    assert code == 2
    assert "Traceback" not in err + out
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert not runs.exists() or not any(runs.iterdir())


def test_existing_run_needs_resume_or_overwrite(capsys, small_prompts, tmp_path):
    runs = tmp_path / "runs"
    assert cli(capsys, *run_args(small_prompts, runs))[0] == 0
    code, _, err = cli(capsys, *run_args(small_prompts, runs))
    assert code == 2 and "already exists (status: complete); rerun with --resume" in err
    [(run, before)] = list_runs(runs)
    mtime = run.table_path("attention_entropy").stat().st_mtime_ns
    code, out, _ = cli(capsys, *run_args(small_prompts, runs, "--resume"))
    assert code == 0 and "was already complete" in out  # nothing recomputed or rewritten
    assert run.read_manifest() == before
    assert run.table_path("attention_entropy").stat().st_mtime_ns == mtime
    assert cli(capsys, *run_args(small_prompts, runs, "--overwrite"))[0] == 0
    # resuming with a different configuration is refused
    [(run, _)] = list_runs(runs)
    code, _, err = cli(capsys, *run_args(small_prompts, runs, "--resume", "--batch-size", "1",
                                         "--run-id", run.run_id))
    assert code == 2 and "configuration differs in batch_size" in err


def many_prompts(tmp_path, n=12):
    return write_jsonl(tmp_path / "many.jsonl", [
        {"id": f"p{i:02d}", "text": f"Prompt number {i} talks about " + "attention heads " * (i % 5)}
        for i in range(n)])


def test_interrupted_run_resumes_to_the_same_table(capsys, tmp_path, monkeypatch):
    prompts = many_prompts(tmp_path)
    assert cli(capsys, *run_args(prompts, tmp_path / "ref", "-b", "2"))[0] == 0
    [(ref, _)] = list_runs(tmp_path / "ref")

    calls = {"n": 0}
    original = RunDir.write_batch

    def flaky(self, index, tables):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        original(self, index, tables)

    monkeypatch.setattr(RunDir, "write_batch", flaky)
    code, _, err = cli(capsys, *run_args(prompts, tmp_path / "runs", "-b", "2"))
    assert code == 130 and "--resume" in err
    [(run, manifest)] = list_runs(tmp_path / "runs")
    assert manifest["status"] == "interrupted" and run.done_batches() == [0, 1, 2]
    monkeypatch.setattr(RunDir, "write_batch", original)
    assert cli(capsys, *run_args(prompts, tmp_path / "runs", "-b", "2", "--resume"))[0] == 0
    manifest = run.read_manifest()
    assert manifest["status"] == "complete" and manifest["batches"]["skipped_as_done"] == 3
    assert run.read_table("attention_entropy").equals(ref.read_table("attention_entropy"))


def test_killed_process_resumes_without_duplicates(capsys, tmp_path):
    """SIGKILL a real `workbench run` after two batches; --resume gives the uninterrupted table."""
    prompts = many_prompts(tmp_path)
    runs = tmp_path / "runs"
    slow = ("import time, sys; from workbench import store; orig = store.RunDir.write_batch\n"
            "def slow(self, i, t):\n    orig(self, i, t); time.sleep(0.4)\n"
            "store.RunDir.write_batch = slow\nfrom workbench_cli.cli import main\nmain(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", slow, *run_args(prompts, runs, "-b", "2")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list_runs(runs)
        if found and len(found[0][0].done_batches()) >= 2:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    [(run, manifest)] = list_runs(runs)
    assert json.loads(run.manifest_path.read_text())["status"] == "running"
    assert manifest["status"] == "interrupted"  # its writer is gone (the lock is free)
    assert not run.table_path("attention_entropy").exists()
    done = run.done_batches()
    assert 2 <= len(done) < 6
    assert cli(capsys, *run_args(prompts, runs, "-b", "2", "--resume"))[0] == 0
    assert run.read_manifest()["batches"]["skipped_as_done"] == len(done)
    assert cli(capsys, *run_args(prompts, tmp_path / "ref", "-b", "2"))[0] == 0
    [(ref, _)] = list_runs(tmp_path / "ref")
    got, want = run.read_table("attention_entropy"), ref.read_table("attention_entropy")
    assert got.num_rows == want.num_rows and got.equals(want)
    keys = got.select(["metric", "prompt_id", "layer", "head", "query_pos"]).to_pandas()
    assert not keys.duplicated().any()


def test_models_and_probes_commands(capsys):
    code, out, _ = cli(capsys, "models")
    assert code == 0 and "tiny-llama" in out and "smollm2-135m" in out
    code, out, _ = cli(capsys, "probes")
    assert code == 0 and "attention_entropy" in out and "attn.hook_pattern" in out


def test_manifest_is_json_with_the_command(capsys, small_prompts, tmp_path):
    runs = tmp_path / "runs"
    cli(capsys, *run_args(small_prompts, runs))
    [(run, _)] = list_runs(runs)
    code, out, _ = cli(capsys, "runs", "--runs-dir", str(runs), "show", run.run_id, "--json")
    assert code == 0 and json.loads(out)["run_id"] == run.run_id


def test_empty_segments_and_one_token_prompts_are_named(capsys, tmp_path):
    """Prompts a probe writes no rows for are warned about (manifest + stderr), the same way for
    every probe; position_bias no longer writes a 0 segment_mass for an empty segment."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "full", "text": "Then, Mary and John went to the store.",
         "segments": {"names": [6, 19]}},
        {"id": "empty", "text": "The quick brown fox jumps over the lazy dog.",
         "segments": {"names": [4, 4]}}])
    runs = tmp_path / "runs"
    params = [f"--param={p}.segment=names" for p in
              ("attention_entropy", "attention_sink", "position_bias")]
    code, _, err = cli(capsys, *run_args(prompts, runs, "--probes",
                                         "attention_entropy,attention_sink,position_bias",
                                         "--param", "position_bias.k=1", *params))
    assert code == 0, err
    [(run, manifest)] = list_runs(runs)
    warnings = manifest["warnings"]
    for probe in ("attention_entropy", "attention_sink", "position_bias"):
        [line] = [w for w in warnings if w.startswith(probe)]
        assert "segment 'names' has no tokens in 1 prompt(s) ('empty')" in line
        assert line in " ".join(err.split())
        table = run.read_table(probe).to_pandas()
        seg = table[table.segment == "names"]
        assert len(seg) and set(seg.prompt_id.dropna()) == {"full"}, probe
    one = write_jsonl(tmp_path / "one.jsonl", [{"id": "x", "text": "a"}])  # one token
    code, _, err = cli(capsys, *run_args(one, tmp_path / "one"))
    assert code == 0
    [(run, manifest)] = list_runs(tmp_path / "one")
    assert manifest["tables"] == {} and "a single token ('x')" in manifest["warnings"][0]
    assert "no records were written" in manifest["warnings"][1] and "warning" in err
