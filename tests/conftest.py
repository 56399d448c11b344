"""Shared fixtures: tiny random models (fast, no network) and the real offline SmolLM2-135M."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture(scope="session")
def tiny_llama():
    from workbench.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def tiny_gpt2():
    from workbench.models import load_model

    return load_model("tiny-gpt2", device="cpu")


@pytest.fixture(scope="session")
def tiny_llava():
    from workbench.models import load_model

    return load_model("tiny-llava", device="cpu")


@pytest.fixture(scope="module")
def browser():
    """Chromium for kaleido's figure export (skips the test when there is none)."""
    from workbench.figures import BrowserNotFound, find_browser

    try:
        return find_browser()
    except BrowserNotFound as err:
        pytest.skip(f"no Chromium for kaleido to export with ({err})")


@pytest.fixture(scope="session")
def smollm2():
    """The real offline model (converts the GGUF into the cache on first use, about 25 s)."""
    from workbench.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm2_hf():
    """An independent plain Hugging Face copy of SmolLM2 (eager attention), never wrapped."""
    from transformers import AutoModelForCausalLM

    from workbench.models import smollm2_cache

    folder, _ = smollm2_cache()
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def small_prompts(tmp_path) -> Path:
    """Three prompts of different lengths with a named segment (exercises padding)."""
    return write_jsonl(tmp_path / "small.jsonl", [
        {"id": "a", "text": "Then, Mary and John went to the store. John gave a drink to",
         "segments": {"names": [6, 19]}},
        {"id": "b", "text": "The quick brown fox jumps over the lazy dog and keeps running far.",
         "segments": {"names": [4, 9]}},
        {"id": "c", "text": "Hello there, attention", "segments": {"names": [0, 5]}},
    ])
