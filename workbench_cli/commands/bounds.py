"""Every numeric option of every command checked against :data:`workbench.bounds.BOUNDS` while
the command line is parsed: before the command body runs, so before a model loads or anything is
written.

:func:`install` wraps the click callback of each option that has an entry (the option's own
callback, e.g. :func:`~workbench_cli.commands.common.list_option`'s conversion, runs first). It is
called by :class:`~workbench_cli.commands.common.FullHelpGroup` for the group's own options and for
its commands', so an option added to any command joins the check by having a table entry; an
integer or real option without one fails ``tests/test_bounds.py``.
"""

from __future__ import annotations

from typing import Any

from workbench.bounds import Bound, lookup
from workbench.errors import InputError

_MARK = "_workbench_bounded"


def bound_of(path: str, option: str) -> Bound | None:
    """The entry for ``option`` of the command at ``path`` (``"workbench heads prune"``): the
    longest tail of the path that has one (``"heads prune --step"``, ``"prune --step"``), else the
    generic ``"--option"`` entry."""
    words = path.split()
    for start in range(len(words) + 1):
        found = lookup(" ".join(words[start:]), option)
        if found is not None:
            return found
    return None


def _wrap(param: Any, bound: Bound) -> None:
    original = param.callback

    def callback(ctx, p, value):
        if original is not None:
            value = original(ctx, p, value)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            return value
        try:
            return bound.check(value, max(p.opts, key=len))
        except InputError as err:  # one line naming the command, as click's usage errors do
            raise InputError(f"{ctx.command_path}: {err}") from None

    param.callback = callback
    setattr(param, _MARK, bound)


def install(command: Any, path: str) -> None:
    """Wrap the callbacks of ``command``'s options that have a bound (idempotent)."""
    for param in getattr(command, "params", ()):
        if getattr(param, _MARK, None) is not None or not getattr(param, "opts", None):
            continue
        bound = None
        for opt in param.opts:
            bound = bound or bound_of(path, opt)
        if bound is not None:
            _wrap(param, bound)


def bounded(param: Any) -> Bound | None:
    """The bound installed on ``param`` (None: unchecked)."""
    return getattr(param, _MARK, None)
