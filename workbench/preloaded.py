"""Models the caller has already loaded: a Hugging Face model with its tokenizer, or a
TransformerBridge. :func:`workbench.models.load_model` hands them here instead of building one
from a spec, then wraps and checks them exactly like a model loaded by name (same parity check,
same :class:`~workbench.models.ModelInfo`), so runs on either give the same records.
"""

from __future__ import annotations

from typing import Any

from workbench.errors import InputError


def is_bridge(obj: Any) -> bool:
    """Whether ``obj`` is a TransformerLens ``TransformerBridge`` (checked without importing
    TransformerLens when it is not loaded)."""
    return any(c.__name__ == "TransformerBridge" and c.__module__.startswith("transformer_lens")
               for c in type(obj).__mro__)


def wrapped_by_bridge(model: Any) -> bool:
    """Whether a Hugging Face model is already inside a TransformerBridge: the bridge replaces the
    model's submodules by its own components (``transformer_lens.model_bridge``), in place."""
    modules = getattr(model, "modules", None)
    return callable(modules) and any(
        type(m).__module__.startswith("transformer_lens.model_bridge") for m in modules())


def preloaded(model: Any, tokenizer: Any | None) -> tuple[Any, Any, str, str, dict, Any]:
    """``(hf_model, tokenizer, hf_name, source, details, bridge)`` for a preloaded model.

    ``model`` is a Hugging Face ``PreTrainedModel`` (``tokenizer`` required: the bridge needs one
    and fetching it would need the hub) or a ``TransformerBridge`` (its own tokenizer is used when
    ``tokenizer`` is None; ``bridge`` is then that object, reused as it is). ``hf_name`` is the
    config's ``_name_or_path``; ``source`` is ``"preloaded"``.

    Raises:
        InputError: ``model`` is neither, has no config, comes without a tokenizer, or is a
            Hugging Face model that a TransformerBridge already wraps (a second bridge would
            rewire its modules and silently break the first bridge's hooks).
    """
    bridge = None
    if is_bridge(model):
        bridge, model = model, model.original_model
        tokenizer = tokenizer if tokenizer is not None else getattr(bridge, "tokenizer", None)
    config = getattr(model, "config", None)
    if config is None or not callable(getattr(model, "forward", None)):
        raise InputError(f"model {type(model).__name__!r}: expected a model spec (str), a Hugging "
                         "Face model (with a config) or a TransformerBridge")
    if tokenizer is None:
        raise InputError(f"model {type(model).__name__!r} was passed without its tokenizer: "
                         "pass tokenizer= (the bridge needs one; fetching it needs the hub)")
    if bridge is None and wrapped_by_bridge(model):
        raise InputError(f"model {type(model).__name__!r} is already inside a TransformerBridge "
                         "(e.g. a loaded model's bridge.original_model): wrapping it again would "
                         "rewire its modules and break that bridge's hooks; pass the bridge itself "
                         "(wb.load(loaded.bridge)) or a freshly loaded Hugging Face model")
    name = str(getattr(config, "_name_or_path", "") or type(model).__name__)
    details = {"location": name, "revision": getattr(config, "_commit_hash", None),
               "class": type(model).__name__, "bridge_given": bridge is not None}
    return model, tokenizer, name, "preloaded", details, bridge
