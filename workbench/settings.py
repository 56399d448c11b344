"""Machine-dependent defaults: cache folder, device and dtype.

Torch is imported lazily so that the store and the app can use the cache helpers without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from workbench.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

CACHE_ENV = "WORKBENCH_CACHE"
DTYPES = ("float32", "bfloat16", "float16")


def cache_dir() -> Path:
    """The workbench cache folder: ``$WORKBENCH_CACHE``, else ``$XDG_CACHE_HOME/attention-workbench``,
    else ``~/.cache/attention-workbench``. Created on first use."""
    root = os.environ.get(CACHE_ENV)
    if root:
        path = Path(root).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "attention-workbench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolve_device(device: str | None) -> "torch.device":
    """``None``/``"auto"`` picks ``cuda`` when a GPU is visible, else ``cpu``.

    Raises:
        InputError: the device string is not understood by torch, is not cpu / cuda / mps, or
            asks for a GPU or MPS backend this machine does not have.
    """
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise InputError(f"--device {device!r} is not a torch device (try 'cpu' or 'cuda')"
                         ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device!r} asks for CUDA but no GPU is visible to torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device!r}: this machine has "
                             f"{torch.cuda.device_count()} GPU(s), numbered from 0")
    elif dev.type == "mps":
        if not (torch.backends.mps.is_available()):
            raise InputError(f"--device {device!r}: Apple's MPS backend is not available on this "
                             "machine; use cpu or cuda")
    elif dev.type != "cpu":
        raise InputError(f"--device {device!r}: the workbench runs on cpu, cuda (cuda:N) or mps")
    return dev


def resolve_dtype(dtype: str | None, device: "torch.device") -> "torch.dtype":
    """``None``/``"auto"`` gives bfloat16 on CUDA and float32 on the CPU.

    Raises:
        InputError: ``dtype`` is not one of float32, bfloat16, float16.
    """
    import torch

    if dtype in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)} or 'auto'")
    return getattr(torch, dtype)


def dtype_name(dtype: "torch.dtype") -> str:
    return str(dtype).removeprefix("torch.")
