"""Probes: one module per quantity, one registry.

The registry is the ``workbench.probes`` entry-point group in ``pyproject.toml`` (name ->
``module:Class``), read by :func:`workbench.plugins.probe_classes`; ``PROBES`` is that mapping, so
tests parametrised over it cover a new probe once its entry point is declared. A probe in another
package registers the same way.
"""

from __future__ import annotations

from probes.base import Probe, build_probe
from workbench.plugins import make_probes, probe_classes

PROBES: dict[str, type[Probe]] = probe_classes()

__all__ = ["PROBES", "Probe", "build_probe", "make_probes"]
