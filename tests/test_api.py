"""The public Python API (``import workbench as wb``) on the tiny model: in-memory runs equal the
CLI's records, the (layer x head) tables and top-k against the raw records, preloaded models, and
the defects fixed with it (in-memory prompt-set hashes, ``load_model(hf_model)``)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import torch

import workbench as wb
from tests.conftest import write_jsonl
from workbench.errors import InputError
from workbench_cli.cli import main

TEXTS = ["The cat sat on the mat. The cat sat on the mat.",
         "Alice met Bob at the park, and then Alice met Bob at the cafe.",
         "one two three four one two three four one two"]
PROBES = ["attention_sink", "head_types", "attention_entropy"]
KEYS = ["probe", "metric", "layer", "head", "prompt_id", "query_pos", "key_pos", "segment",
        "condition", "dim"]


def records(frame: pd.DataFrame) -> pd.DataFrame:
    """Records without the run id (which names the run, not the numbers), in a fixed order."""
    return frame.drop(columns="run_id").sort_values(KEYS, na_position="first",
                                                    ignore_index=True)


def cli_code(argv: list[str]) -> int:
    """``workbench ARGV`` in this process; its exit code."""
    try:
        main(argv)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def the_run(runs_dir):
    """The one run folder under ``runs_dir`` (beside it: its lock file)."""
    [path] = [p for p in runs_dir.iterdir() if (p / "run.json").is_file()]
    return path


@pytest.fixture(scope="module")
def tiny_results(tiny_llama):
    return wb.run(tiny_llama, TEXTS, PROBES)


def test_in_memory_run_writes_nothing_and_equals_the_cli(tiny_llama, tiny_results, tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    again = wb.run(tiny_llama, TEXTS, PROBES)
    assert os.listdir(tmp_path) == []  # in memory: no runs folder, no file
    assert again.run_id == tiny_results.run_id
    jsonl = write_jsonl(tmp_path / "mine.jsonl",
                        [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS)])
    assert cli_code(["run", "--model", "tiny-llama", "--device", "cpu", "--prompts", str(jsonl),
                     "--probes", ",".join(PROBES), "--runs-dir", str(tmp_path / "runs"),
                     "--no-progress"]) == 0
    cli = wb.open_run(the_run(tmp_path / "runs"))
    assert cli.probes == tiny_results.probes == PROBES
    for probe in PROBES:
        pd.testing.assert_frame_equal(records(cli[probe]), records(tiny_results[probe]))
    pd.testing.assert_frame_equal(cli["tokens"], tiny_results["tokens"])
    pd.testing.assert_frame_equal(cli["prompts"].drop(columns="source"),  # file:line vs <prompts>:N
                                  tiny_results["prompts"].drop(columns="source"))
    assert cli.manifest["config_key"] == {**tiny_results.manifest["config_key"],
                                          "prompts_sha256": cli.manifest["prompts"]["sha256"]}


def test_heads_and_top_against_the_records(tiny_results):
    raw = tiny_results["head_types"]
    per_prompt = raw[(raw.metric == "induction_mul") & raw.prompt_id.notna()]
    expected = per_prompt.groupby(["layer", "head"]).value.mean().unstack("head")
    table = tiny_results.heads("mean_induction_mul")
    assert table.shape == (4, 4) and list(table.index) == [0, 1, 2, 3]
    np.testing.assert_allclose(table.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
    top = tiny_results.top("mean_induction_mul", 5)
    flat = sorted(((v, -layer, -h) for (layer, h), v in expected.stack().items()), reverse=True)
    assert [(r.layer, r.head) for r in top.itertuples()] == [(-a, -b) for _, a, b in flat[:5]]
    np.testing.assert_allclose(top.value, [v for v, _, _ in flat[:5]])
    sinks = tiny_results["attention_sink"]
    share = sinks[(sinks.metric == "sink_share_first") & sinks.prompt_id.notna()]
    np.testing.assert_allclose(tiny_results.heads("mean_sink_share_first").to_numpy(),
                               share.groupby(["layer", "head"]).value.mean().unstack().to_numpy())
    assert tiny_results.units["mean_entropy"] == tiny_results.manifest["units"]["mean_entropy"]
    with pytest.raises(InputError, match="no per-head summary of metric 'nope'"):
        tiny_results.heads("nope")
    with pytest.raises(InputError, match="k must be at least 1"):
        tiny_results.top("mean_entropy", 0)
    with pytest.raises(InputError, match="has no table 'nope'"):
        tiny_results["nope"]


def test_save_and_open_run_round_trip(tiny_results, tmp_path):
    path = tiny_results.save(tmp_path)
    assert path == tmp_path / tiny_results.run_id and (path / "run.json").is_file()
    back = wb.open_run(path)
    for name in tiny_results.tables:
        assert back.to_arrow(name).equals(tiny_results.to_arrow(name))
    assert back.manifest == tiny_results.manifest


def test_show_returns_the_figure_modules_heatmap(tiny_results, tiny_llama):
    fig = tiny_results.show("mean_entropy_norm")
    z = np.array(fig.data[0].z)  # (head x layer), as the app draws it
    np.testing.assert_allclose(z, tiny_results.heads("mean_entropy_norm").to_numpy().T)
    pattern = wb.show_pattern(tiny_llama, TEXTS[0], 1, 2)
    grid = np.array(pattern.data[0].z, dtype=float)
    n = grid.shape[0]
    np.testing.assert_allclose(np.nansum(grid, axis=1), np.ones(n), atol=1e-5)  # rows: softmax


def test_prompts_inputs_and_errors(small_prompts):
    from_file = wb.prompts(small_prompts)
    assert [p.id for p in from_file.prompts] == ["a", "b", "c"] and from_file.name == "small"
    dicts = wb.prompts([{"id": "q", "text": "hello there", "segments": {"s": [0, 5]}}])
    assert dicts.prompts[0].segments == {"s": (0, 5)}
    texts = wb.prompts(["hi you", "yo"], segments=[{"who": [3, 6]}, None], name="mine")
    assert texts.name == "mine" and texts.prompts[0].segments == {"who": (3, 6)}
    with pytest.raises(InputError, match="2 texts but 1 segments"):
        wb.prompts(["a", "b"], segments=[{}])
    with pytest.raises(InputError, match=r"<prompts>:1: field 'segments.s'"):
        wb.prompts([{"id": "q", "text": "hi", "segments": {"s": [0, 9]}}])
    with pytest.raises(InputError, match="duplicate id 'p'"):
        wb.prompts([{"id": "p", "text": "a"}, {"id": "p", "text": "b"}])
    with pytest.raises(InputError, match="no prompts given"):
        wb.prompts([])


def test_preloaded_hf_model_gives_the_same_records(tiny_results):
    """Defect: load_model(hf_model) raised "model spec is empty"."""
    from workbench.models import MODELS

    hf_model, tokenizer, *_ = MODELS["tiny-llama"].build(dtype=torch.float32)
    model = wb.load(hf_model, tokenizer=tokenizer)
    assert model.info.source == "preloaded" and model.info.parity.ok
    assert model.info.parity.max_abs_diff == 0.0
    again = wb.run(model, TEXTS, PROBES)
    for probe in PROBES:
        pd.testing.assert_frame_equal(records(again[probe]), records(tiny_results[probe]))
    bridged = wb.load(model.bridge, tokenizer=tokenizer)  # a TransformerBridge: reused as it is
    assert bridged.bridge is model.bridge and bridged.info.parity.max_abs_diff == 0.0
    pd.testing.assert_frame_equal(records(wb.run(bridged, TEXTS, ["head_types"])["head_types"]),
                                  records(tiny_results["head_types"]))
    with pytest.raises(InputError, match="without its tokenizer"):
        wb.load(hf_model)
    with pytest.raises(InputError, match="expected a model spec"):
        wb.load(object())


def test_run_checks_prompts_against_probes(tiny_llama):
    with pytest.raises(InputError, match="<prompts>:1: prompt 'p0' has no segment 'passage'"):
        wb.run("not-loaded-because-the-check-comes-first", TEXTS, ["attention_entropy"],
               params={"attention_entropy": {"segment": "passage"}})
    with pytest.raises(InputError, match="unknown probe"):
        wb.run(tiny_llama, TEXTS, ["nope"])


def test_plugins_are_entry_points():
    from probes import PROBES as REGISTRY
    from workbench.plugins import job, probe_classes

    assert set(probe_classes()) == set(REGISTRY) >= {"attention_entropy", "attention_sink",
                                                     "head_types", "head_divergence"}
    assert all(cls.name == name for name, cls in probe_classes().items())
    assert callable(job("circuits")) and callable(job("atlas")) and callable(job("intervene"))
    with pytest.raises(InputError, match="no job 'nope'"):
        job("nope")


@pytest.mark.real_model
def test_quickstart_snippet_on_smollm2_equals_the_cli(smollm2, tmp_path):
    """The README/quickstart snippet on the real model: in memory, and the same records as
    ``workbench run`` on a JSONL of the same three prompts."""
    res = wb.run(smollm2, TEXTS, PROBES)
    tables = {m: res.heads(m) for m in ("mean_sink_share_first", "mean_induction_mul",
                                        "mean_entropy_norm")}
    assert all(t.shape == (30, 9) for t in tables.values())
    jsonl = write_jsonl(tmp_path / "mine.jsonl",
                        [{"id": f"p{i}", "text": t} for i, t in enumerate(TEXTS)])
    assert cli_code(["run", "--model", "smollm2-135m", "--device", "cpu", "--prompts",
                     str(jsonl), "--probes", ",".join(PROBES), "--runs-dir",
                     str(tmp_path / "runs"), "--no-progress"]) == 0
    cli = wb.open_run(the_run(tmp_path / "runs"))
    for probe in PROBES:
        pd.testing.assert_frame_equal(records(cli[probe]), records(res[probe]))


def test_take_is_a_set_of_its_own(small_prompts):
    full = wb.prompts(small_prompts)
    first = full.take(2)
    assert [p.id for p in first.prompts] == ["a", "b"] and first.name == "small"
    assert first.sha256 != full.sha256 and first.sha256 == wb.prompts(
        [{"id": p.id, "text": p.text, "segments": p.segments} for p in full.prompts[:2]]).sha256
    with pytest.raises(InputError, match="at least 1"):
        full.take(0)


def test_circuits_and_intervene_jobs_equal_the_cli(tiny_llama, tmp_path, monkeypatch):
    """wb.circuits / wb.intervene (the workbench.jobs plug-ins) keep nothing on disk and give
    the CLI commands' records."""
    from tests.circuit_tasks import tiny_ioi_rows

    monkeypatch.chdir(tmp_path)
    task = write_jsonl(tmp_path / "alpha.jsonl", tiny_ioi_rows(4, seed=1))
    spec = [{"op": "scale_head", "heads": ["1.0", "2.3"], "alpha": 1.0}]
    (tmp_path / "spec.json").write_text(__import__("json").dumps(spec))
    before = sorted(tmp_path.iterdir())
    res = wb.circuits(tiny_llama, [str(task)], n_random=1, select="top_k=3")
    ran = wb.intervene(tiny_llama, task, spec, sweep="alpha=0,2")
    assert sorted(tmp_path.iterdir()) == before
    common = ["--model", "tiny-llama", "--device", "cpu", "--no-progress"]
    assert cli_code(["circuits", *common, "--task", str(task), "--n-random", "1", "--select",
                     "top_k=3", "--runs-dir", str(tmp_path / "c")]) == 0
    assert cli_code(["intervene", *common, "--prompts", str(task), "--spec",
                     str(tmp_path / "spec.json"), "--sweep", "alpha=0,2", "--runs-dir",
                     str(tmp_path / "i")]) == 0
    for mine, folder in ((res, "c"), (ran, "i")):
        cli = wb.open_run(the_run(tmp_path / folder))
        assert set(cli.probes) == set(mine.probes) and mine.probes
        for table in mine.probes:
            pd.testing.assert_frame_equal(records(cli[table]), records(mine[table]))
