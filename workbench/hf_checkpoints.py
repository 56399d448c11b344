"""Checkpoints by Hugging Face id or local folder: the loaders behind
:func:`workbench.models.load_model` for a spec that is not a registry name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from workbench.errors import ModelNotAvailable


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def auto_model_class(config):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if getattr(config, "vision_config", None) is not None:
        return AutoModelForImageTextToText
    return AutoModelForCausalLM


def build_hf(spec: str, **load):
    from transformers import AutoConfig, AutoTokenizer

    local = Path(spec).expanduser()
    if local.is_dir():
        source, kwargs, where = "local-folder", {}, str(local.resolve())
        ref: str | Path = local
    else:
        if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
            raise ModelNotAvailable(f"model {spec!r}: no such folder, and not a Hugging Face id")
        ref, source, where = spec, "huggingface", spec
        try:
            AutoConfig.from_pretrained(spec, local_files_only=True)
            kwargs = {"local_files_only": True}
        except (OSError, ValueError):
            if not hub_reachable():
                from workbench.models import MODELS

                known = ", ".join(MODELS)
                raise ModelNotAvailable(
                    f"model {spec!r} is not a registry model ({known}), not a local folder, not "
                    "in the Hugging Face cache, and the hub is unreachable (offline)") from None
            kwargs = {}
    try:
        config = AutoConfig.from_pretrained(ref, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(ref, **kwargs)
        model = auto_model_class(config).from_pretrained(ref, attn_implementation="eager",
                                                          **kwargs, **load)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelNotAvailable(f"model {spec!r} could not be loaded: {first}") from None
    details = {"location": where, "revision": getattr(config, "_commit_hash", None)}
    name = spec if source == "huggingface" else getattr(config, "_name_or_path", spec) or spec
    return model, tokenizer, name, source, details


def hf_image_processor(location: str):
    """The image processor of a Hugging Face vision-language model (local files first)."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError):
        if not hub_reachable():
            raise ModelNotAvailable(f"model {location!r}: its image processor is not in the "
                                    "Hugging Face cache and the hub is unreachable") from None
        return AutoImageProcessor.from_pretrained(location)
