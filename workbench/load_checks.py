"""The load-time checks (bridge-vs-Hugging Face logit parity, causality), run once per model.

Every load used to run them: three forwards of the parity string (the Hugging Face reference, the
causality probe, the bridge), seconds on a CPU at every ``workbench`` command and ``wb.load``.
Their outcome depends only on the weights, the configuration, the dtype, the device and the
library versions, so it is kept in the workbench cache (``<cache>/checks/<key digest>.json``) under
a key of exactly those (:func:`check_key`), and a later load with the same key reads it back
instead of rerunning them. The numbers still go into every run's manifest (``model.parity``), with
``cached: true`` and the date of the check (``checked``).

What rechecks: a different weights file (another name, size or modification time), other weights
in memory, another configuration, dtype, device (or GPU model, or device map), prepend-BOS
setting, library version (torch, transformers, transformer-lens, attention-workbench, Python) or
check version (:data:`CHECKS_VERSION`); an unreadable or corrupted entry (rechecked and rewritten,
never an error); and ``recheck=True`` (``--recheck`` on the command line). A model passed in
memory (:mod:`workbench.preloaded`) is always checked: its weights can change between calls. A
failed causality check is never kept (the load stops with its message every time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from workbench.settings import cache_dir

# Bump when the checks themselves change (what they compare, their tolerances): old entries recheck.
CHECKS_VERSION = 1
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")
RECHECK_ENV = "WORKBENCH_RECHECK"  # "1": every load in this process (and its workers) rechecks
_LIBRARIES = ("torch", "transformers", "transformer-lens", "attention-workbench")
PARITY_FIELDS = ("max_abs_diff", "rel_diff", "tolerance", "n_tokens", "ok")


def now() -> str:
    """The current time, UTC, ISO 8601 to the second (the ``checked`` date)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def checks_dir() -> Path:
    """The folder of the kept check results (``<workbench cache>/checks``)."""
    return cache_dir() / "checks"


def recheck_forced(recheck: bool) -> bool:
    """``recheck``, or ``$WORKBENCH_RECHECK`` set to 1/true (so sweep workers recheck too)."""
    return bool(recheck) or os.environ.get(RECHECK_ENV, "").lower() in ("1", "true", "yes")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in _LIBRARIES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def file_fingerprint(folder: Path) -> dict[str, list[int]]:
    """``{file name: [size, mtime_ns]}`` of the weight, configuration and tokenizer files directly
    in ``folder`` (:data:`WEIGHT_SUFFIXES`): a rewritten or replaced file changes the key."""
    out = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES:
            stat = path.stat()
            out[path.name] = [stat.st_size, stat.st_mtime_ns]
    return out


def tensor_digest(hf_model: Any) -> str:
    """sha256 over every parameter's and buffer's name, dtype, shape and bytes (tied tensors
    once): the weights hash of a model built in memory."""
    import torch

    digest = hashlib.sha256()
    seen: set[tuple[int, int]] = set()
    for name, tensor in [*hf_model.named_parameters(), *hf_model.named_buffers()]:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        ident = (tensor.data_ptr(), tensor.numel())
        if ident in seen:
            continue
        seen.add(ident)
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def weights_key(hf_model: Any, source: str, details: dict) -> dict:
    """What identifies the weights: the files they were read from (a checkpoint folder, the
    converted GGUF cache with the GGUF's sha256, a hub snapshot's revision), or the sha256 of the
    tensors for a model built in memory (the tiny test models)."""
    folder = Path(str(getattr(hf_model.config, "_name_or_path", "") or "")).expanduser()
    key: dict[str, Any] = {"source": source}
    if details.get("file_sha256"):
        key["file_sha256"] = details["file_sha256"]
    if details.get("revision"):
        key["revision"] = details["revision"]
    if source != "random-init" and str(folder) not in ("", ".") and folder.is_dir():
        key["folder"] = str(folder.resolve())
        key["files"] = file_fingerprint(folder)
    elif source != "huggingface" or not details.get("revision"):
        key["tensors_sha256"] = tensor_digest(hf_model)
    return key


def check_key(hf_model: Any, *, source: str, details: dict, hf_name: str, device: Any,
              dtype: str, parity_ids: list[int]) -> dict:
    """The key the checks' outcome is kept under (JSON-serialisable; see the module doc)."""
    import torch

    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "checks_version": CHECKS_VERSION,
        "hf_name": hf_name,
        "weights": weights_key(hf_model, source, details),
        "config_sha256": hashlib.sha256(hf_model.config.to_json_string().encode()).hexdigest(),
        "dtype": dtype,
        "device": str(dev), "gpu": gpu,
        "device_map": (details.get("device_map") or {}).get("placement"),
        "parity_ids_sha256": hashlib.sha256(json.dumps(parity_ids).encode()).hexdigest(),
        "versions": _versions(),
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def read_checks(key: dict) -> dict | None:
    """The kept outcome for ``key`` (``{"parity": {...}, "causal": {...}, "checked": ISO}``), or
    None when there is none or it is unreadable, of another key or malformed (then the caller
    rechecks and overwrites it)."""
    path = checks_dir() / f"{key_digest(key)}.json"
    try:
        entry = json.loads(path.read_text())
        parity, causal = entry["parity"], entry["causal"]
        ok = (entry["key"] == json.loads(json.dumps(key)) and isinstance(entry["checked"], str)
              and all(isinstance(parity[f], (int, float)) and not isinstance(parity[f], bool)
                      for f in PARITY_FIELDS[:-1])
              and isinstance(parity["ok"], bool)
              and isinstance(causal["rel_diff"], (int, float)) and causal["ok"] is True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return entry if ok else None


def write_checks(key: dict, parity: dict, causal: dict) -> str:
    """Keep the outcome of the checks under ``key``; returns the date of the check (UTC, ISO).
    A cache folder that cannot be written only costs the next load its checks."""
    from workbench.store import atomic_write_json

    checked = now()
    try:
        atomic_write_json(checks_dir() / f"{key_digest(key)}.json",
                          {"key": key, "checked": checked, "parity": parity, "causal": causal})
    except OSError:
        pass
    return checked


__all__ = ["CHECKS_VERSION", "PARITY_FIELDS", "RECHECK_ENV", "check_key", "checks_dir", "now",
           "read_checks", "recheck_forced", "tensor_digest", "weights_key", "write_checks"]
