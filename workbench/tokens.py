"""Tokenise a prompt set once, map segments to token positions, and batch with padding.

Convention: right padding. Under a causal mask a real token never sees the padding that follows it,
and real tokens keep their unpadded positions, so every per-token quantity of a prompt is the same
batched or alone. ``attention_mask`` marks real tokens (1) and padding (0); probes use
:meth:`Batch.valid` so that padded positions never count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workbench.errors import InputError
from workbench.prompts import Prompt, PromptSet
from workbench.vision import IMAGE_SEGMENT, ImageTokens, expand_image


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt's token ids, character offsets and segment token positions.

    ``segments[name]`` is a sorted int array of the token positions whose characters overlap the
    segment's character span (possibly empty). A BOS token has offsets (0, 0) and is in no segment.
    A prompt with an image has its image tokens expanded (see ``workbench.vision``), the automatic
    segment ``"image"`` holding their positions, and ``pixel_values``.
    """

    prompt: Prompt
    input_ids: np.ndarray  # [pos] int64
    offsets: np.ndarray  # [pos, 2] int64, character span of each token
    segments: dict[str, np.ndarray]
    pixel_values: torch.Tensor | None = None  # [3, height, width] float32, the prompt's image

    @property
    def id(self) -> str:
        return self.prompt.id

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])


