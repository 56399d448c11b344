"""The head atlas: every head of a model profiled by the whole probe battery and the circuit tasks,
condensed into one row per (layer, head) with each role's score, rank and label.

``build_atlas`` runs (or resumes) the parts and writes the atlas; ``open_atlas`` reads one back;
``findings`` and ``compare`` say what one atlas, or two side by side, show. The roles and their
thresholds are one registry, :data:`atlas.roles.ROLES`.
"""

from atlas.battery import PARTS, AtlasOptions
from atlas.build import Atlas, build_atlas, open_atlas
from atlas.findings import compare, findings, role_summary
from atlas.roles import ROLES, Role, assign_roles

__all__ = ["PARTS", "ROLES", "Atlas", "AtlasOptions", "Role", "assign_roles", "build_atlas",
           "compare", "findings", "open_atlas", "role_summary"]
