"""Probes: one module per quantity, one registry.

``PROBES`` maps a probe's name (as given to ``workbench run --probes``) to its class. Tests are
parametrised over this dict, so a new probe is covered by adding it here.
"""

from __future__ import annotations

from probes.base import Probe, build_probe
from probes.entropy import AttentionEntropy
from probes.head_divergence import HeadDivergence
from probes.head_types import HeadTypes
from probes.massive import MassiveActivations
from probes.pattern import AttentionPattern
from probes.position_bias import PositionBias
from probes.sinks import AttentionSink
from workbench.errors import InputError

PROBES: dict[str, type[Probe]] = {cls.name: cls for cls in (
    AttentionEntropy, AttentionSink, MassiveActivations, HeadTypes, HeadDivergence, PositionBias,
    AttentionPattern)}


def make_probes(names: list[str], params: dict[str, dict[str, str]] | None = None) -> list[Probe]:
    """Instantiate probes by name with ``params[name] = {field: value}``.

    Raises:
        InputError: an unknown probe name, a parameter for a probe that was not chosen, or a bad
            parameter value.
    """
    params = params or {}
    if not names:
        raise InputError("no probe chosen (--probes attention_entropy)")
    unknown = [n for n in names if n not in PROBES]
    if unknown:
        raise InputError(f"unknown probe(s) {', '.join(map(repr, unknown))}; available: "
                         f"{', '.join(PROBES)}")
    if len(set(names)) != len(names):
        raise InputError(f"a probe is named twice in --probes: {', '.join(names)}")
    stray = set(params) - set(names)
    if stray:
        raise InputError(f"parameters given for probe(s) not chosen: {', '.join(sorted(stray))}")
    return [build_probe(PROBES[n], params.get(n, {})) for n in names]


__all__ = ["PROBES", "Probe", "build_probe", "make_probes"]
