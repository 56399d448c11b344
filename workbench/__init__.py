"""Attention Workbench: hook-based probes, circuits and interventions on attention heads.

The public API, for notebooks (:mod:`workbench.api`)::

    import workbench as wb
    model = wb.load("smollm2-135m")
    res = wb.run(model, ["my prompt", ...], ["attention_sink", "head_types", "attention_entropy"])
    res.heads("mean_sink_share_first")          # (layer x head) DataFrame
    res.top("mean_induction_mul", 5)            # the 5 highest heads

Names: :func:`load`, :func:`prompts`, :func:`run`, :func:`open_run`, :class:`Results`,
:func:`show_pattern`, :func:`applied`, :func:`atlas`, :func:`circuits`, :func:`intervene`. They are
imported on first use, so ``import workbench`` imports no torch (the app reads runs without it).

The core package: model loading (:mod:`workbench.models`), prompt sets (:mod:`workbench.prompts`,
:mod:`workbench.tokens`), the run loop (:mod:`workbench.run`), records and the parquet store
(:mod:`workbench.records`, :mod:`workbench.store`), the plug-in interface
(:mod:`workbench.plugins`). The CLI is the package ``workbench_cli`` above it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# ``run`` and ``prompts`` are the core modules of those names made callable as the API functions
# (workbench/_callable.py): a submodule import would replace a plain function of the same name.
_MODULES = ("run", "prompts")
_EXPORTS = {"load": "workbench.api",
            "show_pattern": "workbench.api", "applied": "workbench.api", "atlas": "workbench.api",
            "circuits": "workbench.api", "intervene": "workbench.api",
            "open_run": "workbench.results", "Results": "workbench.results"}
__all__ = sorted([*_EXPORTS, *_MODULES])


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"workbench.{name}")  # sets the attribute itself
    if name not in _EXPORTS:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_MODULES))
