"""The head atlas: role rules on hand-made tables, and the whole battery on tiny models (scores
equal their probe records, resume after a kill, comparison across depths, the command)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from atlas import AtlasOptions, build_atlas, compare, open_atlas
from atlas.roles import ROLES, Role, assign_roles, rank
from atlas.scores import summary_rows
from tests.circuit_tasks import tiny_ioi_rows
from tests.conftest import DATA, write_jsonl
from workbench.errors import InputError
from workbench.store import RunDir

# --- role rules on a hand-made table --------------------------------------------------------------


def _scores(**columns) -> pd.DataFrame:
    frame = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1]})
    for role in ROLES:
        frame[f"{role}_score"] = columns.get(role, [np.nan] * 4)
    return frame


def test_rules_label_exactly_as_documented():
    scores = _scores(sink=[0.31, 0.3, 0.9, np.nan], induction=[0.1, 0.21, 0.19, 0.5],
                     low_entropy=[0.5, 0.19, 0.2, 0.05], context=[3.0, 1.0, 3.0, 2.0],
                     ioi_circuit=[0.4, -0.2, 0.1, 0.0])
    members = {"ioi_circuit": pd.Series([True, True, False, False])}
    atlas = assign_roles(scores, ceilings={"induction": 0.5}, members=members,
                         thresholds={"context": 2})
    # sink: strictly above 0.3; NaN is never labelled and gets no rank
    assert atlas["sink"].tolist() == [True, False, True, False]
    assert atlas["sink_rank"].tolist()[:3] == [2, 3, 1] and pd.isna(atlas["sink_rank"][3])
    # induction: above 0.4 x ceiling 0.5 = 0.2
    assert atlas["induction"].tolist() == [False, True, False, True]
    # low entropy: below 0.2; rank 1 is the lowest score
    assert atlas["low_entropy"].tolist() == [False, True, False, True]
    assert atlas["low_entropy_rank"].tolist() == [4, 2, 3, 1]
    # top_k with k overridden to 2: a tie at the top takes both places
    assert atlas["context_rank"].tolist() == [1, 4, 1, 3]
    assert atlas["context"].tolist() == [True, False, True, False]
    # member: the circuit's heads, whatever their score
    assert atlas["ioi_circuit"].tolist() == [True, True, False, False]
    # unmeasured roles: no label, no rank
    assert not atlas["previous_token"].any() and atlas["previous_token_rank"].isna().all()
    assert atlas["roles"].tolist() == ["sink,context,ioi_circuit",
                                       "induction,low_entropy,ioi_circuit", "sink,context",
                                       "induction,low_entropy"]


def test_rules_refuse_what_they_cannot_decide():
    scores = _scores(induction=[0.1, 0.2, 0.3, 0.4])
    with pytest.raises(InputError, match="ceiling"):
        assign_roles(scores)
    with pytest.raises(InputError, match="unknown role"):
        assign_roles(_scores(), thresholds={"nope": 1.0})
    with pytest.raises(InputError, match="circuit's heads"):
        assign_roles(_scores(ioi_circuit=[0.1, 0.2, 0.3, 0.4]))
    assert rank(pd.Series([2.0, 2.0, 1.0]), higher=False).tolist() == [2, 2, 1]
    assert isinstance(ROLES["sink"], Role) and ROLES["sink"].threshold == 0.3


# --- the battery on tiny models ---------------------------------------------------------------------


def _head(path, n, keep=None):
    rows = [json.loads(line) for line in path.read_text().splitlines()][:n]
    return [keep(r) if keep else r for r in rows]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("atlas-inputs")
    natural = [{"id": r["id"], "text": r["text"][:160]} for r in _head(DATA / "natural.jsonl", 4)]
    repeated = _head(DATA / "repeated_tokens.jsonl", 3)
    context = _head(DATA / "counterfactual_context.jsonl", 4)
    induction = [{**r, "id": r["id"].replace("ioi", "ind")} for r in tiny_ioi_rows(4, seed=3)]
    return {"natural": write_jsonl(folder / "natural.jsonl", natural),
            "repeated": write_jsonl(folder / "repeated.jsonl", repeated),
            "context": write_jsonl(folder / "context.jsonl", context),
            "tasks": (str(write_jsonl(folder / "ioi.jsonl", tiny_ioi_rows(4, seed=1))),
                      str(write_jsonl(folder / "induction.jsonl", induction)))}


def _options(inputs, out, **extra) -> AtlasOptions:
    extra = {"causal_draws": 2, "causal_prompts": 2, **extra}  # the causal part kept small
    return AtlasOptions(out=out, natural=inputs["natural"], repeated=inputs["repeated"],
                        context=inputs["context"], tasks=inputs["tasks"], n_prompts=4,
                        circuit_size=3, n_random=1, batch_size=2, progress=False, **extra)


def _loader(spec="tiny-llama"):
    from workbench.models import load_model

    return lambda: load_model(spec, device="cpu")


@pytest.fixture(scope="module")
def tiny_atlas(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas-runs") / "atlas-tiny"
    return build_atlas(_loader(), _options(inputs, out), model_spec="tiny-llama")


def test_every_atlas_score_is_the_probe_record_it_came_from(tiny_atlas):
    heads = tiny_atlas.heads
    assert len(heads) == 16 and heads["model"].eq("tiny-llama").all()
    assert heads["depth"].tolist() == (heads["layer"] / 4).tolist()
    runs = {part: RunDir.open(tiny_atlas.path.parent / meta["run_id"])
            for part, meta in tiny_atlas.doc["runs"].items()}
    assert set(runs) == {"natural", "repeated", "context", "circuits", "composition", "causal"}
    for name, role in ROLES.items():
        where = dict(role.where)
        if role.rule == "member":
            where.update(probe="attribution_patching", condition="corrupted_into_clean")
        rows = summary_rows(runs[role.source], role.table, role.metric, where)
        rows = rows[rows["head"].notna()]
        got = heads.set_index(["layer", "head"])[f"{name}_score"]
        want = rows.set_index(["layer", "head"])["value"]
        assert len(want) == 16, name
        np.testing.assert_array_equal(got.loc[want.index].to_numpy(), want.to_numpy(),
                                      err_msg=name)
    members = summary_rows(runs["circuits"], "circuits", "member",
                           {"probe": "attribution_patching", "segment": "ioi"})
    held = heads[heads["ioi_circuit"]]
    assert set(zip(held["layer"], held["head"])) == set(zip(members["layer"].astype(int),
                                                             members["head"].astype(int)))
    assert len(held) == 3


def test_atlas_json_records_model_prompts_thresholds_runs_and_findings(tiny_atlas, inputs):
    doc = tiny_atlas.doc
    assert doc["model"]["name"] == "tiny-llama" and doc["model"]["n_layers"] == 4
    [natural] = doc["prompt_sets"]["natural"]
    assert natural["n_prompts"] == 4 and len(natural["sha256"]) == 64
    roles = {r["name"]: r for r in doc["roles"]}
    assert roles["sink"]["threshold"] == 0.3 and "2410.10781" in roles["sink"]["reason"]
    assert roles["ioi_circuit"]["threshold"] == 3  # the circuit size asked for
    ceiling = roles["induction"]["ceiling"]
    assert 0 < ceiling <= 1
    # the ceiling is the share of query rows with an induction target, from the token ids
    induction = tiny_atlas.heads["induction"]
    cut = 0.4 * ceiling
    assert induction.tolist() == (tiny_atlas.heads["induction_score"] > cut).tolist()
    manifest = RunDir.open(tiny_atlas.path).read_manifest()
    assert manifest["kind"] == "atlas" and manifest["status"] == "complete"
    sinks = int(tiny_atlas.heads["sink"].sum())
    assert any(line.startswith(f"sink heads (mean attention on token 0 > 0.3): {sinks} of 16")
               for line in doc["findings"])
    assert any("ioi and induction circuits share" in line for line in doc["findings"])


def test_resume_after_a_kill_gives_the_same_atlas(inputs, tiny_atlas, tmp_path, monkeypatch):
    from workbench import store

    real = store.RunDir.write_batch
    calls = {"n": 0}

    def killed(self, index, tables):
        calls["n"] += 1
        if calls["n"] == 2:  # inside the first part, after one batch was written
            raise KeyboardInterrupt
        return real(self, index, tables)
    monkeypatch.setattr(store.RunDir, "write_batch", killed)
    out = tmp_path / "atlas-tiny"
    with pytest.raises(KeyboardInterrupt):
        build_atlas(_loader(), _options(inputs, out), model_spec="tiny-llama")
    assert RunDir.open(out).read_manifest()["status"] == "interrupted"
    with pytest.raises(Exception, match="--resume"):
        build_atlas(_loader(), _options(inputs, out), model_spec="tiny-llama")
    resumed = build_atlas(_loader(), _options(inputs, out, resume=True), model_spec="tiny-llama")
    pd.testing.assert_frame_equal(resumed.heads, tiny_atlas.heads)
    assert resumed.doc["findings"] == tiny_atlas.doc["findings"]
    # a finished atlas resumed again is answered from its runs, without loading the model
    again = build_atlas(lambda: pytest.fail("the model was loaded"),
                        _options(inputs, out, resume=True), model_spec="tiny-llama")
    pd.testing.assert_frame_equal(again.heads, tiny_atlas.heads)
    with pytest.raises(Exception, match="made for model"):
        build_atlas(_loader(), _options(inputs, out, resume=True), model_spec="tiny-gpt2")


def _two_layer_llama(folder):
    from transformers import PreTrainedTokenizerFast

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    tok = PreTrainedTokenizerFast.from_pretrained(tiny_tokenizer_dir())
    model = build_tiny_hf_model(TinyConfig("llama", n_layers=2), len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_compare_aligns_models_of_different_depth_by_relative_depth(inputs, tiny_atlas,
                                                                      tmp_path):
    spec = _two_layer_llama(tmp_path / "llama-2l")
    other = build_atlas(_loader(spec), _options(inputs, tmp_path / "runs" / "atlas-2l",
                                                skip=("circuits",)), model_spec=spec)
    assert other.n_layers == 2 and other.heads["ioi_circuit_score"].isna().all()
    frame, lines = compare(open_atlas(tiny_atlas.path), other)
    assert len(lines) == 1 and "not comparable" in lines[0] and "relative depth" in lines[0]
    assert "ioi_circuit" not in set(frame["role"])  # measured in one atlas only
    sink = frame[frame["role"] == "sink"].set_index("band")
    assert sink.loc["early", "a_layers"] == "0-1" and sink.loc["late", "a_layers"] == "3-3"
    assert sink.loc["early", "b_layers"] == "0-0" and sink.loc["middle", "b_layers"] == "1-1"
    assert sink.loc["late", "b_layers"] == "-" and np.isnan(sink.loc["late", "b_share"])
    a = tiny_atlas.heads
    assert sink.loc["early", "a_share"] == a[a["layer"] <= 1]["sink"].mean()
    b = other.heads
    assert sink.loc["middle", "b_share"] == b[b["layer"] == 1]["sink"].mean()
    same, same_lines = compare(open_atlas(tiny_atlas.path), open_atlas(tiny_atlas.path))
    assert same_lines == [] and (same["jaccard"].dropna() == 1).all()


def test_atlas_command_prints_findings_and_refuses_bad_input(inputs, tmp_path, capsys):
    from tests.test_run import cli

    base = ["atlas", "--model", "tiny-llama", "--device", "cpu", "--natural",
            str(inputs["natural"]), "--repeated", str(inputs["repeated"]), "--context",
            str(inputs["context"]), "--n-prompts", "4", "--circuit-size", "3", "--no-progress",
            "--no-figures", "--skip", "circuits", "--causal-draws", "2", "--causal-prompts", "2"]
    out = tmp_path / "runs" / "atlas-cli"
    code, stdout, err = cli(capsys, *base, "--out", str(out))
    assert code == 0, err
    assert "findings" in stdout and "sink heads (mean attention on token 0 > 0.3)" in stdout
    assert (out / "atlas.parquet").is_file()
    code, shown, err = cli(capsys, "runs", "--runs-dir", str(out.parent), "show", "atlas-cli")
    assert code == 0 and "top 5 heads per role" in shown
    code, _, err = cli(capsys, *base, "--out", str(tmp_path / "x"), "--threshold", "sink=abc")
    assert code == 2 and "--threshold 'sink=abc'" in err
    code, _, err = cli(capsys, *base, "--out", str(tmp_path / "y"), "--threshold", "nope=1")
    assert code == 2 and "unknown role" in err
    code, _, err = cli(capsys, *base, "--out", str(tmp_path / "z"), "--skip", "nothing")
    assert code == 2 and "not an atlas part" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
    code, _, err = cli(capsys, *base, "--out", str(out))
    assert code == 2 and "already exists" in err and "--resume" in err


def test_compare_command_warns_and_prints_bands(inputs, tiny_atlas, tmp_path, capsys):
    from tests.test_run import cli

    spec = _two_layer_llama(tmp_path / "llama-2l")
    other = build_atlas(_loader(spec), _options(inputs, tmp_path / "runs" / "atlas-2l",
                                                skip=("circuits", "context")), model_spec=spec)
    code, out, err = cli(capsys, "atlas", "compare", str(tiny_atlas.path), str(other.path))
    assert code == 0, err
    assert "head indices are not comparable" in err and "relative depth" in err
    assert "sink" in out and "early" in out and "0-1" in out
    code, _, err = cli(capsys, "atlas", "compare", str(tiny_atlas.path), str(tmp_path))
    assert code == 2 and "holds no finished atlas" in err


def test_figures_command_draws_the_atlas_with_vector_cells(tiny_atlas, tmp_path, capsys):
    from tests.test_run import cli
    from workbench.figures import BrowserNotFound, find_browser
    from workbench.figures.plot import load_plot

    try:
        find_browser()
    except BrowserNotFound as err:
        pytest.skip(f"no Chromium for kaleido ({err})")
    code, out, err = cli(capsys, "figures", "--run", str(tiny_atlas.path), "--out",
                         str(tmp_path / "fig"), "--format", "svg", "--no-progress")
    assert code == 0, err
    index = json.loads((tmp_path / "fig" / "index.json").read_text())
    assert [f["name"] for f in index["figures"]] == ["atlas"]
    svg = (tmp_path / "fig" / "atlas.svg").read_text()
    assert "<image" not in svg  # cells are vector squares, not a bitmap
    plot = load_plot(tmp_path / "fig" / "atlas.json")
    measured = [r for r in ROLES if tiny_atlas.heads[f"{r}_score"].notna().any()]
    assert plot.params["roles"] == measured and len(plot.data) == 16 * len(measured)
    sink = plot.data[plot.data["role"] == "sink"].set_index(["layer", "head"])
    want = tiny_atlas.heads.set_index(["layer", "head"])
    np.testing.assert_array_equal(sink["score"].to_numpy(),
                                  want.loc[sink.index, "sink_score"].to_numpy())
    assert sink["held"].tolist() == want.loc[sink.index, "sink"].tolist()


def test_resume_refuses_another_configuration_but_relabels(inputs, tiny_atlas, tmp_path):
    out = tiny_atlas.path
    with pytest.raises(Exception, match="differs in n_prompts"):
        build_atlas(lambda: pytest.fail("loaded"), _options(inputs, out, resume=True) and
                    AtlasOptions(**{**vars(_options(inputs, out, resume=True)), "n_prompts": 3}),
                    model_spec="tiny-llama")
    # new labels change the role head sets, so only the causal part (evidence for those sets)
    # runs again; every measuring part is kept
    relabelled = build_atlas(_loader(), _options(inputs, out, resume=True,
                                                 thresholds={"sink": 0.0}),
                             model_spec="tiny-llama")
    states = {part: meta["state"] for part, meta in relabelled.doc["runs"].items()}
    assert states == {"natural": "kept", "repeated": "kept", "context": "kept",
                      "circuits": "kept", "composition": "kept", "causal": "run"}
    assert relabelled.doc["causal"]["sink"]["n_heads"] == int(relabelled.heads["sink"].sum())
    heads = relabelled.heads
    assert heads["sink"].tolist() == (heads["sink_score"] > 0).tolist()
    np.testing.assert_array_equal(heads["sink_score"], tiny_atlas.heads["sink_score"])
    assert next(r for r in relabelled.doc["roles"] if r["name"] == "sink")["threshold"] == 0.0


def test_thorough_atlas_takes_the_circuits_from_activation_patching(inputs, tmp_path):
    atlas = build_atlas(_loader(), _options(inputs, tmp_path / "atlas-thorough", thorough=True,
                                            skip=("natural", "repeated", "context")),
                        model_spec="tiny-llama")
    assert atlas.doc["circuit_method"] == "activation_patching"
    run = RunDir.open(tmp_path / "atlas-thorough-circuits")
    assert run.read_manifest()["config_key"]["methods"] == ["attribution", "activation"]
    for task in ("ioi", "induction"):
        members = summary_rows(run, "circuits", "member",
                               {"probe": "activation_patching", "segment": task})
        held = atlas.heads[atlas.heads[f"{task}_circuit"]]
        assert set(zip(held["layer"], held["head"])) == set(
            zip(members["layer"].astype(int), members["head"].astype(int)))
        scores = summary_rows(run, "head_effects", "score",
                              {"probe": "activation_patching", "segment": task})
        got = atlas.heads.set_index(["layer", "head"])[f"{task}_circuit_score"]
        want = scores.set_index(["layer", "head"])["value"]
        np.testing.assert_array_equal(got.loc[want.index].to_numpy(), want.to_numpy())
    assert atlas.heads["sink_score"].isna().all() and not atlas.heads["sink"].any()


def test_skipping_every_part_is_refused_before_anything_is_written(inputs, tmp_path):
    with pytest.raises(InputError, match="every part is skipped"):
        _options(inputs, tmp_path / "atlas-none",
                 skip=("natural", "repeated", "context", "circuits"))
    assert not (tmp_path / "atlas-none").exists()
