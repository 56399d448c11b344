"""Progress bars of ``workbench circuits``: one per phase (a method on a task, the ablation means and
faithfulness of a task), each with a total, so they show a percentage and a time left, and each
stopped when its phase ends, so a finished bar's elapsed time is the phase's and stops counting.

A phase is the callable the computations advance (:data:`circuits.patching.Progress`: called with
the units just finished) with a :meth:`Phase.plan` that adds units to its total as soon as they are
known (a path-patching stage's senders are known only when the stage starts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)


class Phase:
    """One bar: ``phase(n)`` advances it by ``n`` units; ``phase.plan(n)`` adds ``n`` to its
    total."""

    def __init__(self, bar: Progress, handle: TaskID):
        self.bar, self.handle = bar, handle

    def __call__(self, n: int) -> None:
        self.bar.advance(self.handle, n)

    def plan(self, n: int) -> None:
        total = self.bar.tasks[self.handle].total or 0
        self.bar.update(self.handle, total=total + n)


def plan(progress: Callable[[int], None] | None, units: int) -> None:
    """Add ``units`` to the total of ``progress`` if it keeps one (a :class:`Phase`)."""
    if isinstance(progress, Phase):
        progress.plan(units)


class CircuitsProgress:
    """The bars of one run (a context manager); ``enabled=False`` draws nothing."""

    def __init__(self, enabled: bool = True, console: Console | None = None,
                 get_time: Callable[[], float] | None = None):
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[unit]}"), TaskProgressColumn(), TimeElapsedColumn(),
                   TextColumn("left"), TimeRemainingColumn())
        self.bar = Progress(*columns, disable=not enabled, console=console, get_time=get_time)

    def __enter__(self) -> "CircuitsProgress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    @contextmanager
    def phase(self, description: str, unit: str, total: int | None = None) -> Iterator[Phase]:
        """A bar for the ``with`` block; on leaving it normally the bar is completed at the units
        done (it reads 100%); either way its clock stops at the block's end."""
        handle = self.bar.add_task(description, total=total, unit=unit)
        task = self.bar.tasks[handle]
        try:
            yield Phase(self.bar, handle)
            self.bar.update(handle, total=task.completed, completed=task.completed)
        finally:  # an interrupted phase keeps its partial count, its clock stops too
            self.bar.stop_task(handle)
            task.finished_time = task.elapsed  # the phase's time, not when the count got full
