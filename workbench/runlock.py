"""One writer per run folder, and whether a "running" run still has one.

A writer holds an exclusive ``flock`` on ``<runs_dir>/.<run_id>.lock`` (beside the run folder, so
``--overwrite`` never deletes the lock it holds) from before it looks at the folder until the run
ends; the lock file and the manifest's ``writer`` record its pid and host. The kernel drops the lock
when the process dies (kill -9, power loss), so a run whose manifest says ``running`` but whose lock
is free is shown as ``interrupted`` (:func:`live_status`). Linux/macOS only (``fcntl``); on a shared
filesystem the lock is as good as its ``flock`` support. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path

from workbench.errors import RunStateError

RUNNING = "running"
INTERRUPTED = "interrupted"


def lock_path(run_path: Path) -> Path:
    """The lock file of the run folder ``run_path``: ``.<run_id>.lock`` beside it."""
    run_path = Path(run_path)
    return run_path.parent / f".{run_path.name}.lock"


def writer() -> dict:
    """This process as a run's writer: ``{"pid", "host"}``."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


class RunLock:
    """An exclusive lock on one run folder, held until :meth:`release` or process exit."""

    def __init__(self, run_path: Path):
        self.path = lock_path(run_path)
        self.run_id = Path(run_path).name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Take the lock without waiting.

        Raises:
            RunStateError: another process holds it (its pid and host are named), or the lock
                file cannot be created.
        """
        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as err:
            raise RunStateError(f"run {self.run_id!r}: cannot create its lock file {self.path} "
                                f"({err.strerror}); check that --runs-dir is a writable folder"
                                ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunStateError(f"run {self.run_id!r}: cannot lock {self.path} "
                                    f"({err.strerror})") from None
            who = _holder(self.path)
            raise RunStateError(f"run {self.run_id!r} is being written by another process{who}; "
                                "wait for it to finish (or stop it), then rerun with --resume"
                                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(writer()) + "\n").encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the lock file stays: deleting it would race with a new writer)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __del__(self):  # pragma: no cover - the kernel drops it at exit anyway
        try:  # no contextlib here: module globals may be gone at interpreter exit
            if self._fd is not None:
                os.close(self._fd)  # closing the descriptor drops the flock
                self._fd = None
        except Exception:  # noqa: BLE001
            pass


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f" (pid {int(info['pid'])} on {str(info['host'])!r})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def is_locked(run_path: Path) -> bool | None:
    """Whether a writer holds the run's lock now; ``None`` when there is no lock file (a run
    written before locks existed)."""
    path = lock_path(run_path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock just taken
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def writer_alive(run_path: Path, manifest: dict) -> bool:
    """Whether the process writing a ``running`` run is still there: its lock is held; without a
    lock file, its recorded pid is alive on this host (unknown hosts count as alive)."""
    locked = is_locked(run_path)
    if locked is not None:
        return locked
    who = manifest.get("writer")
    if isinstance(who, dict) and who.get("host") == socket.gethostname() \
            and isinstance(who.get("pid"), int):
        return _pid_alive(who["pid"])
    return True


def live_status(run_path: Path, manifest: dict) -> str:
    """The manifest's ``status``, except that ``running`` becomes ``interrupted`` when its writer
    is gone (killed, SIGTERM without cleanup, power loss)."""
    status = manifest.get("status")
    if status == RUNNING and not writer_alive(run_path, manifest):
        return INTERRUPTED
    return status
