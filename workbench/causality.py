"""The architecture check every model passes at load time: its attention must be causal.

The probes assume that a query sees the keys at and before its position only (entropy normalised
by ln(visible keys), sinks, position bias, induction, circuits). An encoder such as BERT attends
both ways: it loads, wraps and passes the parity check, yet gives invalid numbers (entropy_norm
above 1). The check is behavioural, so it needs no list of architectures: change the second half
of a short prompt and the logits of the first half must not move.
"""

from __future__ import annotations

from workbench.errors import InputError

# Largest move of the first half's logits, relative to the logits' std, still counted as causal:
# causal models move by 0 or rounding (4e-7 for a tiny Mixtral in float32, whose expert batches
# change shape); a tiny random BERT moves by 7e-3, a trained encoder by far more. Half precision
# rounds at about 4e-3, hence its looser bound (the parity check's).
CAUSAL_TOLERANCE = {"float32": 1e-4, "float64": 1e-4}
HALF_TOLERANCE = 2e-2


def architecture_name(hf_model) -> str:
    """The checkpoint's architecture (``config.architectures``), else the loaded class."""
    names = getattr(hf_model.config, "architectures", None) or [type(hf_model).__name__]
    return ", ".join(map(str, names))


def check_causal(hf_model, ids, reference, spec: str) -> dict:
    """Refuse a model whose attention is not causal.

    Args:
        ids: ``[1, pos]`` token ids (the parity prompt). reference: the model's ``[1, pos, vocab]``
            logits for them (float32).

    Returns:
        ``{"max_abs_diff", "rel_diff", "tolerance", "ok": True}``: how far the first half's logits
        moved (in logits, and relative to the logits' std) and the bound they stayed within.

    Raises:
        InputError: the logits of ``ids[:, :half]`` move when ``ids[:, half:]`` change (naming the
            model and its architecture).
    """
    import torch

    half = ids.shape[1] // 2
    tolerance = CAUSAL_TOLERANCE.get(str(hf_model.dtype).removeprefix("torch."), HALF_TOLERANCE)
    if half < 1:
        return {"max_abs_diff": 0.0, "rel_diff": 0.0, "tolerance": tolerance, "ok": True}
    changed = ids.clone()
    vocab = hf_model.get_input_embeddings().num_embeddings
    changed[:, half:] = (changed[:, half:] + 1) % vocab
    with torch.inference_mode():
        moved = hf_model(input_ids=changed).logits.float()
    diff = float((moved[:, :half] - reference[:, :half]).abs().max())
    rel = diff / max(float(reference.std()), 1e-12)
    if rel > tolerance:
        raise InputError(
            f"model {spec!r} ({architecture_name(hf_model)}) is not supported: its attention is "
            f"not causal (changing later tokens moved the logits of earlier positions by up to "
            f"{diff:.2e}); the workbench's probes need causal, decoder-only attention, and "
            "encoders such as BERT attend both ways")
    return {"max_abs_diff": diff, "rel_diff": rel, "tolerance": tolerance, "ok": True}
