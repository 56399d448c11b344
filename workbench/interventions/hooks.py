"""Forward hooks that carry out a checked spec on one batch, and the notebook context manager.

Where each operation acts (TransformerLens hook names, ``blocks.{layer}.attn.*``):

* ``scale_head``, ``ablate_head``: ``hook_z`` ``[batch, pos, head_index, d_head]`` (or
  ``hook_result`` for ``scale_head``); ``mean`` ablation uses per-head means over every real token
  of the reference prompts (position-independent); ``resample`` the head's ``z`` on the prompt's
  ``corrupted_text``.
* ``redistribute_attention``, ``mask_keys``: ``hook_pattern``; ``attention_temperature``:
  ``hook_attn_scores``.
* ``value_noise``, ``kv_misalign``: ``hook_z``, recomputed from the head's own (possibly edited)
  ``hook_pattern`` and ``hook_v``. ``hook_v`` carries the ``n_key_value_heads`` heads; query head
  ``h`` reads key/value head ``h // (n_heads / n_key_value_heads)`` (as ``repeat_kv`` does), and the
  edit acts on that query head's copy of the values only, so the other query heads sharing the
  key/value head are untouched (with GQA, editing ``hook_v`` itself would change them all).

Hooks never modify activations in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from workbench.heads import by_layer, scale_heads_hooks
from workbench.interventions import edits
from workbench.interventions.check import Checked
from workbench.tokens import Batch, make_batches, pad_token_id

Hook = tuple[str, Callable]
ATTN = "blocks.{layer}.attn.{point}"


def noise_sample(seed: int, batch_index: int, layer: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The standard normal draw ``value_noise`` uses for one (batch, layer): float32 on the CPU,
    ``shape = [batch, pos, n_selected_heads, d_head]``, from a generator seeded with
    ``seed * 1_000_003 + batch_index * 1_000 + layer`` (reproducible across devices)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index * 1_000 + layer)
    return torch.randn(shape, generator=gen)


def capture(model, batch: Batch, names: list[str]) -> dict[str, torch.Tensor]:
    """Activations at ``names`` for one forward of ``batch`` (no edits)."""
    seen: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Callable:
        def hook(act, hook):
            seen[name] = act.detach().clone()
        return hook

    batch = batch.to(model.device)
    with torch.inference_mode(), model.bridge.hooks(fwd_hooks=[(n, grab(n)) for n in names]):
        model.bridge(batch.input_ids, **batch.model_kwargs())
    return seen


def source_batch(batch: Batch, checked: Checked) -> Batch:
    """``batch`` with each prompt replaced by its ``corrupted_text`` (same lengths and layout)."""
    ids = batch.input_ids.clone()
    for b, tok in enumerate(batch.prompts):
        other = checked.sources[tok.id]
        ids[b, :other.n_tokens] = torch.from_numpy(other.input_ids).to(ids.device)
    return Batch(batch.index, [checked.sources[t.id] for t in batch.prompts], ids,
                 batch.attention_mask, batch.lengths, batch.pixel_values)


def _rows(batch: Batch, queries: str) -> torch.Tensor:
    rows = batch.valid()
    if queries == "last":
        rows = torch.zeros_like(rows)
        rows[torch.arange(batch.size), batch.last_pos()] = True
    return rows


def _positions(batch: Batch, positions: list[int]) -> torch.Tensor:
    mask = torch.zeros_like(batch.valid())
    keep = [p for p in positions if p < batch.seq_len]
    mask[:, keep] = True
    return mask & batch.valid()


def _on_heads(fn: Callable, idx: list[int], axis: int, layer: int) -> Callable:
    """A hook applying ``fn(slice, layer)`` to heads ``idx`` along ``axis`` of the activation."""
    def hook(act, hook):
        out = act.clone()
        sel = (slice(None),) * axis + (idx,)
        out[sel] = fn(act[sel], layer).to(act.dtype)
        return out
    return hook


def op_hooks(model, checked: Checked, i: int, batch: Batch) -> tuple[list[Hook], list[Hook]]:
    """``(hooks, captures)`` for operation ``i`` on ``batch``; captures of ``hook_pattern`` must
    run after every edit of it, so the caller registers them last."""
    op, heads = checked.spec.operations[i], checked.heads[i]
    layers = by_layer(heads)
    batch = batch.to(model.device)
    if op.op == "scale_head":
        return (scale_heads_hooks(heads, op.alpha, op.point) if op.alpha != 1 else []), []
    if op.op == "ablate_head" and op.mode == "zero":
        return scale_heads_hooks(heads, 0.0), []
    if op.op == "ablate_head":
        values = _mean_z(model, checked, i) if op.mode == "mean" else capture(
            model, source_batch(batch, checked),
            [ATTN.format(layer=layer, point="hook_z") for layer in layers])
        return [(ATTN.format(layer=layer, point="hook_z"), _replace_z(values, layer, idx))
                for layer, idx in layers.items()], []
    if op.op in ("redistribute_attention", "mask_keys", "attention_temperature"):
        return _pattern_hooks(op, layers, batch), []
    return _value_hooks(model, checked, i, batch)


def _replace_z(values: dict, layer: int, idx: list[int]) -> Callable:
    z_other = values[ATTN.format(layer=layer, point="hook_z")]

    def fn(z, layer):
        return z_other[..., idx, :].expand_as(z)
    return _on_heads(fn, idx, 2, layer)


def _mean_z(model, checked: Checked, i: int) -> dict[str, torch.Tensor]:
    """Per-head mean of ``hook_z`` over every real token of the reference prompts:
    ``{hook name: [head_index, d_head]}``, computed once per checked spec and operation."""
    cache = checked.cache.setdefault("means", {})
    if i not in cache:
        names = [ATTN.format(layer=layer, point="hook_z") for layer in by_layer(checked.heads[i])]
        sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch in make_batches(checked.references[i], 8, pad_token_id(model.tokenizer)):
            seen = capture(model, batch, names)
            valid = batch.valid().to(model.device)
            for name in names:
                sums[name] = sums.get(name, 0) + seen[name][valid].float().sum(0)
            count += int(valid.sum())
        cache[i] = {name: total / count for name, total in sums.items()}
    return cache[i]


def _pattern_hooks(op, layers: dict[int, list[int]], batch: Batch) -> list[Hook]:
    if (op.op == "redistribute_attention" and op.p == 0) or \
            (op.op == "attention_temperature" and op.temperature == 1):
        return []  # exact no-ops
    if op.op == "attention_temperature":
        fn = lambda scores, layer: edits.temper_scores(scores, op.temperature)  # noqa: E731
        point = "hook_attn_scores"
    elif op.op == "redistribute_attention":
        sink, target = _positions(batch, op.sink_positions), batch.segment_mask(op.target_segment)
        rows = _rows(batch, op.queries)
        fn = lambda a, layer: edits.redistribute(  # noqa: E731
            a, sink, target, op.p, min_segment_mass=op.min_segment_mass, rho=op.rho, rows=rows)
        point = "hook_pattern"
    else:
        knocked = _positions(batch, op.positions)
        for name in op.segments:
            knocked = knocked | batch.segment_mask(name)
        rows = _rows(batch, op.queries)
        fn = lambda a, layer: edits.mask_pattern(a, knocked, rows)  # noqa: E731
        point = "hook_pattern"
    return [(ATTN.format(layer=layer, point=point), _on_heads(fn, idx, 1, layer))
            for layer, idx in layers.items()]


def _value_hooks(model, checked: Checked, i: int, batch: Batch) -> tuple[list[Hook], list[Hook]]:
    op, layers = checked.spec.operations[i], by_layer(checked.heads[i])
    if op.op == "value_noise" and op.sigma == 0:
        return [], []
    group = model.info.n_heads // model.info.n_key_value_heads
    other = {} if op.op == "value_noise" else capture(
        model, source_batch(batch, checked),
        [ATTN.format(layer=layer, point="hook_v") for layer in layers])
    hooks, captures, seen = [], [], {}

    def keep(point: str, layer: int) -> Callable:
        def hook(act, hook):
            seen[point, layer] = act
        return hook

    for layer, idx in layers.items():
        kv = [h // group for h in idx]

        def fn(z, layer, idx=idx, kv=kv):
            pattern = seen["hook_pattern", layer][:, idx]
            if op.op == "kv_misalign":
                return edits.misaligned_z(pattern, other[ATTN.format(layer=layer,
                                                                     point="hook_v")][:, :, kv])
            v = seen["hook_v", layer][:, :, kv]
            noise = noise_sample(op.seed, batch.index, layer, tuple(z.shape)).to(z.device)
            return edits.noisy_z(z, pattern, v, noise, op.sigma)

        captures.append((ATTN.format(layer=layer, point="hook_pattern"),
                         keep("hook_pattern", layer)))
        hooks += [(ATTN.format(layer=layer, point="hook_v"), keep("hook_v", layer)),
                  (ATTN.format(layer=layer, point="hook_z"), _on_heads(fn, idx, 2, layer))]
    return hooks, captures


def intervention_hooks(model, checked: Checked, batch: Batch) -> list[Hook]:
    """Every operation's forward hooks for ``batch``, in spec order (captures of
    ``hook_pattern`` last). Runs the extra forwards that ``resample``/``kv_misalign``/``mean``
    need. Use with ``model.bridge.hooks(fwd_hooks=...)`` or :func:`applied`."""
    hooks, captures = [], []
    for i in range(len(checked.spec.operations)):
        h, c = op_hooks(model, checked, i, batch)
        hooks += h
        captures += c
    return hooks + captures


def needs_attn_result(checked: Checked) -> bool:
    """True when an operation edits ``hook_result`` (alpha != 1): only then is the per-head
    result computed, since summing it changes float rounding (alpha = 1 stays an exact no-op)."""
    return any(getattr(op, "point", None) == "hook_result" and op.alpha != 1
               for op in checked.spec.operations)


@contextlib.contextmanager
def attn_result(model, on: bool) -> Iterator[None]:
    """``set_use_attn_result(True)`` for the block when ``on``; the caller's setting is restored."""
    previous = bool(getattr(model.bridge.cfg, "use_attn_result", False))
    if on and not previous:
        model.bridge.set_use_attn_result(True)
    try:
        yield
    finally:
        if on and not previous:
            model.bridge.set_use_attn_result(previous)


@contextlib.contextmanager
def applied(model, checked: Checked, batch: Batch) -> Iterator[None]:
    """Context manager for notebooks: the intervention is active on ``model.bridge`` inside::

        checked = check_spec(model, parse_spec([...]), tokenized)
        with applied(model, checked, batch):
            logits = model.bridge(batch.input_ids, attention_mask=batch.attention_mask)
    """
    hooks = intervention_hooks(model, checked, batch)
    with attn_result(model, needs_attn_result(checked)), model.bridge.hooks(fwd_hooks=hooks):
        yield
