"""Activation-patching grids per layer x position: the residual stream, attention output and MLP
output (TransformerLens's ``patching.get_act_patch_resid_pre`` / ``_attn_out`` / ``_mlp_out``;
Meng et al. 2022 "causal tracing", arXiv 2202.05262; Heimersheim & Nanda 2024, arXiv 2404.15255).

For a component ``c`` (:data:`COMPONENTS`), a layer ``l`` and a position ``p``: run the base prompt,
put the source prompt's activation ``c[l][:, p, :]`` in at that one position, and read the logit
difference. ``mlp_out`` makes each layer's MLP a node at every position, as
:mod:`circuits.patching` makes each head one.

Positions are counted **from each prompt's last real token** (``-1`` = the last token, ``-2`` the
one before), so prompts of different lengths (IOI's templates) share a grid; the grid covers the
offsets every prompt has (``-min_length .. -1``). When all prompts have one length this is
TransformerLens's grid with its columns renumbered. Directions and the score's sign are those of
:mod:`circuits.effects`: ``score`` is the fraction of the clean - corrupted gap, positive = the
activation carries the task.

Cost (the default, ``packed``): per layer and batch, one pass through blocks ``l .. L-1`` of every
position's cell packed side by side, each computing only the positions from its patched one on,
with the base run's keys and values before it (:mod:`circuits.grid_pack`: about half the tokens
of a whole-sequence forward per cell, and one pass per layer instead of one per cell). Where an
architecture does not fit that (sliding windows, ...), or with ``packed=False``: one forward from
block ``l`` per (layer, position, batch) with the base run's block inputs cached
(:func:`circuits.cache.forward_from_layer`), ``positions_per_forward`` positions in one pass as
copies of the batch. :func:`naive_patching_grid` is the slow reference: one full forward per cell
with an ordinary bridge hook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from circuits.cache import (block_input, capture, check_resume, forward_from_layer,
                            keep_activation)
from circuits.effects import HeadEffects, check_direction
from circuits.grid_pack import (Packing, Unsupported, check_packed, chunks, gather_rows,
                                packed_logits, put_rows, record_base)
from circuits.patching import Progress, base_and_source, record_unpatched
from circuits.tasks import Task
from workbench.errors import InputError, WorkbenchError
from workbench.forward import last_logits
from workbench.records import concat, records, string_column

COMPONENTS: tuple[str, ...] = ("resid_pre", "attn_out", "mlp_out")
HOOKS = {"resid_pre": "blocks.{layer}.hook_resid_pre", "attn_out": "blocks.{layer}.hook_attn_out",
         "mlp_out": "blocks.{layer}.hook_mlp_out"}  # [batch, pos, d_model]


def parse_components(text: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """``"resid_pre,mlp_out"`` (or a list) -> ``("resid_pre", "mlp_out")``; ``"all"`` -> every
    component; None or empty -> ``()``.

    Raises:
        InputError: an unknown or repeated component.
    """
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [i.strip() for i in items if i.strip()]
    if names == ["all"]:
        return COMPONENTS
    bad = [n for n in names if n not in COMPONENTS]
    if bad:
        raise InputError(f"--grids: unknown component(s) {', '.join(map(repr, bad))}; choose from "
                         f"{', '.join(COMPONENTS)} or 'all'")
    if len(set(names)) != len(names):
        raise InputError(f"--grids names a component twice: {', '.join(names)}")
    return tuple(names)


MAX_GRID_LAYERS = 1024  # bound on --grid-layers items (no model has more layers)


def parse_grid_layers(text: str | Sequence[str] | None) -> tuple[int, ...] | None:
    """``"0,14,29"`` (or a list of such strings) -> ``(0, 14, 29)`` sorted and distinct; None or
    empty -> None (every layer). The range is checked against the model by :func:`check_layers`.

    Raises:
        InputError: an item that is not a non-negative integer, or more than
            :data:`MAX_GRID_LAYERS` items.
    """
    items = [] if not text else text.split(",") if isinstance(text, str) else \
        [part for item in text for part in str(item).split(",")]
    items = [i.strip() for i in items if i.strip()]
    if not items:
        return None
    if len(items) > MAX_GRID_LAYERS:
        raise InputError(f"--grid-layers: {len(items)} items; at most {MAX_GRID_LAYERS}")
    bad = [i for i in items if not i.isdigit()]
    if bad:
        raise InputError(f"--grid-layers: {', '.join(map(repr, bad))} is not a layer index "
                         "(a non-negative integer)")
    return tuple(sorted({int(i) for i in items}))


def check_component(component: str) -> None:
    parse_components([component])


@dataclass
class PatchingGrid:
    """One component's grid on one task.

    Attributes:
        component: one of :data:`COMPONENTS`.
        offsets: ``[n_pos]`` positions counted from the last token (``-n_pos .. -1``).
        tokens: ``[n_pos]`` the first prompt's token at each offset (a label for the columns).
        effects: per-prompt results with the (layer, head) axes read as (layer, position):
            ``effects.patched`` ``[n_prompts, n_layers, n_pos]`` logit difference with that cell
            patched; ``effects.score`` / ``effects.effect`` ``[n_layers, n_pos]``.
    """

    component: str
    offsets: np.ndarray
    tokens: list[str]
    effects: HeadEffects

    @property
    def task(self) -> str:
        return self.effects.task

    @property
    def score(self) -> np.ndarray:
        """``[n_layers, n_pos]`` fraction of the gap, positive = carries the task."""
        return self.effects.score

    def records(self) -> pa.Table:
        """Rows (``head`` null, ``query_pos`` = offset from the last token, ``dim`` null):
        ``logit_diff`` per (prompt, layer, position); ``effect``, ``score``, ``score_lo``,
        ``score_hi`` per (layer, position); ``segment`` = task, ``condition`` =
        ``"<component>; <direction>"``."""
        e = self.effects
        n = e.patched.shape[0]
        layer, col = np.nonzero(~np.isnan(e.patched[0]))
        common = dict(segment=e.task, condition=f"{self.component}; {e.direction}")
        per_prompt = records(
            "logit_diff", e.patched[:, layer, col].reshape(-1), layer=np.tile(layer, n),
            query_pos=np.tile(self.offsets[col], n),
            prompt_id=string_column(e.prompt_ids, np.repeat(np.arange(n), len(layer))), **common)
        lo, hi = e.score_intervals()
        cells = [records(metric, values[layer, col], layer=layer, query_pos=self.offsets[col],
                         **common)
                 for metric, values in (("effect", e.effect), ("score", e.score),
                                        ("score_lo", lo), ("score_hi", hi))]
        return concat([per_prompt, *cells])


def grid_offsets(task: Task) -> np.ndarray:
    """``[-n .. -1]`` with ``n`` the shortest prompt's token count."""
    n = min(t.n_tokens for t in task.clean)
    return np.arange(-n, 0)


