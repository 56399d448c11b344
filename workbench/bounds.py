"""The bounds of every numeric option: one table, one check, for the CLI and the Python API.

Each entry of :data:`BOUNDS` says what one option accepts: an integer or a finite real number,
its range (closed or open ends), and whether ``None`` (the option's "automatic" default) is
allowed. The CLI checks every option of every command against this table while it parses the
command line (:func:`workbench_cli.commands.bounds.install`), so a bad value stops with one line
and exit code 2 before a model loads or anything is written; the API functions
(``wb.run``, ``wb.circuits``, ``wb.intervene``, ``wb.atlas``) check their keyword arguments with
the same entries (:func:`check`). Every count has an upper bound: a count is an allocation or a
loop, and ``2**64`` of either is a hang or an out-of-memory, never a result.

Keys are ``"<command path> --option"`` (``"heads prune --step"``) or ``"--option"`` for an option
that means the same in every command (``"--batch-size"``). ``tests/test_bounds.py`` walks every
numeric option of every command (click introspection) and fails for one without an entry, so an
option added later joins the table or fails the suite; docs/getting-started.md lists the table.
This module imports no torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from workbench.errors import InputError

MAX_ECHO = 80  # characters of a bad value echoed in an error line


@dataclass(frozen=True)
class Bound:
    """What one numeric option accepts.

    ``kind``: ``int`` or ``float`` (a float must be finite; an int may not be a bool, and a float
    with an integral value is refused where an int is meant). ``low`` / ``high``: the range
    (``None``: unbounded on that side; every count has a ``high``); ``low_open`` / ``high_open``:
    the end itself is excluded. ``optional``: ``None`` is allowed (the automatic default).
    """

    kind: type
    low: float | None
    high: float | None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False
    why: str = ""  # what the option is, for the docs table

    def describe(self) -> str:
        """``"integer in [1, 4096]"``, ``"finite number in (0, 1]"``."""
        what = "integer" if self.kind is int else "finite number"
        low = "-inf" if self.low is None else _num(self.low)
        high = "inf" if self.high is None else _num(self.high)
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{what} in {left}{low}, {high}{right}"

    def check(self, value: Any, name: str, sep: str = " ") -> Any:
        """``value`` if it is allowed, else :class:`InputError` naming ``name`` and the range.

        A list or tuple is checked item by item (list options such as ``--lambda``).
        """
        if value is None:
            if self.optional:
                return None
            raise InputError(f"{name}{sep}None: a value is required ({self.describe()})")
        if isinstance(value, (list, tuple)):
            return type(value)(self.check(v, name, sep) for v in value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InputError(f"{name}{sep}{echo(value)}: expected an {self.describe()}, got a "
                             f"{type(value).__name__}")
        if self.kind is int and not isinstance(value, numbers.Integral):
            raise InputError(f"{name}{sep}{echo(value)}: expected an {self.describe()}")
        if self.kind is float and not math.isfinite(value):
            raise InputError(f"{name}{sep}{value}: expected a {self.describe()}")
        too_low = self.low is not None and (value <= self.low if self.low_open
                                            else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open
                                              else value > self.high)
        if too_low or too_high:
            article = "an" if self.kind is int else "a"
            raise InputError(f"{name}{sep}{echo(value)}: expected {article} {self.describe()}")
        return int(value) if self.kind is int else float(value)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def echo(value: Any, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters (an error line never echoes a megabyte)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    keep = limit - 20
    return f"{text[:keep]}...({len(text):,} characters)"


def count(low: int, high: int, why: str = "", optional: bool = False) -> Bound:
    return Bound(int, low, high, optional=optional, why=why)


def real(low: float | None, high: float | None, why: str = "", *, low_open: bool = False,
         high_open: bool = False, optional: bool = False) -> Bound:
    return Bound(float, low, high, low_open=low_open, high_open=high_open, optional=optional,
                 why=why)


MAX_PROMPTS = 1_000_000
MAX_BATCH = 4096
MAX_HEADS = 100_000  # heads of any model this tool can load (SmolLM2: 270)

BOUNDS: dict[str, Bound] = {
    "--batch-size": count(1, MAX_BATCH, "prompts per forward pass", optional=True),
    "--n-prompts": count(1, MAX_PROMPTS, "prompts used", optional=True),
    "--top": count(1, MAX_HEADS, "heads listed per metric", optional=True),
    "circuits --n-boot": count(1, 10_000, "bootstrap resamples"),
    "circuits --ig-steps": count(1, 64, "EAP-IG integration steps"),
    "circuits --heads-per-forward": count(1, MAX_HEADS, "heads patched per forward",
                                          optional=True),
    "circuits --stages": count(1, 64, "path patching stages"),
    "circuits --n-random": count(0, 100, "random circuits for the baseline"),
    "circuits --mean-prompts": count(1, MAX_PROMPTS, "prompts the ablation means average",
                                     optional=True),
    "circuits --spot-check": count(0, MAX_HEADS, "attribution heads re-measured"),
    "circuits --max-size": count(1, 1_000_000, "largest circuit the faithfulness search tries",
                                 optional=True),
    "circuits --held-out": count(0, 10_000, "prompts the circuit is checked on"),
    "circuits --refine-tolerance": real(0, 1, "faithfulness a pruned member may cost"),
    "circuits --refine-candidates": count(0, 1080, "outside nodes tried per addition"),
    "circuits --refine-rounds": count(0, 20, "add-then-prune rounds"),
    "circuits --refine-budget": real(0, 100_000, "evaluations the refinement may spend",
                                     optional=True),
    "intervene --threshold": real(0, 1e6, "critical_sigma degradation", low_open=True),
    "intervene --generate": count(0, 4096, "greedy tokens per condition"),
    "intervene --n-generate": count(0, 10_000, "prompts generated for"),
    "graph --layer": count(-MAX_HEADS, MAX_HEADS, "layer (negative: from the end)"),
    "graph --threshold": real(0, 1, "edge weight cut-off"),
    "app --port": count(1, 65_535, "TCP port"),
    "sweep --workers": count(1, 4096, "Ray actors", optional=True),
    "sweep --gpus-per-worker": real(0, 1024, "GPUs per Ray actor", optional=True),
    "atlas --circuit-size": count(1, MAX_HEADS, "heads per circuit", optional=True),
    "atlas --circuit-max-size": count(1, 1_000_000, "largest circuit the faithfulness search "
                                      "tries", optional=True),
    "atlas --held-out": count(0, 10_000, "prompts each circuit is checked on", optional=True),
    "atlas --causal-draws": count(1, 1000, "random head sets per role in the causal control"),
    "atlas --causal-prompts": count(2, 512, "prompts per behaviour in the causal part"),
    "atlas --causal-seed": count(0, 2**32 - 1, "seed of the causal control draws"),
    "atlas ablate --draws": count(1, 1000, "random head sets of the same layers"),
    "atlas ablate --n-prompts": count(2, 512, "prompts of the role's behaviour"),
    "atlas ablate --seed": count(0, 2**32 - 1, "seed of the control draws"),
    "figures --dpi": count(10, 2400, "PNG resolution"),
    "heads prune --step": real(0, 1, "fraction of heads removed per step", low_open=True),
    "heads prune --seeds": count(1, 1000, "random removal orders"),
    "heads prune --tolerance": real(0, 1000, "relative degradation allowed", low_open=True),
    "heads learn-gates --lambda": real(0, 1e6, "L0 penalty per open gate"),
    "heads learn-gates --steps": count(1, 1_000_000, "training steps per lambda"),
    "heads learn-gates --lr": real(0, 10, "Adam learning rate", low_open=True),
    "heads learn-gates --eval-fraction": real(0, 1, "held-out share", low_open=True,
                                              high_open=True),
    "heads learn-gates --seed": count(0, 2**32 - 1, "random seed"),
}


def lookup(command: str, option: str) -> Bound | None:
    """The bound of ``option`` in ``command`` (a path such as ``"heads prune"``): the entry
    ``"<command> --option"``, else the generic ``"--option"``, else None."""
    return BOUNDS.get(f"{command} {option}".strip()) or BOUNDS.get(option)


def check(command: str, **values: Any) -> dict[str, Any]:
    """Check API keyword arguments against the CLI's bounds (``n_random=5`` is ``--n-random``).

    Returns the values (ints as ``int``, reals as ``float``). Raises :class:`InputError` for a
    value out of its range, not finite, or of the wrong type; names without an entry pass.
    """
    out = {}
    for name, value in values.items():
        option = "--" + name.replace("_", "-")
        bound = lookup(command, option)
        out[name] = value if bound is None else bound.check(value, name, "=")
    return out


def names(value: Any, name: str, *, allow_empty: bool = True) -> list[str]:
    """A list argument of the API as the CLI's list options read it: a string is one item (or
    several, comma-separated: ``"ioi,induction"``), never its characters; a list or tuple of
    strings (or paths) is taken as it is.

    Raises:
        InputError: ``None`` or another type (``5``, a dict), an item that is not a string or a
            path, or no item where one is needed.
    """
    from pathlib import PurePath

    if isinstance(value, (str, PurePath)):
        items = [part.strip() for part in str(value).split(",") if part.strip()]
    elif isinstance(value, (list, tuple)):
        bad = [v for v in value if not isinstance(v, (str, PurePath))]
        if bad:
            raise InputError(f"{name}=: expected strings, got {echo(bad[0])} "
                             f"({type(bad[0]).__name__})")
        items = [str(v) for v in value]
    else:
        raise InputError(f"{name}={echo(value)}: expected a string or a list of strings, got a "
                         f"{type(value).__name__}")
    if not items and not allow_empty:
        raise InputError(f"{name}=: give at least one")
    return items


def mapping(value: Any, name: str) -> dict:
    """A dict argument of the API (``None`` is an empty dict).

    Raises:
        InputError: anything else (a string, a list).
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(f"{name}={echo(value)}: expected a dict, got a {type(value).__name__}")
    return value


def flag(value: Any, name: str) -> bool:
    """A boolean argument of the API. Raises :class:`InputError` for anything but a bool."""
    if not isinstance(value, bool):
        raise InputError(f"{name}={echo(value)}: expected True or False")
    return value


def text(value: Any, name: str, *, optional: bool = True) -> str | None:
    """A string argument of the API (``None`` allowed when ``optional``).

    Raises:
        InputError: another type.
    """
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise InputError(f"{name}={echo(value)}: expected a string, got a "
                         f"{type(value).__name__}")
    return value
