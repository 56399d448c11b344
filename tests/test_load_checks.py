"""The load-time checks run once per model: kept by weights, config, dtype, device and library
versions; a corrupted entry, another file, another dtype or version, and --recheck check again."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import write_jsonl
from tests.test_run import cli
from workbench import causality, load_checks
from workbench.errors import InputError
from workbench.models import PARITY_TEXT, encode, load_model
from workbench.store import list_runs


@pytest.fixture()
def checks(tmp_path, monkeypatch):
    """An empty check cache, and a counter of the checks actually run (causality forwards)."""
    folder = tmp_path / "checks"
    monkeypatch.setattr(load_checks, "checks_dir", lambda: folder)
    monkeypatch.delenv(load_checks.RECHECK_ENV, raising=False)
    runs = []
    real = causality.check_causal

    def counted(*args, **kwargs):
        runs.append(args[3])
        return real(*args, **kwargs)
    monkeypatch.setattr(causality, "check_causal", counted)
    return folder, runs


def _fields(parity):
    return {f: getattr(parity, f) for f in load_checks.PARITY_FIELDS}


def test_checks_run_once_then_come_from_the_cache(checks):
    folder, runs = checks
    first = load_model("tiny-llama", device="cpu")
    assert len(runs) == 1 and not first.info.parity.cached and first.info.parity.ok
    assert first.info.parity.causal_rel_diff == 0.0
    [entry] = folder.glob("*.json")
    second = load_model("tiny-llama", device="cpu")
    assert len(runs) == 1, "the second load ran the checks again"
    p1, p2 = first.info.parity, second.info.parity
    assert p2.cached and p2.checked == p1.checked and _fields(p2) == _fields(p1)
    assert p2.causal_rel_diff == p1.causal_rel_diff
    # the kept numbers are the real ones: recompute parity by hand on the second load
    ids = torch.tensor([encode(second.tokenizer, PARITY_TEXT, prepend_bos=False)])
    with torch.inference_mode():
        ref = second.bridge.original_model(input_ids=ids).logits
        got = second.bridge(ids)
    assert float((got - ref).abs().max()) == pytest.approx(p2.max_abs_diff, abs=1e-6)
    # recheck (argument or environment) runs them again and rewrites the entry
    third = load_model("tiny-llama", device="cpu", recheck=True)
    assert len(runs) == 2 and not third.info.parity.cached
    assert json.loads(entry.read_text())["checked"] == third.info.parity.checked


def test_recheck_environment_variable(checks, monkeypatch):
    folder, runs = checks
    load_model("tiny-llama", device="cpu")
    monkeypatch.setenv(load_checks.RECHECK_ENV, "1")
    assert not load_model("tiny-llama", device="cpu").info.parity.cached and len(runs) == 2


def test_other_dtype_model_or_library_version_rechecks(checks, monkeypatch):
    folder, runs = checks
    load_model("tiny-llama", device="cpu")
    assert not load_model("tiny-llama", device="cpu", dtype="bfloat16").info.parity.cached
    assert not load_model("tiny-gpt2", device="cpu").info.parity.cached
    assert not load_model("tiny-llama", device="cpu", prepend_bos=True).info.parity.cached
    assert len(runs) == 4 and len(list(folder.glob("*.json"))) == 4
    versions = load_checks._versions()
    monkeypatch.setattr(load_checks, "_versions", lambda: {**versions, "torch": "0.0.0"})
    assert not load_model("tiny-llama", device="cpu").info.parity.cached and len(runs) == 5


def test_key_names_device_and_weights(tiny_llama):
    hf = tiny_llama.bridge.original_model
    args = dict(source="random-init", details={}, hf_name="x", dtype="float32", parity_ids=[1, 2])
    cpu = load_checks.check_key(hf, device="cpu", **args)
    assert load_checks.check_key(hf, device="cpu", **args) == cpu
    assert load_checks.check_key(hf, device="mps", **args)["device"] == "mps" != cpu["device"]
    digest = cpu["weights"]["tensors_sha256"]
    with torch.no_grad():
        hf.model.norm.weight.add_(1.0)
    try:
        assert load_checks.check_key(hf, device="cpu", **args)["weights"]["tensors_sha256"] != \
            digest
    finally:
        with torch.no_grad():
            hf.model.norm.weight.sub_(1.0)
    assert load_checks.check_key(hf, device="cpu", **args)["weights"]["tensors_sha256"] == digest


def test_a_different_model_file_rechecks(checks, tmp_path):
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    folder, runs = checks
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    path = tmp_path / "m"
    build_tiny_hf_model(TinyConfig("gpt2"), len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    assert not load_model(str(path), device="cpu").info.parity.cached
    assert load_model(str(path), device="cpu").info.parity.cached and len(runs) == 1
    build_tiny_hf_model(TinyConfig("gpt2", seed=1), len(tok)).save_pretrained(path)
    again = load_model(str(path), device="cpu")
    assert not again.info.parity.cached and again.info.parity.ok and len(runs) == 2


@pytest.mark.parametrize("damage", ["{not json", '{"key": 1}', "wrong types", "other key", ""])
def test_a_corrupted_entry_rechecks_and_is_rewritten(checks, damage):
    folder, runs = checks
    load_model("tiny-llama", device="cpu")
    [entry] = folder.glob("*.json")
    good = json.loads(entry.read_text())
    if damage == "wrong types":
        text = json.dumps({**good, "parity": {**good["parity"], "ok": "yes"}})
    elif damage == "other key":
        text = json.dumps({**good, "key": {**good["key"], "dtype": "float16"}})
    else:
        text = damage
    entry.write_text(text)
    model = load_model("tiny-llama", device="cpu")
    assert not model.info.parity.cached and model.info.parity.ok and len(runs) == 2
    assert load_checks.read_checks(json.loads(entry.read_text())["key"]) is not None


def test_a_failed_causality_check_is_never_kept(checks, monkeypatch):
    folder, runs = checks

    def refuse(hf_model, ids, reference, spec):
        raise InputError(f"model {spec!r} is not supported: its attention is not causal")
    monkeypatch.setattr(causality, "check_causal", refuse)
    for _ in range(2):
        with pytest.raises(InputError, match="not causal"):
            load_model("tiny-llama", device="cpu")
    assert not list(folder.glob("*.json"))


def test_a_preloaded_model_is_always_checked(checks, tiny_llama):
    from workbench.models import MODELS

    folder, runs = checks
    for _ in range(2):  # a fresh model each time: a wrapped one cannot be wrapped again
        hf, tokenizer, *_ = MODELS["tiny-llama"].build(dtype=torch.float32)
        loaded = load_model(hf, tokenizer=tokenizer)
        assert not loaded.info.parity.cached
    assert len(runs) == 2 and not list(folder.glob("*.json"))


def test_a_model_inside_a_bridge_is_refused_not_rewired(tiny_llama):
    """Wrapping ``tiny_llama.bridge.original_model`` in a second bridge rewired its modules and
    silently broke every later use of the first bridge (17 failing tests, order-dependent);
    now it is one clear error and the first bridge keeps its hooks."""
    ids = torch.tensor([[1, 2, 3, 4]])
    before = set(tiny_llama.bridge.run_with_cache(ids)[1].keys())
    with pytest.raises(InputError, match="already inside a TransformerBridge"):
        load_model(tiny_llama.bridge.original_model, tokenizer=tiny_llama.tokenizer)
    assert set(tiny_llama.bridge.run_with_cache(ids)[1].keys()) == before


def test_run_manifest_says_where_the_checks_came_from(checks, capsys, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "one two three four"}])
    base = ["run", "--model", "tiny-llama", "--prompts", str(prompts), "--device", "cpu",
            "--no-progress"]
    found = {}
    for name, extra in (("first", []), ("cached", []), ("recheck", ["--recheck"])):
        code, out, err = cli(capsys, *base, "--runs-dir", str(tmp_path / name), *extra)
        assert code == 0, err
        [(_, manifest)] = list_runs(tmp_path / name)
        found[name] = (manifest["model"]["parity"], err)
    (first, _), (cached, said), (again, _) = found["first"], found["cached"], found["recheck"]
    assert not first["cached"] and cached["cached"] and not again["cached"]
    assert cached["checked"] == first["checked"] and cached["max_abs_diff"] == first["max_abs_diff"]
    assert cached["causal_rel_diff"] == first["causal_rel_diff"] == 0.0
    assert f"checked {first['checked']}, kept in the check cache" in " ".join(said.split())
