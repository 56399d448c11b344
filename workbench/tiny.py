"""Tiny randomly initialised models for tests: no network, a fixed seed, built in well under a second.

Two architectures cover the bridge code paths the workbench relies on: a Llama-style model with
grouped-query attention and rotary positions (like SmolLM2) and a GPT-2-style model with learned
positions and fused QKV. Both share a small byte-level BPE tokenizer trained here on a fixed corpus,
so any text can be encoded and offsets map characters to tokens exactly as for real tokenizers. A
tiny LLaVA (a CLIP vision tower on 32 px images, 16 image tokens, and the Llama one as language
model) covers the vision-language path; its tokenizer adds the ``<image>`` placeholder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from workbench.settings import cache_dir

# A fixed training corpus for the tiny tokenizer. Its content only shapes the merges; any text is
# still encodable because the byte-level alphabet is always in the vocabulary.
_CORPUS = """\
Then, Mary and John went to the store. John gave a drink to Mary. When Alice and Bob got a ring at
the garden, Bob decided to give it to Alice. While Sarah and Tom were working at the school, Tom
gave a computer to Sarah. The quick brown fox jumps over the lazy dog.
Attention heads read from the residual stream and write back into it. A head that attends to the
previous token copies what came just before; an induction head finds an earlier copy of the current
token and predicts the token that followed it. Many heads put most of their attention on the first
token, which acts as a sink when there is nothing useful to read.
This program is free software: you can redistribute it and/or modify it under the terms of the
license. The software is provided as is, without warranty of any kind, express or implied.
Question: What is the capital of the country described in the passage? Answer: The passage says
that the capital is a small town on the river, and the answer is the name of that town.
1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20. Red, green, blue, yellow, purple, orange.
"""

TINY_VOCAB_SIZE = 512
TINY_SPECIAL = "<|endoftext|>"


def tiny_tokenizer_dir() -> Path:
    """Train (once) and save the tiny byte-level BPE tokenizer; return its folder.

    The folder is keyed by a hash of the corpus and vocabulary size, and written atomically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(f"{TINY_VOCAB_SIZE}\n{_CORPUS}".encode()).hexdigest()[:12]
    folder = cache_dir() / "tokenizers" / f"tiny-bpe-{key}"
    if (folder / "tokenizer.json").exists():
        return folder
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        special_tokens=[TINY_SPECIAL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=TINY_SPECIAL, eos_token=TINY_SPECIAL, pad_token=TINY_SPECIAL
    )
    from workbench.store import atomic_dir

    with atomic_dir(folder) as tmp:
        fast.save_pretrained(tmp)
    return folder


@dataclass(frozen=True)
class TinyConfig:
    """Shape of a tiny test model. ``init_std`` is larger than the usual 0.02 so that random
    attention patterns are far from uniform (entropy tests then distinguish heads)."""

    architecture: str  # "llama" or "gpt2"
    n_layers: int = 4
    n_heads: int = 4
    n_key_value_heads: int = 2
    d_model: int = 64
    d_mlp: int = 128
    n_ctx: int = 256
    init_std: float = 0.3
    seed: int = 0


def build_tiny_hf_model(cfg: TinyConfig, vocab_size: int):
    """Build the Hugging Face model for ``cfg`` deterministically (the global RNG is untouched)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    common = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if cfg.architecture == "llama":
        hf_cfg = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.d_model,
            intermediate_size=cfg.d_mlp,
            num_hidden_layers=cfg.n_layers,
            num_attention_heads=cfg.n_heads,
            num_key_value_heads=cfg.n_key_value_heads,
            max_position_embeddings=cfg.n_ctx,
            initializer_range=cfg.init_std,
            tie_word_embeddings=False,
            **common,
        )
        cls = LlamaForCausalLM
    elif cfg.architecture == "gpt2":
        hf_cfg = GPT2Config(
            vocab_size=vocab_size,
            n_embd=cfg.d_model,
            n_inner=cfg.d_mlp,
            n_layer=cfg.n_layers,
            n_head=cfg.n_heads,
            n_positions=cfg.n_ctx,
            initializer_range=cfg.init_std,
            **common,
        )
        cls = GPT2LMHeadModel
    else:  # pragma: no cover - guarded by the registry
        raise ValueError(f"unknown tiny architecture {cfg.architecture!r}")
    hf_cfg.architectures = [cls.__name__]
    hf_cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = cls(hf_cfg)
    return model.eval()


# --- a tiny LLaVA ----------------------------------------------------------------------------------

TINY_IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class TinyVisionConfig:
    """The vision side of the tiny LLaVA: a CLIP vision tower on ``image_size`` px images cut into
    ``patch_size`` px patches, giving ``(image_size / patch_size)^2`` image tokens (16 here)."""

    image_size: int = 32
    patch_size: int = 8
    d_model: int = 32
    d_mlp: int = 64
    n_layers: int = 2
    n_heads: int = 2


def tiny_llava_tokenizer():
    """The tiny BPE tokenizer plus the special token ``<image>`` (id 512)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": [TINY_IMAGE_TOKEN]})
    return tokenizer


def tiny_image_processor(vision: TinyVisionConfig):
    """A CLIP image processor (PIL backend: no torchvision) for ``vision.image_size`` px images."""
    from transformers import CLIPImageProcessorPil

    side = vision.image_size
    return CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side,
                                                                         "width": side})


def build_tiny_llava(cfg: TinyConfig, vision: TinyVisionConfig, tokenizer):
    """A random ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama language model, the
    ``cfg`` shape), built deterministically from ``cfg.seed``; the global RNG is untouched."""
    import torch
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration)

    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_key_value_heads, max_position_embeddings=cfg.n_ctx,
        initializer_range=cfg.init_std, tie_word_embeddings=False, bos_token_id=0,
        eos_token_id=0, pad_token_id=0)
    tower = CLIPVisionConfig(
        hidden_size=vision.d_model, intermediate_size=vision.d_mlp,
        num_hidden_layers=vision.n_layers, num_attention_heads=vision.n_heads,
        image_size=vision.image_size, patch_size=vision.patch_size)
    hf_cfg = LlavaConfig(text_config=text, vision_config=tower,
                         image_token_id=tokenizer.convert_tokens_to_ids(TINY_IMAGE_TOKEN),
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    hf_cfg.architectures = ["LlavaForConditionalGeneration"]
    hf_cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlavaForConditionalGeneration(hf_cfg)
    return model.eval()
