"""Errors the workbench reports to a user as one clear line.

Every error caused by input or environment (a malformed prompt file, an unknown model, a run that
cannot be resumed) is a :class:`WorkbenchError`. The CLI prints its message and exits with
``exit_code``; nothing is half-written when one is raised before a run starts.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """A user-facing failure; ``str(err)`` is the one line the CLI prints."""

    exit_code: int = 1


class InputError(WorkbenchError):
    """Bad input: a prompt file, an option value, a probe parameter, a spec."""

    exit_code = 2


class ModelNotAvailable(WorkbenchError):
    """The model spec names nothing that can be loaded on this machine (e.g. offline)."""

    exit_code = 2


class RunStateError(WorkbenchError):
    """A run directory is in a state that forbids the request (exists, mismatched resume)."""

    exit_code = 2
