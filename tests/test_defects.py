"""Regression tests of four defects found by using the workbench as a new user would. Each failed
before its fix (tests/test_defects.py run against commit 3d82826, the parent of the API work)."""

from __future__ import annotations

import pytest
import torch

from probes import make_probes
from tests.conftest import write_jsonl
from workbench.prompts import Prompt, PromptSet
from workbench.run import RunOptions, execute_run
from workbench_cli.cli import main


def cli(capsys, *argv) -> tuple[int, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_in_memory_prompt_sets_hash_their_content(tiny_llama, tmp_path):
    """PromptSet(prompts, files=()) hashed to sha256("") every time: two different sets got one
    run id, and with resume the second returned the first one's results."""
    a, b = PromptSet((Prompt("x", "a"),), ()), PromptSet((Prompt("x", "b"),), ())
    assert a.sha256 != b.sha256
    assert a.sha256 == PromptSet((Prompt("x", "a", source="elsewhere:3"),), ()).sha256
    options = RunOptions(runs_dir=tmp_path, resume=True, progress=False)
    first = execute_run(tiny_llama, a, make_probes(["attention_entropy"]), options)
    second = execute_run(tiny_llama, b, make_probes(["attention_entropy"]), options)
    assert first.run_id != second.run_id
    assert second.read_table("tokens").column("token").to_pylist() == ["b"]


def test_load_model_takes_a_preloaded_hf_model():
    """load_model(hf_model) raised "model spec is empty"."""
    from workbench.models import MODELS, load_model

    hf_model, tokenizer, *_ = MODELS["tiny-llama"].build(dtype=torch.float32)
    loaded = load_model(hf_model, tokenizer=tokenizer, device="cpu")
    by_name = load_model("tiny-llama", device="cpu")
    assert loaded.info.parity.ok and loaded.info.source == "preloaded"
    ids = torch.tensor([[5, 17, 3, 9]])
    with torch.inference_mode():
        assert torch.equal(loaded.bridge(ids), by_name.bridge(ids))


@pytest.fixture
def no_model_load(monkeypatch):
    """Any model load fails the test (the defects were loads that should not happen)."""
    import workbench.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(workbench.models, "load_model", refuse)


def test_prompt_errors_come_before_the_model_loads(capsys, tmp_path, no_model_load):
    """A missing segment (and an unknown task) was reported only after the model had loaded."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "hello there"}])
    code, said = cli(capsys, "run", "--model", "tiny-llama", "--prompts", str(prompts),
                     "--param", "attention_entropy.segment=passage", "--runs-dir",
                     str(tmp_path / "runs"), "--no-progress")
    assert code == 2 and "prompt 'a' has no segment 'passage'" in said, said
    assert "loaded" not in said and not (tmp_path / "runs").exists()
    code, said = cli(capsys, "circuits", "--model", "tiny-llama", "--task", "no-such-task",
                     "--runs-dir", str(tmp_path / "runs"), "--no-progress")
    assert code == 2 and "task 'no-such-task' is neither a shipped task" in said, said


def test_resume_of_a_finished_run_needs_no_model(capsys, tmp_path, monkeypatch):
    """--resume of a finished run loaded the model and ran the parity check again."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "hello there you"}])
    argv = ["run", "--model", "tiny-llama", "--device", "cpu", "--prompts", str(prompts),
            "--runs-dir", str(tmp_path / "runs"), "--no-progress", "--resume"]
    code, said = cli(capsys, *argv)
    assert code == 0 and "complete" in said, said
    import workbench.models

    monkeypatch.setattr(workbench.models, "load_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    code, said = cli(capsys, *argv)
    assert code == 0 and "was already complete" in said and "loading model" not in said, said
    with pytest.raises(AssertionError, match="model loaded"):  # another configuration does
        main([*argv, "--param", "attention_entropy.segment_query=all"])
