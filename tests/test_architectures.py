"""Decoder architectures load from a local folder with exact parity and give valid attention
numbers; an encoder (BERT) is refused in one line, since its attention is not causal.

Each checkpoint is a tiny random model (fixed seed, 2 layers, 4 heads, d_model 32) saved from a
transformers config with the tiny BPE tokenizer, built once per session.
"""

from __future__ import annotations

import math

import pytest
import torch

from probes.entropy import attention_entropy
from workbench.errors import InputError
from workbench.models import PARITY_TEXT, encode, load_model

D_MODEL, N_HEADS, N_LAYERS, D_MLP = 32, 4, 2, 64


def _configs(vocab: int) -> dict:
    """Architecture (``config.architectures``) -> its tiny transformers config."""
    import transformers as T

    base = {"vocab_size": vocab}
    llama_like = {"hidden_size": D_MODEL, "num_attention_heads": N_HEADS, "num_hidden_layers":
                  N_LAYERS, "intermediate_size": D_MLP, "num_key_value_heads": 2, **base}
    return {
        "GPTNeoXForCausalLM": T.GPTNeoXConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS,
                                              num_hidden_layers=N_LAYERS,
                                              intermediate_size=D_MLP, **base),
        "Qwen2ForCausalLM": T.Qwen2Config(**llama_like),
        "Qwen3ForCausalLM": T.Qwen3Config(head_dim=8, **llama_like),
        "GemmaForCausalLM": T.GemmaConfig(head_dim=8, **{**llama_like, "num_key_value_heads": 1}),
        "Gemma2ForCausalLM": T.Gemma2Config(head_dim=8, sliding_window=64, **llama_like),
        "MistralForCausalLM": T.MistralConfig(**llama_like),
        "MixtralForCausalLM": T.MixtralConfig(num_local_experts=2, num_experts_per_tok=1,
                                              **llama_like),
        "Phi3ForCausalLM": T.Phi3Config(pad_token_id=0, **{**llama_like,
                                                            "num_key_value_heads": N_HEADS}),
        "OPTForCausalLM": T.OPTConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS,
                                      num_hidden_layers=N_LAYERS, ffn_dim=D_MLP,
                                      word_embed_proj_dim=D_MODEL, **base),
        "BloomForCausalLM": T.BloomConfig(hidden_size=D_MODEL, n_head=N_HEADS, n_layer=N_LAYERS,
                                          **base),
        "GPTJForCausalLM": T.GPTJConfig(n_embd=D_MODEL, n_head=N_HEADS, n_layer=N_LAYERS,
                                        rotary_dim=4, n_positions=128, **base),
        "FalconForCausalLM": T.FalconConfig(hidden_size=D_MODEL, num_attention_heads=N_HEADS,
                                            num_hidden_layers=N_LAYERS, **base),
        "GPT2LMHeadModel": T.GPT2Config(n_embd=D_MODEL, n_head=N_HEADS, n_layer=N_LAYERS,
                                        n_positions=128, **base),
        "Olmo2ForCausalLM": T.Olmo2Config(**{**llama_like, "num_key_value_heads": N_HEADS}),
    }


ARCHITECTURES = ["GPTNeoXForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
                 "Gemma2ForCausalLM", "MistralForCausalLM", "MixtralForCausalLM",
                 "Phi3ForCausalLM", "OPTForCausalLM", "BloomForCausalLM", "GPTJForCausalLM",
                 "FalconForCausalLM", "GPT2LMHeadModel", "Olmo2ForCausalLM"]


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    from workbench.tiny import tiny_tokenizer_dir

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


@pytest.fixture(scope="session")
def folders(tmp_path_factory, tokenizer):
    """Architecture -> a folder holding its tiny random checkpoint and the tokenizer."""
    from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM

    root = tmp_path_factory.mktemp("architectures")
    configs = _configs(len(tokenizer))
    assert sorted(configs) == sorted(ARCHITECTURES)
    made = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        made[name] = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    torch.manual_seed(0)
    made["BertForMaskedLM"] = BertForMaskedLM(BertConfig(
        vocab_size=len(tokenizer), hidden_size=D_MODEL, num_attention_heads=N_HEADS,
        num_hidden_layers=N_LAYERS, intermediate_size=D_MLP))
    for name, model in made.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return {name: root / name for name in made}


def entropy_norm(pattern: torch.Tensor, head: int) -> torch.Tensor:
    """``[query_pos]`` entropy of one head's causal attention over ln(visible keys), from
    query 1 on (query 0 sees one key)."""
    visible = torch.arange(2, pattern.shape[-1] + 1, dtype=torch.float64)
    return attention_entropy(pattern[:, head:head + 1].double())[0, 0, 1:] / visible.log()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_decoder_loads_and_gives_hugging_face_attention(architecture, folders, tokenizer):
    """Parity with Hugging Face, and layer 1 head 2's entropy_norm from the bridge's pattern hook
    in (0, 1] and equal to the same quantity from plain Hugging Face eager attention."""
    from transformers import AutoModelForCausalLM

    model = load_model(str(folders[architecture]), device="cpu")
    assert model.info.source == "local-folder" and model.info.parity.ok
    assert model.info.architecture == architecture
    assert (model.info.n_layers, model.info.n_heads) == (N_LAYERS, N_HEADS)
    ids = torch.tensor([encode(tokenizer, PARITY_TEXT, prepend_bos=False)])
    hook = "blocks.1.attn.hook_pattern"
    with torch.inference_mode():
        _, cache = model.bridge.run_with_cache(ids, names_filter=lambda name: name == hook)
        hf = AutoModelForCausalLM.from_pretrained(folders[architecture],
                                                  attn_implementation="eager").eval()
        want = entropy_norm(hf(input_ids=ids, output_attentions=True).attentions[1], head=2)
    got = entropy_norm(cache[hook], head=2)
    assert got.shape == (ids.shape[1] - 1,)
    assert 0 < float(got.min()) and float(got.max()) <= 1 + 1e-9  # entropy_norm in (0, 1]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_encoder_is_refused_in_one_line(folders):
    """BERT attends both ways (its entropy_norm reaches above 1): loading stops with one line
    naming the architecture and the need for causal attention."""
    with pytest.raises(InputError) as refused:
        load_model(str(folders["BertForMaskedLM"]), device="cpu")
    message = str(refused.value)
    assert "\n" not in message
    assert "(BertForMaskedLM) is not supported: its attention is not causal" in message
    assert "encoders such as BERT attend both ways" in message


def test_the_encoder_would_break_entropy_norm(folders, tokenizer):
    """Why it is refused: BERT's first query attends to every key, so its entropy over the one
    key it would see causally is positive (entropy_norm unbounded), here ln-scale > 0."""
    from transformers import BertForMaskedLM

    bert = BertForMaskedLM.from_pretrained(folders["BertForMaskedLM"],
                                           attn_implementation="eager").eval()
    ids = torch.tensor([encode(tokenizer, PARITY_TEXT, prepend_bos=False)])
    with torch.inference_mode():
        pattern = bert(input_ids=ids, output_attentions=True).attentions[1]
    first_query = attention_entropy(pattern.double())[0, 2, 0]
    assert first_query > 0.9 * math.log(ids.shape[1])  # a causal query 0 has entropy 0
