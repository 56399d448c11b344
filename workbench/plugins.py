"""The plug-in interface: how the core finds the layers above it without importing them.

Two entry-point groups (declared in ``pyproject.toml``, read with :mod:`importlib.metadata`):

* ``workbench.probes``: probe name -> probe class (``probes.entropy:AttentionEntropy``). This is
  the one probe registry: ``probes.PROBES``, ``workbench run --probes`` and ``wb.run(probes=...)``
  all read it. A class provides the probe interface of ``probes/base.py`` and
  ``from_params({field: value}) -> probe``.
* ``workbench.jobs``: job name -> a function ``job(model, ..., runs_dir) -> run folder``
  (``atlas``, ``circuits``, ``intervene``); ``wb.atlas``, ``wb.circuits`` and ``wb.intervene``
  call them, and so does the CLI.

A third-party package adds a probe or a job by declaring an entry point in the same group. The
entry points are package metadata: after editing them, reinstall (``pip install -e .``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from workbench.errors import InputError, WorkbenchError

PROBE_GROUP = "workbench.probes"
JOB_GROUP = "workbench.jobs"


@lru_cache(maxsize=None)
def _group(group: str) -> dict[str, Any]:
    found = {ep.name: ep for ep in entry_points(group=group)}
    if not found:
        raise WorkbenchError(f"no entry points in group {group!r}: the package metadata is "
                             "missing or stale; reinstall it (pip install -e .)")
    return found


def probe_classes() -> dict[str, type]:
    """Probe name -> class, from the ``workbench.probes`` entry points (sorted by name).

    Raises:
        WorkbenchError: no probe is registered (the package is not installed).
    """
    return {name: ep.load() for name, ep in sorted(_group(PROBE_GROUP).items())}


def make_probes(names: Iterable[Any], params: dict[str, dict[str, Any]] | None = None
                ) -> list[Any]:
    """Probes by name (strings) with ``params[name] = {field: value}``; probe objects pass
    through unchanged.

    Raises:
        InputError: no probe, an unknown probe name, a probe named twice, a parameter for a probe
            that was not chosen, or a bad parameter value.
    """
    names = list(names)
    params = params or {}
    if not names:
        raise InputError("no probe chosen (--probes attention_entropy)")
    registry = probe_classes()
    unknown = [n for n in names if isinstance(n, str) and n not in registry]
    if unknown:
        raise InputError(f"unknown probe(s) {', '.join(map(repr, unknown))}; available: "
                         f"{', '.join(registry)}")
    given = [n if isinstance(n, str) else getattr(n, "name", None) for n in names]
    if None in given:
        bad = names[given.index(None)]
        raise InputError(f"probe {bad!r}: expected a probe name or a probe object")
    if len(set(given)) != len(given):
        raise InputError(f"a probe is named twice in --probes: {', '.join(given)}")
    stray = set(params) - {n for n in names if isinstance(n, str)}
    if stray:
        raise InputError(f"parameters given for probe(s) not chosen: {', '.join(sorted(stray))}")
    return [registry[n].from_params(params.get(n, {})) if isinstance(n, str) else n
            for n in names]


def job(name: str) -> Callable[..., Any]:
    """The ``workbench.jobs`` function called ``name`` (``atlas``, ``circuits``, ``intervene``).

    Raises:
        InputError: no job of that name is registered.
    """
    jobs = _group(JOB_GROUP)
    if name not in jobs:
        raise InputError(f"no job {name!r} in entry-point group {JOB_GROUP!r}; registered: "
                         f"{', '.join(sorted(jobs))}")
    return jobs[name].load()
