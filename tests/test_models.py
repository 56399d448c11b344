"""Model loading: registry, parity check, offline errors, device/dtype defaults, determinism."""

from __future__ import annotations

import time

import pytest
import torch

from workbench.errors import InputError, ModelNotAvailable
from workbench.models import MODELS, PARITY_TEXT, encode, load_model, registry_status
from workbench.settings import resolve_device, resolve_dtype


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("tiny-")])
def test_tiny_models_load_with_exact_parity(name):
    model = load_model(name, device="cpu")
    info = model.info
    assert info.parity.ok and info.parity.max_abs_diff < 1e-4
    assert info.source == "random-init" and info.dtype == "float32" and info.device == "cpu"
    assert (info.n_layers, info.n_heads, info.d_model) == (4, 4, 64)
    assert info.attention_windows == [None] * 4 and info.prepend_bos is False
    if name == "tiny-llama":
        assert info.n_key_value_heads == 2  # grouped-query attention
    again = load_model(name, device="cpu")
    ids = torch.tensor([encode(model.tokenizer, PARITY_TEXT, prepend_bos=False)])
    with torch.inference_mode():
        assert torch.equal(model.bridge(ids), again.bridge(ids))  # fixed seed


def test_parity_compares_against_plain_hugging_face(tiny_llama):
    """The parity number is a real comparison: a perturbed bridge weight is detected."""
    ids = torch.tensor([encode(tiny_llama.tokenizer, PARITY_TEXT, prepend_bos=False)])
    assert tiny_llama.info.parity.n_tokens == ids.shape[1]
    model = load_model("tiny-llama", device="cpu")
    with torch.no_grad():
        model.bridge.original_model.lm_head.weight.mul_(1.01)
        got = model.bridge(ids)
    with torch.inference_mode():
        ref = tiny_llama.bridge(ids)
    assert (got - ref).abs().max() > 10 * tiny_llama.info.parity.tolerance


def test_prepend_bos_option(tiny_llama):
    model = load_model("tiny-llama", device="cpu", prepend_bos=True)
    assert model.info.prepend_bos and model.info.parity.ok
    assert encode(model.tokenizer, "hi", prepend_bos=True)[0] == model.tokenizer.bos_token_id


def test_bfloat16_load_on_cpu():
    model = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    assert model.info.dtype == "bfloat16" and model.info.parity.ok
    assert next(model.bridge.original_model.parameters()).dtype == torch.bfloat16


def test_unknown_model_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="not in the Hugging Face cache, and the hub is "
                                                "unreachable"):
        load_model("someone/not-a-model", device="cpu")
    assert time.perf_counter() - start < 10
    with pytest.raises(ModelNotAvailable, match="no such folder"):
        load_model("./no/such/folder", device="cpu")
    with pytest.raises(InputError, match="model spec is empty"):
        load_model("  ")


def test_local_folder_loads(tmp_path, tiny_gpt2):
    # the wrapped model cannot be saved (the bridge rewires it); save a plain copy instead
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    build_tiny_hf_model(TinyConfig("gpt2"), len(tok)).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    model = load_model(str(tmp_path / "m"), device="cpu")
    assert model.info.source == "local-folder" and model.info.parity.ok
    ids = torch.tensor([encode(tok, PARITY_TEXT, prepend_bos=False)])
    with torch.inference_mode():
        assert torch.allclose(model.bridge(ids), tiny_gpt2.bridge(ids), atol=1e-5)


def test_device_and_dtype_defaults():
    dev = resolve_device(None)
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", dev) == torch.float16
    with pytest.raises(InputError, match="--dtype 'fp8' is not one of"):
        resolve_dtype("fp8", dev)
    with pytest.raises(InputError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no GPU is visible"):
            resolve_device("cuda")


def test_registry_reports_offline_availability():
    rows = {r["name"]: r for r in registry_status()}
    assert rows["tiny-llama"]["unavailable"] is None
    assert set(rows) == set(MODELS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_load_defaults_to_bf16():
    model = load_model("tiny-llama")
    assert model.info.device.startswith("cuda") and model.info.dtype == "bfloat16"
    assert model.info.parity.ok


@pytest.mark.real_model
def test_smollm2_loads_from_the_gguf_cache(smollm2):
    info = smollm2.info
    assert (info.n_layers, info.n_heads, info.n_key_value_heads, info.d_model) == (30, 9, 3, 576)
    assert info.source == "gguf" and len(info.details["file_sha256"]) == 64
    assert info.parity.ok and info.parity.max_abs_diff < 1e-4
    assert info.prepend_bos is False  # SmolLM2's tokenizer adds no BOS; we follow it
