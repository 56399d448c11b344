"""Reading the files a user names (prompt sets, intervention specs, sweep and compose specs): one
reader for every command, so every file argument fails the same way, with one line.

:func:`read_input` accepts only a regular file (a named pipe would block the reader forever, a
folder or a device is no input) of at most :data:`MAX_INPUT_BYTES`, and :func:`read_text` also
decodes it as UTF-8; :func:`parse_document` parses JSON or YAML and :func:`expect` checks the
top-level type. Each raises :class:`~workbench.errors.InputError` naming the file (as the user
wrote it), the option and what was wrong. This module imports no torch.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from workbench.errors import InputError

MAX_INPUT_BYTES = 2 * 1024**3  # a prompt set of 2 GiB is already more than any run here holds


def read_input(path: str | Path, what: str) -> bytes:
    """The bytes of the input file ``path``; ``what`` names it in errors (``"prompt file"``).

    Raises:
        InputError: missing, a folder, not a regular file, unreadable, too large.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {str(path)!r} does not exist") from None
    except OSError as err:  # a symlink loop, a name too long, a component not a folder ...
        raise InputError(f"{what} {str(path)!r} cannot be read ({err.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{what} {str(path)!r} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} {str(path)!r} is not a regular file (a pipe, a device or a "
                         "socket); give a file")
    if info.st_size > MAX_INPUT_BYTES:
        raise InputError(f"{what} {str(path)!r} is {info.st_size:,} bytes; at most "
                         f"{MAX_INPUT_BYTES:,} are read")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            return fh.read(MAX_INPUT_BYTES + 1)
    except OSError as err:
        raise InputError(f"{what} {str(path)!r} cannot be read ({err.strerror})") from None


def read_text(path: str | Path, what: str) -> str:
    """:func:`read_input` decoded as UTF-8 (a leading byte-order mark is dropped).

    Raises:
        InputError: as :func:`read_input`, or the bytes are not UTF-8 (the offset is named).
    """
    data = read_input(path, what)
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise InputError(f"{what} {str(path)!r}: not UTF-8 text (byte {err.start:,}); save it "
                         "as UTF-8") from None


def parse_document(text: str, path: str | Path, what: str, *, fmt: str | None = None) -> Any:
    """``text`` parsed as JSON (``fmt="json"``, or a ``.json`` path) or YAML (anything else;
    YAML also reads JSON).

    Raises:
        InputError: not valid JSON/YAML (the line is named when the parser knows it).
    """
    fmt = fmt or ("json" if Path(path).suffix == ".json" else "yaml")
    if fmt == "json":
        try:
            return json.loads(text)
        except ValueError as err:
            raise InputError(f"{what} {str(path)!r}: not valid JSON ({err})") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise InputError(f"{what} {str(path)!r}: not valid YAML{where} ({problem})") from None
    except (ValueError, RecursionError) as err:  # e.g. a date out of range, deep nesting
        raise InputError(f"{what} {str(path)!r}: cannot be parsed ({err})") from None


def expect(data: Any, kind: type | tuple[type, ...], path: str | Path, what: str,
           shape: str) -> Any:
    """``data`` if it is a ``kind`` (``dict``, ``list``), else :class:`InputError` saying the
    file holds a <type> where ``shape`` (``"a mapping with models, prompt_sets, jobs"``) was
    expected."""
    if not isinstance(data, kind):
        got = "nothing" if data is None else f"a {type(data).__name__}"
        raise InputError(f"{what} {str(path)!r} holds {got}; expected {shape}")
    return data


SYSTEM_DIRS = ("/proc", "/sys", "/dev")


def system_tree(resolved: Path) -> str | None:
    """The system tree (/proc, /sys, /dev but /dev/shm) that ``resolved`` lies in, or None."""
    shm = Path("/dev/shm")  # a memory-backed folder, fine for output
    if resolved == shm or shm in resolved.parents:
        return None
    for system in SYSTEM_DIRS:
        if resolved == Path(system) or Path(system) in resolved.parents:
            return system
    return None


def check_output_dir(path: str | Path, option: str) -> Path:
    """``path`` if it is (or can be made) a writable folder outside /proc, /sys and /dev.

    Raises:
        InputError: it is a file, under a system tree, or its nearest existing folder is not
            writable (a read-only mount included); checked before any work is done.
    """
    path = Path(path)
    resolved = Path(os.path.realpath(path))
    system = system_tree(resolved)
    if system:
        raise InputError(f"{option} {path}: resolves to {resolved}, inside {system}; choose "
                         "another place")
    if resolved.exists() and not resolved.is_dir():
        raise InputError(f"{option} {path}: exists and is not a folder")
    probe = resolved
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"{option} {path}: {probe} is not a folder, so {path} cannot be made")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: {probe} is not writable (read-only, or not yours); "
                         "choose another place")
    return path


def check_output_file(path: str | Path, option: str) -> Path:
    """``path`` if a file can be written there: not a folder, not under a system tree, and its
    folder exists and is writable.

    Raises:
        InputError: as :func:`check_output_dir`, or ``path`` is a folder.
    """
    path = Path(path)
    if str(path).endswith(("/", os.sep)) or path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    resolved = Path(os.path.realpath(path))
    system = system_tree(resolved)
    if system:
        raise InputError(f"{option} {path}: resolves to {resolved}, inside {system}; choose "
                         "another place")
    if resolved.exists() and not os.access(resolved, os.W_OK):
        raise InputError(f"{option} {path}: exists and is not writable")
    if not resolved.parent.is_dir():
        raise InputError(f"{option} {path}: the folder {path.parent} does not exist; make it "
                         "first")
    check_output_dir(resolved.parent, option)
    return path
