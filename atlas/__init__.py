"""The head atlas: every head of a model profiled by the whole probe battery and the circuit tasks,
condensed into one row per (layer, head) with each role's score, rank and label.

``build_atlas`` runs (or resumes) the parts and writes the atlas; ``open_atlas`` reads one back;
``findings`` and ``compare`` say what one atlas, or two side by side, show. The roles and their
thresholds are one registry, :data:`atlas.roles.ROLES`.

The names below are imported on first use, so that the torch-free modules (``atlas.roles``,
``atlas.findings``) can be imported without the run machinery (the app reads atlases without
torch).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"PARTS": "atlas.battery", "AtlasOptions": "atlas.battery", "Atlas": "atlas.build",
            "build_atlas": "atlas.build", "open_atlas": "atlas.build",
            "compare": "atlas.findings", "findings": "atlas.findings",
            "role_summary": "atlas.findings", "ROLES": "atlas.roles", "Role": "atlas.roles",
            "assign_roles": "atlas.roles"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'atlas' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


__all__ = sorted(_EXPORTS)