def _positions(last_pos: Tensor, offset: int) -> Tensor:
    return last_pos + 1 + offset


def _replace_at(base: Tensor, source: Tensor, positions: Tensor, copies: int) -> Tensor:
    """``base`` ``[copies * batch, pos, d]`` with copy ``g``'s row ``b`` at ``positions[g, b]`` taken
    from ``source`` ``[batch, pos, d]``."""
    out = base.clone()
    batch = source.shape[0]
    rows = torch.arange(batch, device=base.device)
    for g in range(copies):
        out[g * batch + rows, positions[g]] = source[rows, positions[g]]
    return out


def _keep_hooks(component: str, store: list) -> list[tuple[str, Callable]]:
    """Hooks storing ``component`` of every layer ``l`` in ``store[l]``."""
    return [(HOOKS[component].format(layer=layer), keep_activation(store, layer))
            for layer in range(len(store))]


def _patch_hook(source: Tensor, positions: Tensor, copies: int) -> Callable:
    def hook(x, hook):
        return _replace_at(x, source, positions, copies)
    return hook


def patching_grid(model, task: Task, component: str, *,
                  direction: str = "corrupted_into_clean", layers: Sequence[int] | None = None,
                  batch_size: int = 16, positions_per_forward: int | None = None,
                  packed: bool | None = None, progress: Progress | None = None) -> PatchingGrid:
    """Patch ``component`` at every (layer, position) from the source run into the base run.

    Args:
        component: ``resid_pre`` (the block's input), ``attn_out`` or ``mlp_out``.
        direction: ``corrupted_into_clean`` (default) or ``clean_into_corrupted``.
        layers: the layers patched (default every layer); the others stay NaN.
        positions_per_forward: positions patched per forward pass (default: packed, as many as
            :func:`circuits.grid_pack.chunks` allows; per cell, 1 on a CPU, every position on a
            GPU).
        packed: compute each cell from its patched position on, the cells of a layer packed in
            one pass (:mod:`circuits.grid_pack`); ``None`` (default): where the architecture
            allows it (checked on the first batch), else one resumed forward per cell; ``False``:
            always one resumed forward per cell (the reference); ``True``: packed or an error.
        progress: called with the number of (layer, position, batch) cells just finished.

    Returns:
        :class:`PatchingGrid`; ``effects.patched`` is in logits.

    Raises:
        InputError: an unknown component, direction or layer, before any forward pass.
        WorkbenchError: the model's blocks cannot be run from cached inputs (or, with
            ``packed=True``, on a packed suffix).
    """
    check_component(component)
    check_direction(direction)
    layers = check_layers(model, layers)
    offsets = grid_offsets(task)
    n_layers, n_pos = model.info.n_layers, len(offsets)
    size = positions_per_forward or (1 if model.device.type == "cpu" else n_pos)
    patched = np.full((len(task), n_layers, n_pos), np.nan)
    clean, corrupted = np.zeros(len(task)), np.zeros(len(task))
    hook_name = HOOKS[component]
    for i, tb in enumerate(task.batches(batch_size)):
        base_batch, source_batch = base_and_source(tb, direction)
        acts: list = [None] * n_layers
        source = capture(model, source_batch, z=False, block_inputs=component == "resid_pre",
                         fwd_hooks=[] if component == "resid_pre" else
                         _keep_hooks(component, acts))
        if component == "resid_pre":
            acts = [block_input(source, layer) for layer in range(n_layers)]
        base = capture(model, base_batch, z=False)
        if i == 0:
            check_resume(model, base)
        record_unpatched(tb, direction, base.last_logits, source.last_logits, clean, corrupted)
        kv, packed = _packing(model, base, offsets, packed, first=i == 0)
        if kv is not None:
            _packed_cells(model, tb, base, kv, acts, component, layers, offsets,
                          positions_per_forward, patched, progress)
            continue
        last = base.last_pos.to(model.device)
        for layer in layers:
            for first in range(0, n_pos, size):
                cols = list(range(first, min(first + size, n_pos)))
                where = torch.stack([_positions(last, int(offsets[c])) for c in cols])
                with torch.inference_mode():
                    if component == "resid_pre":
                        hidden = _replace_at(block_input(base, layer).repeat(len(cols), 1, 1),
                                             acts[layer], where, len(cols))
                        logits = forward_from_layer(model, base, layer, copies=len(cols),
                                                    hidden=hidden)
                    else:
                        hook = (hook_name.format(layer=layer),
                                _patch_hook(acts[layer], where, len(cols)))
                        logits = forward_from_layer(model, base, layer, copies=len(cols),
                                                    fwd_hooks=[hook])
                ld = tb.logit_diff(logits, len(cols)).view(len(cols), -1).cpu().numpy()
                for g, c in enumerate(cols):
                    patched[tb.index, layer, c] = ld[g]
                if progress:
                    progress(len(cols))
    effects = HeadEffects("activation_patching", task.name, direction, patched, clean, corrupted,
                          task.prompt_ids, condition=component)
    return PatchingGrid(component, offsets, _tokens(model, task, offsets), effects)


