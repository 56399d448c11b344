"""The atlas's circuit roles from faithfulness-sized circuits: every faithfulness figure the atlas
and its circuits run report equals an independent plain Hugging Face forward with the circuit's
ablation; bad circuit inputs are refused before any part runs."""

from __future__ import annotations

import numpy as np
import pytest

from atlas import AtlasOptions, build_atlas
from atlas.scores import summary_rows
from circuits.discovery import ablation_means
from circuits.search import ranking
from circuits.tasks import load_task
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import write_jsonl
from tests.test_circuits_search import hf_circuit_ld
from workbench.errors import InputError
from workbench.heads import all_heads, parse_head
from workbench.store import RunDir


@pytest.fixture(scope="module")
def task_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas-circuit-tasks")
    induction = [{**r, "id": r["id"].replace("ioi", "ind")} for r in tiny_ioi_rows(8, seed=3)]
    return (str(write_jsonl(folder / "ioi.jsonl", tiny_ioi_rows(8, seed=1))),
            str(write_jsonl(folder / "induction.jsonl", induction)))


def _options(tasks, out, **extra) -> AtlasOptions:
    return AtlasOptions(out=out, tasks=tasks, n_prompts=4, n_random=2, batch_size=2,
                        progress=False, skip=("natural", "repeated", "context"), **extra)


@pytest.fixture(scope="module")
def sized_atlas(task_files, tmp_path_factory):
    from workbench.models import load_model

    out = tmp_path_factory.mktemp("atlas-sized") / "atlas-sized"
    return build_atlas(lambda: load_model("tiny-llama", device="cpu"),
                       _options(task_files, out), model_spec="tiny-llama")


def _normalised(model, task, circuit, means) -> float:
    every = all_heads(model.info.n_layers, model.info.n_heads)
    lds = [hf_circuit_ld(model, task, c, means, batch_size=2).mean()
           for c in (circuit, every, [])]
    return (lds[0] - lds[2]) / (lds[1] - lds[2])


def test_atlas_circuits_are_faithfulness_sized_and_every_figure_is_an_hf_forward(
        sized_atlas, task_files, tiny_llama):
    doc, heads = sized_atlas.doc, sized_atlas.heads
    run = RunDir.open(sized_atlas.path.parent / doc["runs"]["circuits"]["run_id"])
    curve = run.read_table("faithfulness_curve").to_pandas()
    for task, path in zip(("ioi", "induction"), task_files):
        c = doc["circuits"][task]
        assert c["selection"] == "faithfulness=0.8" and c["method"] == "attribution_patching"
        held = heads[heads[f"{task}_circuit"]]
        members = sorted(zip(held["layer"], held["head"]))
        assert members == sorted(parse_head(h) for h in c["heads"]) and c["size"] == len(members)
        everything = load_task(path, tiny_llama)
        means = ablation_means(tiny_llama, everything)  # the whole file's corrupted prompts
        scored = load_task(path, tiny_llama, n_prompts=4)
        got = _normalised(tiny_llama, scored, members, means)
        assert c["faithfulness_normalised"] == pytest.approx(got, abs=1e-4)
        assert c["lo"] <= c["faithfulness_normalised"] <= c["hi"]
        if c["reached"]:
            assert c["faithfulness_normalised"] >= c["target"] == 0.8
        # held out: the 4 prompts after the scored ones
        from circuits.sized import subset

        held_out = subset(everything, 4, 8)
        assert c["held_out"]["n_prompts"] == 4
        assert c["held_out"]["faithfulness_normalised"] == pytest.approx(
            _normalised(tiny_llama, held_out, members, means), abs=1e-4)
        # the curve: each prefix of the attribution ranking, by an independent forward
        scores = summary_rows(run, "head_effects", "score",
                              {"probe": "attribution_patching", "segment": task})
        grid = np.full((4, 4), np.nan)
        grid[scores["layer"].astype(int), scores["head"].astype(int)] = scores["value"]
        order = ranking(grid)
        rows = curve[(curve.segment == task) & (curve.metric == "faithfulness_normalised")]
        for r in rows.itertuples():
            size = int(r.condition.split("=")[1])
            if size in (1, 3, 16):
                assert r.value == pytest.approx(_normalised(tiny_llama, scored, order[:size],
                                                            means), abs=1e-4)
        line = next(f for f in doc["findings"] if f.startswith(f"{task} circuit"))
        assert f"{c['size']} heads" in line and "random" in line and "held-out" in line
        if not c["reached"]:
            assert "NO circuit" in line
    rules = {r["name"]: r for r in doc["roles"]}
    assert rules["ioi_circuit"]["selection"] == "faithfulness=0.8"


def test_atlas_circuit_role_thresholds_and_custom_tasks_are_refused(task_files, tmp_path):
    # --threshold ioi_circuit=5 used to relabel nothing while printing "in top-5 circuit"
    with pytest.raises(InputError, match="--threshold ioi_circuit: a circuit role holds"):
        _options(task_files, tmp_path / "a", thresholds={"ioi_circuit": 5})
    with pytest.raises(InputError, match="contradict"):
        _options(task_files, tmp_path / "b", circuit_size=5, circuit_select="top_k=3")
    for bad in ("top_k=0", "top_percent=0", "faithfulness=2"):
        with pytest.raises(InputError, match="out of range"):
            _options(task_files, tmp_path / "c", circuit_select=bad)
    # a task named neither ioi nor induction used to leave every circuit role NaN, silently
    other = write_jsonl(tmp_path / "names.jsonl", tiny_ioi_rows(8, seed=2))
    with pytest.raises(InputError, match="a task named 'names' would label no head"):
        build_atlas(lambda: pytest.fail("loaded"), _options((str(other),), tmp_path / "d"),
                    model_spec="tiny-llama")
    assert not (tmp_path / "d").exists()


def test_atlas_checks_every_circuit_prompt_before_the_first_part(tmp_path):
    rows = tiny_ioi_rows(8, seed=1)
    rows[6]["corrupted_text"] = ""  # a held-out prompt without a corruption
    ioi = write_jsonl(tmp_path / "ioi.jsonl", rows)
    with pytest.raises(InputError, match="has no 'corrupted_text'"):
        build_atlas(lambda: pytest.fail("loaded"), AtlasOptions(
            out=tmp_path / "e", tasks=(str(ioi),), n_prompts=4, progress=False),
            model_spec="tiny-llama")
    assert not (tmp_path / "e").exists()
    rows = tiny_ioi_rows(8, seed=1)
    rows[5]["corrupted_text"] += " and"  # a length mismatch: needs the tokenizer
    ioi = write_jsonl(tmp_path / "ioi2.jsonl", rows)
    ioi = ioi.rename(tmp_path / "ioi.jsonl")
    from workbench.models import load_model

    with pytest.raises(InputError, match="patching needs equal lengths"):
        build_atlas(lambda: load_model("tiny-llama", device="cpu"), AtlasOptions(
            out=tmp_path / "runs" / "f", tasks=(str(ioi),), n_prompts=4, progress=False,
            batch_size=2), model_spec="tiny-llama")
    assert not (tmp_path / "runs" / "f-natural").exists()  # no part ran
