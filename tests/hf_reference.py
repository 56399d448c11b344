"""Independent references for probe tests: a plain Hugging Face forward of one unpadded prompt."""

from __future__ import annotations

import numpy as np
import torch

from probes import make_probes
from workbench.prompts import load_prompt_set
from workbench.run import RunOptions, execute_run
from workbench.tokens import tokenize_prompt_set


def hf_forward(hf_model, input_ids: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(attentions, hidden)`` of one prompt in float64: ``attentions[l]`` ``[head, query, key]``
    (``output_attentions``), ``hidden[l]`` ``[pos, d_model]`` = ``hidden_states[l]``, the input of
    layer ``l`` (= ``resid_pre``), for ``l < n_layers``."""
    with torch.inference_mode():
        out = hf_model(input_ids=torch.as_tensor(input_ids)[None], output_attentions=True,
                       output_hidden_states=True)
    n_layers = len(out.attentions)
    return ([a[0].double().numpy() for a in out.attentions],
            [h[0].double().numpy() for h in out.hidden_states[:n_layers]])


def run_probe(model, prompt_path, tmp_path, name: str, batch_size: int = 2, **params):
    """Run one probe through ``execute_run``; returns (records DataFrame, tokenized prompts,
    run)."""
    probes = make_probes([name], {name: params})
    prompt_set = load_prompt_set(prompt_path)
    run = execute_run(model, prompt_set, probes,
                      RunOptions(runs_dir=tmp_path / "runs", batch_size=batch_size, progress=False))
    table = run.read_table(name).to_pandas()
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer, prepend_bos=model.info.prepend_bos)
    return table, tokenized, run


def tiny_hf(which: str):
    """The plain Hugging Face twin of the ``tiny-llama`` / ``tiny-gpt2`` registry models."""
    from transformers import AutoTokenizer

    from workbench.tiny import TinyConfig, build_tiny_hf_model, tiny_tokenizer_dir

    return build_tiny_hf_model(TinyConfig(which),
                               len(AutoTokenizer.from_pretrained(tiny_tokenizer_dir())))


def lower_median(x: np.ndarray) -> float:
    """``torch.median`` semantics: the lower of the two middle values for an even count."""
    flat = np.sort(x, axis=None)
    return float(flat[(flat.size - 1) // 2])
