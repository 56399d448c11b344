"""Patching-grid cells computed from the patched position on, several cells per forward pass.

Under causal attention a patch at position ``p`` of layer ``l`` changes nothing at positions before
``p``, in any layer. So a grid cell (layer ``l``, offset ``o``) needs only the positions ``p ..
last`` (``-o`` of them: the same number for every prompt, since offsets count from each prompt's
last real token) through blocks ``l .. L-1``, with the keys and values of positions ``0 .. p-1``
taken from the base run. Each layer's cells are packed side by side along the sequence: cell ``c``
owns the ``-o_c`` query rows ``start_c ..``, sees the base run's keys before its own patched
position and its own rows up to itself (a 4-D boolean mask), and carries its true positions
(rotary embeddings, position ids). The base run's keys and values of every layer are recorded once
per batch by running the blocks from their cached inputs with a stand-in for Hugging Face's
key-value cache (:class:`KeyValues`), which the attention bridge calls after the rotary embedding.

Compared with one resumed forward per cell over the whole sequence (:mod:`circuits.grids`) this
computes ``-o`` of the ``seq`` positions per cell (about half on average) and runs one pass per
layer and chunk instead of one per cell. The results equal the per-cell forward up to float
rounding (tests: 1e-5); :func:`check_packed` compares the unpatched packed pass with the base run
on the first batch and the grid falls back to the per-cell forward where the architecture does
not fit (sliding windows, blocks taking positional arguments, no key-value cache call).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from circuits.cache import RunCache, block_input
from workbench.errors import WorkbenchError

MAX_PACKED_TOKENS = 512  # query rows per packed pass (per prompt); a chunk holds at least one cell
SCORE_BYTES = 256 * 2**20  # bound on one layer's [batch, head, rows, keys] fp32 attention scores


class Unsupported(Exception):
    """The model's blocks cannot be run on a packed suffix (use the per-cell forward)."""


class KeyValues:
    """A stand-in for a Hugging Face cache inside the attention bridge (``update(k, v, layer)``).

    Recording (``prefix`` None): keeps each layer's keys and values ``[batch, kv_head, pos,
    d_head]`` (after the rotary embedding) and returns them unchanged. Packed: returns the recorded
    base keys of that layer followed by the new rows, ``[batch, kv_head, seq + rows, d_head]``."""

    def __init__(self, prefix: "KeyValues | None" = None):
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.prefix = prefix
        self.calls = 0

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs
               ) -> tuple[Tensor, Tensor]:
        self.calls += 1
        if self.prefix is None:
            self.keys[layer_idx], self.values[layer_idx] = key, value
            return key, value
        return (torch.cat([self.prefix.keys[layer_idx], key], dim=-2),
                torch.cat([self.prefix.values[layer_idx], value], dim=-2))

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def supported(model, base: RunCache) -> None:
    """Raise :class:`Unsupported` unless every block takes its hidden states as its only
    positional argument and attends causally over all earlier keys (no sliding window)."""
    if any(w for w in model.info.attention_windows):
        raise Unsupported("sliding-window attention")
    for args, kwargs in base.block_inputs:
        if len(args) != 1 or not isinstance(args[0], Tensor) or "hidden_states" in kwargs:
            raise Unsupported("blocks take positional arguments besides the hidden states")


def record_base(model, base: RunCache) -> KeyValues:
    """Every layer's keys and values of the base run (blocks run from their cached inputs).

    Raises:
        Unsupported: a block's attention never called the cache."""
    supported(model, base)
    kv = KeyValues()
    with torch.inference_mode():
        for layer, (args, kwargs) in enumerate(base.block_inputs):
            model.bridge.blocks[layer](*args, **{**kwargs, "past_key_values": kv,
                                                 "use_cache": False})
            if layer not in kv.keys:
                raise Unsupported(f"block {layer}'s attention does not use a key-value cache")
    return kv


class Packing:
    """The rows of one packed pass: cells with offsets ``offsets`` on a batch with ``lengths``."""

    def __init__(self, offsets: Sequence[int], lengths: Tensor, seq: int):
        sizes = [-int(o) for o in offsets]
        device = lengths.device
        self.n_cells = len(sizes)
        self.starts = torch.tensor([sum(sizes[:c]) for c in range(len(sizes))], device=device)
        self.ends = self.starts + torch.tensor(sizes, device=device) - 1  # last token's row
        cell = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                       torch.tensor(sizes, device=device))
        step = torch.arange(len(cell), device=device) - self.starts[cell]  # j within the cell
        offs = torch.tensor([int(o) for o in offsets], device=device)
        self.patched = lengths[:, None] + offs[None]  # [batch, cells]: each cell's position
        first = self.patched[:, cell]  # [batch, rows]
        self.positions = first + step[None]  # [batch, rows] true positions
        own = (cell[:, None] == cell[None, :]) & (step[None, :] <= step[:, None])  # [rows, rows]
        before = torch.arange(seq, device=device)[None, None] < first[:, :, None]
        self.mask = torch.cat([before, own[None].expand(len(lengths), -1, -1)], -1)[:, None]

    @property
    def rows(self) -> int:
        return int(self.positions.shape[1])