def _packing(model, base, offsets: np.ndarray, packed: bool | None, first: bool):
    """(the base run's keys and values, or None for the per-cell forward; the packed setting
    for the next batches): packing is tried unless ``packed`` is False, and checked against the
    base run on the first batch."""
    if packed is False:
        return None, False
    try:
        kv = record_base(model, base)
        if first:
            check_packed(model, base, kv, [int(o) for o in offsets])
        return kv, True
    except (Unsupported, WorkbenchError) as why:
        if packed:
            raise WorkbenchError(f"model {model.info.name!r}: patching grid cells cannot be "
                                 f"packed ({why})") from None
        return None, False


def _packed_cells(model, tb, base, kv, acts, component: str, layers, offsets: np.ndarray,
                  max_cells: int | None, patched: np.ndarray, progress) -> None:
    """Fill ``patched[tb.index, layer, :]`` for ``layers`` with packed passes."""
    lengths = (base.last_pos + 1).to(model.device)
    seq = block_input(base, 0).shape[1]
    n_pos = len(offsets)
    packs = [(group, Packing(group, lengths, seq)) for group in chunks(
        [int(o) for o in offsets], len(lengths), seq, model.info.n_heads, max_cells)]
    for layer in layers:  # the packings do not depend on the layer: built once per batch
        for group, pack in packs:
            with torch.inference_mode():
                if component == "resid_pre":
                    hidden = put_rows(gather_rows(block_input(base, layer), pack.positions),
                                      acts[layer], pack)
                    logits = packed_logits(model, base, kv, layer, pack, hidden=hidden)
                else:
                    def hook(x, hook, source=acts[layer], pack=pack):
                        return put_rows(x, source, pack)
                    logits = packed_logits(model, base, kv, layer, pack,
                                           fwd_hooks=[(HOOKS[component].format(layer=layer),
                                                       hook)])
            flat = logits.transpose(0, 1).reshape(-1, logits.shape[-1])  # group-major copies
            ld = tb.logit_diff(flat, len(group)).view(len(group), -1).cpu().numpy()
            for g, o in enumerate(group):
                patched[tb.index, layer, o + n_pos] = ld[g]
            if progress:
                progress(len(group))


