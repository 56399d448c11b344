"""`workbench heads importance | prune | learn-gates` on a tiny model: records written, the learned
spec loadable by `workbench intervene`, bad input stopped with exit code 2 and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import write_jsonl
from tests.pruning_fixture import lm_prompt_file
from workbench_cli.cli import main
from workbench.store import RunDir

@pytest.fixture
def prompts(tmp_path):
    return lm_prompt_file(tmp_path / "p.jsonl")


def _heads(*args, tmp_path, prompts):
    main(["heads", *args, "--model", "tiny-llama", "--prompts", str(prompts), "--runs-dir",
          str(tmp_path / "runs"), "--no-progress"])


def test_importance_cli_writes_records(tmp_path, prompts, capsys):
    _heads("importance", "--run-id", "imp", "--objective", "logit_diff", tmp_path=tmp_path,
           prompts=prompts)
    assert "most important heads" in capsys.readouterr().out
    run = RunDir.open(tmp_path / "runs" / "imp")
    manifest = run.read_manifest()
    assert manifest["kind"] == "heads" and manifest["status"] == "complete"
    assert manifest["heads"]["objective"] == "logit_diff"
    frame = run.read_table("head_importance").to_pandas()
    grads = frame[frame.metric == "gate_gradient"]
    assert len(grads) == 6 * 16 and set(grads.prompt_id) == {f"p{i}" for i in range(6)}
    raw = frame[frame.metric == "importance"].sort_values(["layer", "head"])
    mean_abs = grads.assign(value=grads.value.abs()).groupby(["layer", "head"]).value.mean()
    assert np.allclose(raw.value.to_numpy(), mean_abs.to_numpy())
    norm = frame[frame.metric == "importance_norm"]
    assert np.allclose(norm.groupby("layer").value.apply(lambda v: float(np.sum(v ** 2))), 1.0)


def test_prune_cli_curve_and_removable_fraction(tmp_path, prompts, capsys):
    _heads("prune", "--run-id", "pr", "--seeds", "2", "--ablation", "mean", tmp_path=tmp_path,
           prompts=prompts)
    assert "removable at <= 5% degradation" in capsys.readouterr().out
    run = RunDir.open(tmp_path / "runs" / "pr")
    frame = run.read_table("pruning_curve").to_pandas()
    means = frame[frame.metric == "mean_lm_loss"]
    assert set(means.segment) == {"importance", "random-0", "random-1"}
    assert set(means.condition) == {f"pruned={c / 16:.4g}" for c in
                                    [0, 2, 3, 5, 6, 8, 10, 11, 13, 14, 16]}
    start = means[means.condition == "pruned=0"].value
    assert np.allclose(start, start.iloc[0])  # every order starts at the unmodified model
    fractions = run.read_manifest()["removable_fraction"]
    assert set(fractions) == {"importance", "random-0", "random-1", "random", "random_min",
                              "random_max"}
    assert fractions["random"] == pytest.approx((fractions["random-0"]
                                                 + fractions["random-1"]) / 2)
    assert {"head_importance", "pruning_curve"} <= set(run.tables())


def test_learn_gates_cli_split_records_and_spec_loads_in_intervene(tmp_path, prompts, capsys):
    _heads("learn-gates", "--run-id", "lg", "--lambda", "0", "--lambda", "0.5", "--steps", "20",
           "--lr", "0.3", "--batch-size", "2", tmp_path=tmp_path, prompts=prompts)
    shown = capsys.readouterr().out
    assert "lambda=0.5" in shown and "spec lambda=0.5" in shown
    run = RunDir.open(tmp_path / "runs" / "lg")
    manifest = run.read_manifest()
    split = manifest["split"]
    assert not set(split["train"]) & set(split["eval"])
    assert sorted(split["train"] + split["eval"]) == [f"p{i}" for i in range(6)]
    frame = run.read_table("learned_gates").to_pandas()
    assert set(frame.prompt_id.dropna()) == set(split["eval"])  # evaluated on held-out only
    gates = frame[(frame.metric == "gate") & (frame.condition == "lambda=0.5")]
    assert len(gates) == 16 and gates.value.between(0, 1).all()
    open_ = frame[(frame.metric == "open_gates") & (frame.condition == "lambda=0.5")].value
    assert int(open_.iloc[0]) == int((gates.value > 0).sum())
    spec_path = manifest["specs"]["0.5"]
    spec = json.loads(open(spec_path).read())
    assert all(op["op"] == "scale_head" for op in spec)
    main(["intervene", "--model", "tiny-llama", "--prompts", str(prompts), "--spec", spec_path,
          "--runs-dir", str(tmp_path / "runs"), "--run-id", "iv", "--no-progress"])
    assert RunDir.open(tmp_path / "runs" / "iv").read_manifest()["status"] == "complete"


def test_learned_spec_reproduces_the_held_out_metric(tmp_path, prompts, tiny_llama):
    from pruning.objectives import prepare
    from workbench.forward import logits
    from workbench.interventions import applied, check_spec, load_spec
    from workbench.prompts import load_prompt_set
    from pruning.objectives import metric_values

    _heads("learn-gates", "--run-id", "lg2", "--lambda", "2", "--steps", "15", "--lr", "0.5",
           "--batch-size", "2", tmp_path=tmp_path, prompts=prompts)
    run = RunDir.open(tmp_path / "runs" / "lg2")
    manifest = run.read_manifest()
    frame = run.read_table("learned_gates").to_pandas()
    stored = frame[(frame.metric == "lm_loss") & (frame.condition == "lambda=2")]
    data = prepare(tiny_llama, load_prompt_set(prompts), "lm").subset(manifest["split"]["eval"])
    checked = check_spec(tiny_llama, load_spec(manifest["specs"]["2.0"]), list(data.tokenized))
    for batch in data.batches(8):
        with applied(tiny_llama, checked, batch), torch.inference_mode():
            got = metric_values(data, logits(tiny_llama, batch), batch)
        want = stored.set_index("prompt_id").loc[batch.prompt_ids, "value"].to_numpy()
        assert np.allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("args, message", [
    (["importance", "--objective", "perplexity"], "--objective 'perplexity'"),
    (["prune", "--ablation", "resample"], "--ablation 'resample'"),
    (["prune", "--step", "0"], "--step 0.0: expected a finite number in (0, 1]"),
    (["prune", "--seeds", "0"], "--seeds 0: expected an integer in [1, 1000]"),
    (["learn-gates", "--lambda", "-1"], "--lambda -1.0: expected a finite number in [0, 1000000]"),
    (["learn-gates", "--eval-fraction", "1.5"], "--eval-fraction 1.5: expected a finite number in (0, 1)"),
    (["learn-gates", "--steps", "0"], "--steps 0: expected an integer in [1, 1000000]"),
    (["importance", "--n-prompts", "0"], "--n-prompts 0: expected an integer in [1, 1000000]"),
])
def test_bad_options_exit_2_and_write_nothing(tmp_path, prompts, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        _heads(*args, tmp_path=tmp_path, prompts=prompts)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "runs").exists()


def test_logit_diff_without_answers_exits_2(tmp_path, capsys):
    bare = write_jsonl(tmp_path / "bare.jsonl", [{"id": "x", "text": "Hello there, attention"}])
    with pytest.raises(SystemExit) as exit_:
        _heads("prune", "--objective", "logit_diff", tmp_path=tmp_path, prompts=bare)
    assert exit_.value.code == 2
    assert "has no 'answer'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
