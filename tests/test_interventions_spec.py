"""Intervention specs: parsing, selectors and validation before any forward pass (tiny models)."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import write_jsonl
from workbench.errors import InputError
from workbench.interventions import check_spec, load_spec, parse_spec, with_value
from workbench.interventions.evaluate import InterveneOptions, Sweep, critical_level, intervene
from workbench.interventions.spec import Selector
from workbench.interventions.targets import image_centric_heads, resolve_heads, top_k_heads
from workbench.prompts import load_prompt_set
from workbench.tokens import tokenize_prompt_set
from workbench.heads import format_head


def tokenized(model, path):
    return tokenize_prompt_set(load_prompt_set(path), model.tokenizer,
                               prepend_bos=model.info.prepend_bos)


@pytest.mark.parametrize("ops, message", [
    ([{"op": "scale_head", "heads": ["0.1"]}, {"op": "boost_head", "heads": ["0.1"]}],
     "operation 1: field 'op': unknown operation 'boost_head'"),
    ([{"op": "scale_head", "heads": ["0.1"], "alpah": 2}],
     "operation 0 (scale_head): field 'alpah': Extra inputs"),
    ([{"op": "redistribute_attention", "heads": ["0.1"], "target_segment": "x", "p": 1.5}],
     "operation 0 (redistribute_attention): field 'p'"),
    ([{"op": "redistribute_attention", "heads": ["0.1"]}], "field 'target_segment': Field "
     "required"),
    ([{"op": "scale_head", "heads": {"select": "best"}}], "operation 0 (scale_head): field "
     "'heads'"),
    ([], "non-empty list"),
])
def test_bad_specs_name_the_operation_and_field(ops, message):
    with pytest.raises(InputError) as err:
        parse_spec(ops)
    assert message in str(err.value)


@pytest.mark.parametrize("op, message", [
    ({"op": "scale_head", "heads": ["0.1", "4.0"]}, "operation 0 (scale_head): field 'heads': "
     f"head {format_head((4, 0))} is out of range"),
    ({"op": "ablate_head", "heads": ["0.9"]}, f"head {format_head((0, 9))} is out of range"),
    ({"op": "redistribute_attention", "heads": ["1.0"], "target_segment": "names"},
     "field 'target_segment': prompt 'b'"),
    ({"op": "redistribute_attention", "heads": ["3.0"], "target_segment": "names"},
     "only last-layer heads"),
    ({"op": "mask_keys", "heads": ["1.0"], "segments": ["verbs"]},
     "field 'segments': prompt 'a'"),
    ({"op": "mask_keys", "heads": ["1.0"]}, "give 'positions' or 'segments'"),
    ({"op": "kv_misalign", "heads": ["1.0"]}, "prompt 'a'"),
    ({"op": "scale_head", "heads": {"select": "top_k", "run": "/nonexistent", "table": "t",
                                    "metric": "m", "k": 2}}, "does not exist"),
])
def test_check_rejects_before_any_forward(tiny_llama, tmp_path, op, message):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "text": "Then Mary and John went home", "segments": {"names": [5, 19]}},
        {"id": "b", "text": "The quick brown fox", "segments": {"other": [4, 9]}}])
    calls = []
    handle = tiny_llama.bridge.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InputError) as err:
            intervene(tiny_llama, load_prompt_set(path), parse_spec([op]),
                      InterveneOptions(runs_dir=tmp_path / "runs", progress=False))
    finally:
        handle.remove()
    assert message in str(err.value)
    assert calls == [] and not (tmp_path / "runs").exists()


def test_load_spec_json_and_yaml_keep_the_text(tmp_path):
    text = '[{"op": "scale_head", "heads": ["1.2"], "alpha": 2}]'
    (tmp_path / "s.json").write_text(text)
    (tmp_path / "s.yaml").write_text("operations:\n  - op: scale_head\n    heads: ['1.2']\n"
                                     "    alpha: 2\n")
    a, b = load_spec(tmp_path / "s.json"), load_spec(tmp_path / "s.yaml")
    assert a.operations == b.operations and a.operations[0].alpha == 2
    assert a.text == text
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InputError, match="not valid JSON"):
        load_spec(tmp_path / "bad.json")


def test_with_value_and_sweep_parsing():
    spec = parse_spec([{"op": "scale_head", "heads": ["1.2"]},
                       {"op": "value_noise", "heads": ["0.0"], "sigma": 1}])
    assert with_value(spec, "alpha", 0.5).operations[0].alpha == 0.5
    assert with_value(spec, "alpha", 0.5).operations[1].sigma == 1
    with pytest.raises(InputError, match="no operation of the spec has a parameter 'p'"):
        with_value(spec, "p", 0.5)
    with pytest.raises(InputError, match="field 'sigma'"):
        with_value(spec, "sigma", -1)
    assert Sweep.parse("alpha=0, 0.5,1,1").values == (0.0, 0.5, 1.0)
    for bad in ("beta=1", "alpha", "alpha=x"):
        with pytest.raises(InputError):
            Sweep.parse(bad)


def test_critical_level():
    levels = [0, 0.5, 1, 2]
    assert critical_level(levels, [4.0, 3.5, 1.9, 0.0], 4.0, 0.5) == 1
    assert critical_level(levels, [4.0, 3.9, 3.8, 3.0], 4.0, 0.5) != critical_level(
        levels, [4.0, 3.9, 3.8, 3.0], 4.0, 0.5)  # NaN: never degraded
    assert critical_level(levels, [0, 0.01, 0.2, 0.9], 0.0, 0.1, relative=False) == 1


def test_selectors(tmp_path):
    frame = pd.DataFrame({"metric": ["score"] * 4 + ["other"], "layer": [0, 0, 1, 1, 1],
                          "head": [0, 1, 0, 1, 1], "value": [0.1, 0.9, 0.5, -2.0, 9.0],
                          "segment": None, "condition": None, "prompt_id": None})
    assert top_k_heads(frame, "score", 2) == [(0, 1), (1, 0)]
    run = tmp_path / "run"
    run.mkdir()
    pq.write_table(pa.Table.from_pandas(frame), run / "head_effects.parquet")
    sel = Selector(select="top_k", run=str(run), table="head_effects", metric="score", k=1)
    assert resolve_heads(sel, 2, 2, "here") == [(0, 1)]
    with pytest.raises(InputError, match=f"here: head {format_head((1, 1))} is out of range"):
        resolve_heads(Selector(select="top_k", run=str(run), table="head_effects",
                               metric="other", k=1), 1, 2, "here")
    rand = resolve_heads(Selector(select="random", k=3, seed=1), 4, 4, "x")
    assert len(rand) == 3 and all(layer < 3 for layer, _ in rand)
    assert rand == resolve_heads(Selector(select="random", k=3, seed=1), 4, 4, "x")
    sinks = pd.DataFrame({"metric": ["mean_segment_mass", "mean_segment_nonsink_share"] * 2,
                          "layer": [0, 0, 1, 1], "head": [2, 2, 3, 3],
                          "value": [0.3, 0.9, 0.3, 0.5], "segment": "image", "prompt_id": None})
    assert image_centric_heads(sinks, "image", 0.2, 0.8) == [(0, 2)]
    assert image_centric_heads(sinks, "image", 0.2, 0.5) == [(0, 2), (1, 3)]


def test_spec_text_is_stored_verbatim(tiny_llama, tmp_path, small_prompts):
    text = "# reweighting\n- {op: scale_head, heads: ['1.0'], alpha: 2}\n"
    (tmp_path / "spec.yaml").write_text(text)
    run = intervene(tiny_llama, load_prompt_set(small_prompts), load_spec(tmp_path / "spec.yaml"),
                    InterveneOptions(runs_dir=tmp_path / "runs", progress=False))
    manifest = run.read_manifest()
    assert manifest["intervention"]["spec_text"] == text
    assert manifest["intervention"]["heads"] == [[format_head((1, 0))]]
    assert json.dumps(manifest)  # serialisable
    assert manifest["status"] == "complete"


def test_generation_with_a_source_op_is_refused_before_writing(tiny_llama, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "Mary and John went home",
                                               "corrupted_text": "Mary and John went home"}])
    spec = parse_spec([{"op": "kv_misalign", "heads": ["1.0"]}])
    with pytest.raises(InputError, match="--generate: kv_misalign"):
        intervene(tiny_llama, load_prompt_set(path), spec, InterveneOptions(
            generate=2, runs_dir=tmp_path / "runs", progress=False))
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("op, message", [
    ({"op": "scale_head", "heads": ["0.0"], "alpha": float("nan")}, "alpha"),
    ({"op": "scale_head", "heads": ["0.0"], "alpha": float("inf")}, "alpha"),
    ({"op": "attention_temperature", "heads": ["0.0"], "temperature": 1e-300}, "temperature"),
    ({"op": "attention_temperature", "heads": ["0.0"], "temperature": float("inf")},
     "temperature"),
    ({"op": "value_noise", "heads": ["0.0"], "sigma": float("nan")}, "sigma"),
    ({"op": "value_noise", "heads": ["0.0"], "seed": 2**70}, "seed"),
    ({"op": "value_noise", "heads": ["0.0"], "seed": -1}, "seed"),
    ({"op": "redistribute_attention", "heads": ["0.0"], "target_segment": "s",
      "p": float("nan")}, "p"),
    ({"op": "mask_keys", "heads": {"select": "random", "k": 1, "seed": 2**70}}, "seed"),
    ({"op": "mask_keys", "heads": {"select": "image_centric", "run": "r",
                                   "min_mass": float("nan")}}, "min_mass"),
])
def test_non_finite_and_out_of_range_fields_are_refused(op, message):
    with pytest.raises(InputError, match=message):
        parse_spec([op])


def test_sweep_values_and_options_must_be_finite():
    for text in ("alpha=0,nan,inf", "alpha=inf", "temperature=1,-inf"):
        with pytest.raises(InputError, match="not a finite number"):
            Sweep.parse(text)
    spec = parse_spec([{"op": "attention_temperature", "heads": ["0.0"]}])
    with pytest.raises(InputError, match="temperature"):
        with_value(spec, "temperature", 1e-300)
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(InputError, match="--threshold"):
            InterveneOptions(threshold=bad)
