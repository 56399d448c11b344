"""Records schema, atomic writes and run-directory bookkeeping (no model needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from workbench.errors import RunStateError
from workbench.records import RECORD_COLUMNS, conform, records, string_column
from workbench.store import RunDir, atomic_dir, atomic_write_json, list_runs


def test_records_broadcast_and_nulls():
    t = records("m", [1.0, 2.0], layer=3, head=np.array([0, 1]), prompt_id="p")
    assert t.column("layer").to_pylist() == [3, 3]
    assert t.column("head").to_pylist() == [0, 1]
    assert t.column("prompt_id").to_pylist() == ["p", "p"]
    assert t.column("query_pos").null_count == 2
    with pytest.raises(ValueError, match="unknown record column"):
        records("m", [1.0], bogus=1)
    with pytest.raises(ValueError, match="has 3 values, expected 2"):
        records("m", [1.0, 2.0], head=[1, 2, 3])


def test_conform_enforces_the_schema():
    t = conform(records("m", [0.5], layer=1), run_id="r", probe="p")
    assert tuple(t.column_names) == RECORD_COLUMNS
    with pytest.raises(ValueError, match="extra \\['oops'\\]"):
        conform(t.append_column("oops", pa.array([1])), run_id="r", probe="p")
    with pytest.raises(ValueError, match="missing \\['value'\\]"):
        conform(t.drop_columns(["value"]), run_id="r", probe="p")


def test_string_column():
    assert string_column(["a", "b"], np.array([1, 0, 1])).to_pylist() == ["b", "a", "b"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "x") as tmp:
            (tmp / "f").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "x") as tmp:
        (tmp / "f").write_text("whole")
    assert (tmp_path / "x" / "f").read_text() == "whole"


def test_run_dir_create_resume_and_parts(tmp_path):
    same = lambda stored: None  # noqa: E731
    run, state = RunDir.create(tmp_path, "r1", {"run_id": "r1", "status": "running",
                                                "created": "t"},
                               resume=False, overwrite=False, same_config=same)
    assert state == "new" == run.state and run.read_manifest()["status"] == "running"
    run.write_batch(0, {"t": conform(records("m", [1.0]), run_id="r1", probe="t")})
    run.write_batch(2, {"t": conform(records("m", [3.0]), run_id="r1", probe="t")})
    assert run.done_batches() == [0, 2] and run.part_table_names() == ["t"]
    assert [x.column("value").to_pylist() for x in run.read_parts("t")] == [[1.0], [3.0]]
    with pytest.raises(RunStateError, match="being written by another process"):
        RunDir.create(tmp_path, "r1", {}, resume=True, overwrite=False, same_config=same)
    run.release()  # the writer is done (or gone)
    with pytest.raises(RunStateError, match="already exists"):
        RunDir.create(tmp_path, "r1", {}, resume=False, overwrite=False, same_config=same)
    with pytest.raises(RunStateError, match="cannot resume run 'r1': it differs"):
        RunDir.create(tmp_path, "r1", {}, resume=True, overwrite=False,
                      same_config=lambda s: "it differs")
    again, state = RunDir.create(tmp_path, "r1", {"status": "running"}, resume=True,
                                 overwrite=False, same_config=same)
    assert state == "resumed" and again.done_batches() == [0, 2]
    assert again.read_manifest()["resumed"] == 1
    again.update_manifest(status="complete")
    done, state = RunDir.create(tmp_path, "r1", {"status": "would overwrite"}, resume=True,
                                overwrite=False, same_config=same)
    assert state == "complete" and done.read_manifest()["status"] == "complete"
    fresh, _ = RunDir.create(tmp_path, "r1", {"status": "new"}, resume=False, overwrite=True,
                             same_config=same)
    assert fresh.done_batches() == []
    with pytest.raises(RunStateError, match="has no table 'nope'"):
        fresh.read_table("nope")


def test_list_runs_skips_junk_and_lists_unreadable(tmp_path):
    atomic_write_json(tmp_path / "a" / "run.json", {"status": "complete", "created": "2026-01-01"})
    atomic_write_json(tmp_path / "b" / "run.json", {"status": "complete", "created": "2026-02-01"})
    (tmp_path / "junk").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    found = {r.run_id: m for r, m in list_runs(tmp_path)}
    assert [r.run_id for r, _ in list_runs(tmp_path)][:2] == ["b", "a"]
    assert found["broken"]["status"] == "unreadable"
    assert "not valid JSON" in found["broken"]["error"]
    assert "junk" not in found


def test_manifest_is_strict_json(tmp_path):
    """NaN and infinities never reach run.json as bare tokens (invalid JSON): they become null."""
    import json

    atomic_write_json(tmp_path / "run.json", {"status": "complete", "a": float("nan"),
                                              "b": [1.5, float("-inf")], "c": {"d": float("inf")}})
    text = (tmp_path / "run.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"status": "complete", "a": None, "b": [1.5, None], "c": {"d": None}}


def test_overwrite_refuses_what_is_not_a_run(tmp_path):
    same = lambda stored: None  # noqa: E731
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "notes", target_is_directory=True)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "run.json").write_text('{"status": "complete"}')
    for name, message in (("notes", "no run.json"), ("link", "symbolic link"),
                          ("fake", "not written by the workbench")):
        with pytest.raises(RunStateError, match=message):
            RunDir.create(tmp_path, name, {"status": "running"}, resume=False, overwrite=True,
                          same_config=same)
    assert (tmp_path / "notes" / "a.txt").read_text() == "x"
    assert (tmp_path / "fake" / "run.json").exists()


def test_a_dead_writers_run_reads_interrupted(tmp_path):
    same = lambda stored: None  # noqa: E731
    run, _ = RunDir.create(tmp_path, "r", {"run_id": "r", "status": "running"}, resume=False,
                           overwrite=False, same_config=same)
    assert run.live_status() == "running"
    run.release()  # as when the process dies
    assert run.live_status() == "interrupted" and list_runs(tmp_path)[0][1]["status"] == \
        "interrupted"
    with pytest.raises(RunStateError, match=r"already exists \(status: interrupted\)"):
        RunDir.create(tmp_path, "r", {}, resume=False, overwrite=False, same_config=same)