def _tokens(model, task: Task, offsets: np.ndarray) -> list[str]:
    ids = task.clean[0].input_ids
    return [model.tokenizer.decode([int(ids[len(ids) + int(o)])]) for o in offsets]


def naive_patching_grid(model, task: Task, component: str, *,
                        direction: str = "corrupted_into_clean", batch_size: int = 16
                        ) -> np.ndarray:
    """The slow reference for :func:`patching_grid`: one full forward per (layer, position, batch)
    with an ordinary bridge hook at ``blocks.{l}.hook_<component>``. Returns ``patched``
    ``[n_prompts, n_layers, n_pos]`` (logits)."""
    check_component(component)
    check_direction(direction)
    offsets = grid_offsets(task)
    n_layers = model.info.n_layers
    patched = np.full((len(task), n_layers, len(offsets)), np.nan)
    hook_name = HOOKS[component]
    for tb in task.batches(batch_size):
        base_batch, source_batch = base_and_source(tb, direction)
        acts: list = [None] * n_layers
        last_logits(model, source_batch, _keep_hooks(component, acts))
        last = base_batch.last_pos().to(model.device)
        for layer in range(n_layers):
            for c, offset in enumerate(offsets):
                where = _positions(last, int(offset))[None]
                hook = (hook_name.format(layer=layer), _patch_hook(acts[layer], where, 1))
                patched[tb.index, layer, c] = tb.logit_diff(
                    last_logits(model, base_batch, [hook])).cpu().numpy()
    return patched


def check_layers(model, layers: Sequence[int] | None) -> list[int]:
    """``None`` -> every layer; otherwise the sorted distinct layers.

    Raises:
        InputError: a layer outside ``0 .. n_layers - 1``.
    """
    n_layers = model.info.n_layers
    if layers is None:
        return list(range(n_layers))
    bad = [layer for layer in layers if not 0 <= int(layer) < n_layers]
    if bad or not layers:
        raise InputError(f"grid layers {bad or list(layers)}: the model has layers 0..{n_layers - 1}")
    return sorted({int(layer) for layer in layers})