def chunks(offsets: Sequence[int], batch: int, seq: int, n_heads: int,
           max_cells: int | None = None) -> list[list[int]]:
    """Consecutive groups of offsets whose packed rows stay within :data:`MAX_PACKED_TOKENS`,
    whose attention scores stay within :data:`SCORE_BYTES` and, with ``max_cells``, of at most
    that many offsets (at least one offset per group)."""
    out: list[list[int]] = [[]]
    rows = 0
    for o in offsets:
        size = -int(o)
        new = rows + size
        too_big = new > MAX_PACKED_TOKENS or batch * n_heads * new * (seq + new) * 4 > SCORE_BYTES \
            or (max_cells is not None and len(out[-1]) >= max_cells)
        if out[-1] and too_big:
            out.append([])
            new = size
        out[-1].append(int(o))
        rows = new
    return out


def gather_rows(x: Tensor, positions: Tensor) -> Tensor:
    """``x[b, positions[b, r]]`` for ``x`` ``[batch or 1, seq, ...]``."""
    if x.shape[0] == 1:
        return x[0][positions]
    return x[torch.arange(x.shape[0], device=x.device)[:, None], positions]


def _kwargs(kwargs: dict, pack: Packing, kv: KeyValues) -> dict:
    out = {}
    for key, value in kwargs.items():
        if key == "attention_mask":
            value = pack.mask
        elif key == "position_embeddings":
            value = tuple(gather_rows(t, pack.positions) for t in value)
        elif key == "position_ids":
            value = gather_rows(value.expand(pack.positions.shape[0], -1)[..., None],
                            pack.positions)[..., 0]
        elif key == "cache_position":
            continue
        elif isinstance(value, Tensor) and value.ndim >= 1:
            raise Unsupported(f"block argument {key!r} is a tensor the packing does not know")
        out[key] = value
    return {**out, "past_key_values": KeyValues(prefix=kv), "use_cache": False}


def packed_logits(model, base: RunCache, kv: KeyValues, layer: int, pack: Packing, *,
                  hidden: Tensor | None = None, fwd_hooks: Sequence[tuple[str, Callable]] = ()
                  ) -> Tensor:
    """Logits ``[batch, cells, vocab]`` at each cell's last token after running blocks
    ``layer .. L-1`` on the packed rows (``hidden`` ``[batch, rows, d_model]``: the input of
    block ``layer``, default the base run's at the rows' positions; ``fwd_hooks`` patch inside)."""
    bridge = model.bridge
    if hidden is None:
        hidden = gather_rows(block_input(base, layer), pack.positions)
    with bridge.hooks(fwd_hooks=list(fwd_hooks)):
        for block in range(layer, model.info.n_layers):
            _, kwargs = base.block_inputs[block]
            out = bridge.blocks[block](hidden, **_kwargs(kwargs, pack, kv))
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        last = hidden[:, pack.ends]  # [batch, cells, d_model]
        return bridge.unembed(bridge.ln_final(last))


def put_rows(x: Tensor, source: Tensor, pack: Packing) -> Tensor:
    """``x`` ``[batch, rows, d]`` with each cell's first row replaced by ``source`` ``[batch, seq,
    d]`` at that cell's patched position."""
    out = x.clone()
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    out[rows, pack.starts[None]] = source[rows, pack.patched.to(x.device)]
    return out


def check_packed(model, base: RunCache, kv: KeyValues, offsets: Sequence[int],
                 tolerance: float = 1e-4) -> float:
    """Unpatched packed cells must reproduce the base run's last-token logits: the first and the
    last offset's cells packed side by side, from block 0 (the longest and the shortest suffix,
    the second attending across the first's rows only through the mask).

    Returns the largest difference relative to the logits' std.

    Raises:
        WorkbenchError: they do not (the grid then uses the per-cell forward)."""
    lengths = (base.last_pos + 1).to(model.device)
    seq = block_input(base, 0).shape[1]
    want = base.last_logits.float()
    group = sorted({int(offsets[0]), int(offsets[-1])})
    with torch.inference_mode():
        got = packed_logits(model, base, kv, 0, Packing(group, lengths, seq)).float()
    worst = float((got - want[:, None]).abs().max() / want.std().clamp_min(1e-12))
    exact = base.last_logits.dtype in (torch.float32, torch.float64)
    if worst > (tolerance if exact else 2e-2):
        raise WorkbenchError(f"packed grid cells are {worst:.1e} (relative) away from the full "
                             "forward on this model")
    return worst
