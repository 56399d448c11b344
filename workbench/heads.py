"""Attention-head sets and the hooks that rescale heads.

A head is ``(layer, head_index)``, shown as ``"L9H6"`` (:func:`format_head`) and typed as
``"L9H6"``, ``"9.6"`` or ``"9:6"`` on the command line and in specs (:func:`parse_head` reads all
three).
Head hooks act on ``blocks.{layer}.attn.hook_z`` ``[batch, pos, head_index, d_head]`` (the per-head
output before W_O, so scaling head h there scales exactly its contribution ``z_h W_O^h``) or on
``hook_result`` ``[batch, pos, head_index, d_model]`` (needs ``set_use_attn_result(True)``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Callable

import numpy as np

from workbench.errors import InputError

Head = tuple[int, int]
HEAD_HOOKS = ("hook_z", "hook_result")
_HEAD_RE = re.compile(r"^\s*L?(\d+)\s*[.H:]\s*(\d+)\s*$", re.IGNORECASE)


def parse_head(text: str) -> Head:
    """``"L9H6"``, ``"9.6"`` or ``"9:6"`` -> ``(9, 6)`` (case and spaces ignored: ``"l9h6"``).

    Raises:
        InputError: the text is not a layer.head pair.
    """
    match = _HEAD_RE.match(str(text))
    if not match:
        raise InputError(f"head {text!r} is not of the form L9H6 (or layer.head: 9.6)")
    return int(match.group(1)), int(match.group(2))


def parse_heads(items: str | Iterable[str | Head]) -> list[Head]:
    """A comma-separated string or an iterable of head strings (any style :func:`parse_head`
    reads) / pairs -> sorted unique heads."""
    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    heads = {tuple(x) if not isinstance(x, str) else parse_head(x) for x in items}
    return sorted(heads)  # type: ignore[arg-type]


def format_head(head: Head) -> str:
    """``(9, 6)`` -> ``"L9H6"``: how every page, table, figure and message writes a head (parsed
    back by :func:`parse_head`)."""
    return f"L{int(head[0])}H{int(head[1])}"


def check_heads(heads: Iterable[Head], n_layers: int, n_heads: int, where: str = "") -> None:
    """Raise :class:`InputError` naming the first head outside ``n_layers x n_heads``."""
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            prefix = f"{where}: " if where else ""
            raise InputError(f"{prefix}head {format_head((layer, head))} is out of range: the "
                             f"model has "
                             f"{n_layers} layers (0-{n_layers - 1}) x {n_heads} heads "
                             f"(0-{n_heads - 1})")


def all_heads(n_layers: int, n_heads: int) -> list[Head]:
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def head_columns(heads: Iterable[Head]) -> tuple[np.ndarray, np.ndarray]:
    """``(layer, head)``: two int64 arrays of the heads' coordinates, in order (record columns,
    or indices into a ``[n_layers, n_heads]`` array)."""
    pairs = np.array(list(heads), dtype=np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


def by_layer(heads: Iterable[Head]) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        grouped[layer].append(head)
    return {layer: sorted(hs) for layer, hs in sorted(grouped.items())}


def scale_heads_hooks(heads: Iterable[Head], alpha: float, point: str = "hook_z"
                      ) -> list[tuple[str, Callable]]:
    """Forward hooks multiplying each head's output by ``alpha`` at ``attn.{point}``.

    ``alpha = 0`` is zero ablation; ``alpha = 1`` returns the activation itself (an exact no-op).
    The activation is not modified in place: the hook returns a new tensor.

    Raises:
        InputError: ``point`` is not ``hook_z`` or ``hook_result``.
    """
    if point not in HEAD_HOOKS:
        raise InputError(f"head hook point must be one of {HEAD_HOOKS}, got {point!r}")
    hooks = []
    for layer, idx in by_layer(heads).items():
        def hook(act, hook, idx=idx):
            if alpha == 1:
                return act
            out = act.clone()
            out[:, :, idx] = act[:, :, idx] * alpha
            return out
        hooks.append((f"blocks.{layer}.attn.{point}", hook))
    return hooks
