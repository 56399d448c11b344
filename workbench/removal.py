"""A batch's input without a named segment, and where its tokens land (for head divergence and any
"with vs without the context" comparison).

Three removal modes:

* ``drop``: the segment's tokens are deleted; later tokens move left by the number of segment
  tokens before them (RoPE phases and learned positions change with them);
* ``filler``: the segment's ``n`` tokens are replaced by given filler token ids repeated to exactly
  ``n`` tokens, so the length and every position are kept;
* ``mean_embed``: the ids are kept and the segment's positions are marked, for a hook on
  ``hook_embed`` to overwrite their embeddings (positions kept).

A prompt's image (``workbench.vision``) stays in the run without the segment unless the segment
covers its tokens; then the image is dropped (``drop``) or its tokens become filler (``filler``)
and its ``pixel_values`` are left out. Queries inside the segment have no counterpart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from workbench.errors import InputError
from workbench.tokens import Batch, TokenizedPrompt
from workbench.vision import IMAGE_SEGMENT

REMOVALS = ("drop", "filler", "mean_embed")
POSITIONS = ("last", "after", "all")


def query_positions(n_tokens: int, segment: np.ndarray, which: str) -> np.ndarray:
    """Query positions (in the run with the segment) to compare: ``last`` the last token,
    ``after`` every token after the segment's last one, ``all`` every token. Positions inside the
    segment are never returned."""
    if which == "last":
        pos = np.array([n_tokens - 1])
    elif which == "after":
        pos = np.arange(int(segment.max()) + 1 if segment.size else 0, n_tokens)
    else:
        pos = np.arange(n_tokens)
    return np.setdiff1d(pos, segment).astype(np.int64)


def dropped_positions(positions: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Where ``positions`` (outside ``segment``) land once the segment's tokens are deleted: each
    moves left by the number of segment tokens before it."""
    return positions - np.searchsorted(np.sort(segment), positions)


def check_removable(tok: TokenizedPrompt, segment: str, removal: str, positions: str) -> None:
    """Raise :class:`InputError` (naming the prompt and segment) if ``segment`` cannot be removed
    from this prompt: it is missing, covers the whole prompt or every query position, cuts an
    image, or is an image under ``mean_embed``."""
    if segment not in tok.segments:
        raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment {segment!r}")
    where = f"{tok.prompt.source}: prompt {tok.id!r}, segment {segment!r}"
    seg = tok.segments[segment]
    if seg.size == tok.n_tokens:
        raise InputError(f"{where}: the segment covers the whole prompt ({tok.n_tokens} tokens); "
                         "nothing would remain without it")
    if query_positions(tok.n_tokens, seg, positions).size == 0:
        hint = "no token follows the segment" if positions == "after" else \
            "the last token is in the segment"
        raise InputError(f"{where}: no query position outside the segment (positions="
                         f"{positions}: {hint}); choose positions=all or a segment before the "
                         "question")
    image = tok.segments.get(IMAGE_SEGMENT) if tok.pixel_values is not None else None
    overlap = 0 if image is None else np.intersect1d(image, seg).size
    if overlap and removal == "mean_embed":
        raise InputError(f"{where}: removal=mean_embed replaces token embeddings (hook_embed); "
                         "image tokens carry vision features: use removal=drop or filler")
    if overlap and overlap != image.size:
        raise InputError(f"{where}: the segment covers {overlap} of the image's {image.size} "
                         "tokens; an image is removed whole")


@dataclass
class WithoutSegment:
    """A batch's input without the segment, padded to the batch's width, and the (prompt, query)
    pairs to compare between the two runs."""

    input_ids: Tensor  # [batch, pos]
    attention_mask: Tensor  # [batch, pos]
    pixel_values: Tensor | None  # [n_images, 3, H, W]: the images that stay
    embed_mask: Tensor | None  # [batch, pos] bool, mean_embed only: embeddings to overwrite
    rows: Tensor  # [n] batch row of each pair
    q_with: Tensor  # [n] query position in the run with the segment
    q_without: Tensor  # [n] the same token's position in the run without it

    def model_kwargs(self) -> dict[str, Tensor]:
        """Forward-pass keyword arguments besides ``input_ids`` (as ``Batch.model_kwargs``)."""
        out = {"attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            out["pixel_values"] = self.pixel_values
        return out


def without_segment(batch: Batch, segment: str, removal: str, positions: str, pad_id: int,
                    filler_ids: tuple[int, ...] = ()) -> WithoutSegment:
    """Build the run without ``segment`` for every prompt of ``batch`` (checked beforehand with
    :func:`check_removable`). The width stays the batch's, so a prompt whose segment has no
    tokens gets exactly its own input back."""
    ids = torch.full((batch.size, batch.seq_len), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    embed_mask = torch.zeros((batch.size, batch.seq_len), dtype=torch.bool)
    rows, q_with, q_without, pixels = [], [], [], []
    for b, tok in enumerate(batch.prompts):
        seg = tok.segments[segment]
        q = query_positions(tok.n_tokens, seg, positions)
        new = np.delete(tok.input_ids, seg) if removal == "drop" else tok.input_ids.copy()
        if removal == "filler":
            new[seg] = np.resize(np.asarray(filler_ids, dtype=np.int64), seg.size)
        elif removal == "mean_embed":
            embed_mask[b, torch.from_numpy(seg)] = True
        if removal != "drop" and len(new) != tok.n_tokens:  # pragma: no cover - invariant
            raise RuntimeError(f"prompt {tok.id!r}: removal={removal} changed the length")
        ids[b, :len(new)] = torch.from_numpy(new)
        mask[b, :len(new)] = 1
        rows.append(np.full(q.size, b))
        q_with.append(q)
        q_without.append(dropped_positions(q, seg) if removal == "drop" else q)
        image = tok.segments.get(IMAGE_SEGMENT)
        if tok.pixel_values is not None and np.intersect1d(image, seg).size == 0:
            pixels.append(tok.pixel_values)
    dev = batch.input_ids.device
    cat = lambda parts: torch.as_tensor(np.concatenate(parts), device=dev)  # noqa: E731
    return WithoutSegment(ids.to(dev), mask.to(dev),
                          torch.stack(pixels).to(dev) if pixels else None,
                          embed_mask.to(dev) if removal == "mean_embed" else None,
                          cat(rows), cat(q_with), cat(q_without))