def segment_positions(offsets: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """Token positions whose character span overlaps ``span = [start, end)``; tokens with empty
    spans (special tokens) never match. Returns a sorted int64 array."""
    start, end = span
    if end <= start:
        return np.zeros(0, dtype=np.int64)
    tok_start, tok_end = offsets[:, 0], offsets[:, 1]
    hit = (tok_end > tok_start) & (tok_start < end) & (tok_end > start)
    return np.flatnonzero(hit).astype(np.int64)


def tokenize_prompt(prompt: Prompt, tokenizer, *, prepend_bos: bool,
                    images: ImageTokens | None = None) -> TokenizedPrompt:
    """Tokenise one prompt with offsets (no special tokens, then BOS in front if asked); with
    ``images`` (a vision-language model), expand its image placeholder and load its image.

    Raises:
        InputError: an image problem (see ``workbench.vision.expand_image``), or a segment named
            ``"image"`` (reserved for the image tokens).
    """
    enc = tokenizer(prompt.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if prepend_bos:
        ids = [tokenizer.bos_token_id] + ids
        offsets = [(0, 0)] + offsets
    where = f"{prompt.source}: prompt {prompt.id!r}"
    ids, offsets, image_pos, pixels = expand_image(ids, offsets, prompt.image, images, where)
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    segments = {name: segment_positions(offs, span) for name, span in prompt.segments.items()}
    if image_pos is not None:
        if IMAGE_SEGMENT in segments:
            raise InputError(f"{where}: segment name {IMAGE_SEGMENT!r} is reserved for the image "
                             "tokens; rename the segment")
        segments[IMAGE_SEGMENT] = image_pos
    return TokenizedPrompt(prompt, np.asarray(ids, dtype=np.int64), offs, segments, pixels)


def max_token_chars(tokenizer) -> int:
    """The longest vocabulary entry in characters (cached on the tokenizer): a text of ``c``
    characters has at least ``c / max_token_chars`` tokens, since a token's string (byte-level or
    sentencepiece) is at least as long as the text it covers. 1,000 when the vocabulary cannot be
    read."""
    cached = getattr(tokenizer, "_workbench_max_token_chars", None)
    if cached is not None:
        return cached
    try:
        longest = max((len(t) for t in tokenizer.get_vocab()), default=0) or 1000
    except (AttributeError, NotImplementedError, TypeError):
        longest = 1000
    try:
        tokenizer._workbench_max_token_chars = longest
    except (AttributeError, TypeError):
        pass
    return longest


def tokenize_prompt_set(prompt_set: PromptSet, tokenizer, *, prepend_bos: bool,
                        n_ctx: int | None = None, model_name: str = "the model",
                        images: ImageTokens | None = None) -> list[TokenizedPrompt]:
    """Tokenise every prompt once (``images``: see :func:`tokenize_prompt`).

    Raises:
        InputError: a prompt tokenises to nothing, is longer than the model's context ``n_ctx``
            (a text of more than ``n_ctx`` x :func:`max_token_chars` characters is refused
            without tokenising it), or has a bad image.
    """
    out = []
    bound = None if n_ctx is None else n_ctx * max_token_chars(tokenizer)
    for prompt in prompt_set.prompts:
        if bound is not None and len(prompt.text) > bound:  # refuse before tokenising it
            raise InputError(f"{prompt.source}: prompt {prompt.id!r} has {len(prompt.text):,} "
                             f"characters; {model_name}'s context is {n_ctx} tokens and no token "
                             f"covers more than {bound // n_ctx} characters, so it cannot fit; "
                             "shorten the prompt")
        tok = tokenize_prompt(prompt, tokenizer, prepend_bos=prepend_bos, images=images)
        if tok.n_tokens == 0:
            raise InputError(f"{prompt.source}: prompt {prompt.id!r} has no tokens")
        if n_ctx is not None and tok.n_tokens > n_ctx:
            raise InputError(f"{prompt.source}: prompt {prompt.id!r} has {tok.n_tokens} tokens; "
                             f"{model_name}'s context is {n_ctx} tokens")
        out.append(tok)
    return out


@dataclass
class Batch:
    """Right-padded prompts ready for a forward pass.

    Attributes:
        index: position of this batch in the run's deterministic batch order.
        prompts: the tokenised prompts, in batch order.
        input_ids: ``[batch, pos]`` int64 (padding filled with ``pad_id``).
        attention_mask: ``[batch, pos]`` int64, 1 for real tokens, 0 for padding.
        lengths: ``[batch]`` int64, number of real tokens of each prompt.
        pixel_values: ``[n_images, 3, height, width]`` float32, the images of the batch's prompts
            that have one, in batch order (``None`` when none has).
    """

    index: int
    prompts: list[TokenizedPrompt]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: torch.Tensor
    pixel_values: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def prompt_ids(self) -> list[str]:
        return [p.id for p in self.prompts]

    def valid(self) -> torch.Tensor:
        """``[batch, pos]`` bool: True for real tokens."""
        return self.attention_mask.bool()

    def last_pos(self) -> torch.Tensor:
        """``[batch]`` int64: position of each prompt's last real token."""
        return self.lengths - 1

    def segment_mask(self, name: str) -> torch.Tensor:
        """``[batch, pos]`` bool: True at the token positions of segment ``name``.

        Raises:
            InputError: a prompt in the batch has no segment of that name.
        """
        mask = torch.zeros(self.size, self.seq_len, dtype=torch.bool)
        for b, tok in enumerate(self.prompts):
            if name not in tok.segments:
                raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment {name!r}")
            mask[b, torch.from_numpy(tok.segments[name])] = True
        return mask.to(self.input_ids.device)

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments of the forward pass besides ``input_ids``: the attention mask, and
        ``pixel_values`` when the batch has images."""
        kwargs = {"attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values
        return kwargs

    def to(self, device: Any) -> "Batch":
        pixels = None if self.pixel_values is None else self.pixel_values.to(device)
        return Batch(self.index, self.prompts, self.input_ids.to(device),
                     self.attention_mask.to(device), self.lengths.to(device), pixels)


def pad_token_id(tokenizer) -> int:
    """The id used to fill padding: the tokenizer's pad token, else its EOS token, else 0 (padded
    positions are masked, so the choice never changes a result)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def make_batches(tokenized: list[TokenizedPrompt], batch_size: int, pad_id: int,
                 *, sort_by_length: bool = True) -> list[Batch]:
    """Split into batches of at most ``batch_size`` prompts, right-padded to the longest.

    With ``sort_by_length`` (default) prompts are grouped by token length (stable sort), which
    minimises padding; the order is deterministic, so a resumed run sees the same batches.

    Raises:
        InputError: ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    order = sorted(range(len(tokenized)), key=lambda i: tokenized[i].n_tokens) if sort_by_length \
        else list(range(len(tokenized)))
    batches = []
    for index, start in enumerate(range(0, len(order), batch_size)):
        members = [tokenized[i] for i in order[start:start + batch_size]]
        width = max(t.n_tokens for t in members)
        ids = torch.full((len(members), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(members), width), dtype=torch.long)
        for b, tok in enumerate(members):
            ids[b, :tok.n_tokens] = torch.from_numpy(tok.input_ids)
            mask[b, :tok.n_tokens] = 1
        lengths = mask.sum(1)
        images = [t.pixel_values for t in members if t.pixel_values is not None]
        pixels = torch.stack(images) if images else None
        batches.append(Batch(index, members, ids, mask, lengths, pixels))
    return batches


def prompt_rows(tokenized: list[TokenizedPrompt]) -> dict[str, list]:
    """Columns of the run's ``prompts`` table (see ``workbench.records.PROMPTS_SCHEMA``)."""
    rows: dict[str, list] = {k: [] for k in ("prompt_id", "text", "n_tokens", "task", "answer",
                                              "distractor", "corrupted_text", "segments", "source")}
    for tok in tokenized:
        p = tok.prompt
        rows["prompt_id"].append(p.id)
        rows["text"].append(p.text)
        rows["n_tokens"].append(tok.n_tokens)
        rows["task"].append(p.task)
        rows["answer"].append(p.answer)
        rows["distractor"].append(p.distractor)
        rows["corrupted_text"].append(p.corrupted_text)
        rows["segments"].append(json.dumps({k: v.tolist() for k, v in tok.segments.items()}))
        rows["source"].append(p.source)
    return rows


def token_rows(tokenized: list[TokenizedPrompt], tokenizer) -> dict[str, list]:
    """Columns of the run's ``tokens`` table (see ``workbench.records.TOKENS_SCHEMA``)."""
    rows: dict[str, list] = {k: [] for k in ("prompt_id", "pos", "token_id", "token",
                                              "char_start", "char_end")}
    for tok in tokenized:
        ids = tok.input_ids.tolist()
        pieces = tokenizer.batch_decode([[i] for i in ids])
        for pos, (tid, piece, (s, e)) in enumerate(zip(ids, pieces, tok.offsets)):
            rows["prompt_id"].append(tok.id)
            rows["pos"].append(pos)
            rows["token_id"].append(int(tid))
            rows["token"].append(piece)
            rows["char_start"].append(int(s))
            rows["char_end"].append(int(e))
    return rows
