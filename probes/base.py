"""What a probe is: hook points, a per-batch reduction, records out.

A probe is a frozen dataclass (its parameters) with:

* ``name`` and ``hook_points``: per-layer hook suffixes (``"attn.hook_pattern"`` means
  ``blocks.{layer}.attn.hook_pattern`` for every layer); the run loop registers only these;
* ``units``: metric name -> unit, copied into the run manifest;
* ``headline``: the summary metrics that say what the probe found (the first is the default
  wherever one metric is shown: the app, the figures, the atlas);
* ``start(batch, model)`` -> per-batch state; ``observe(state, layer, point, activation)`` is called
  inside the forward hook and must reduce right away (never keep a whole-run tensor);
  ``finish(state)`` -> a record table for the batch;
* ``summarize(table)`` -> extra records computed from the whole run's table (means over prompts).

Two optional extensions:

* ``prepare(model, tokenized)`` runs once before the batches and returns the probe to use (e.g. with
  data-derived parameters filled in, such as sink dimensions); the returned probe's ``params()`` are
  what the manifest records;
* ``owns_forward = True`` with ``run_batch(model, batch)`` for probes that need forward passes of
  their own (a run without a segment, a masked variant): the run loop calls ``run_batch`` instead of
  sharing the hooked forward, and still handles batching, writing, resuming and the manifest.

Probes sharing the forward never modify activations: hooks return nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import Field, TypeAdapter, ValidationError

from workbench.errors import InputError
from workbench.vision import IMAGE_SEGMENT


def rule(**bounds: Any) -> Any:
    """A parameter's rule, used as ``eps: Annotated[float, rule(gt=0, lt=1)] = 0.3``: finite
    (NaN and +-inf refused) and within the pydantic bounds given (``ge``, ``gt``, ``le``, ``lt``).
    Every probe checks every field against its annotation when constructed
    (:meth:`Probe.__post_init__`)."""
    return Field(allow_inf_nan=False, **bounds)


@functools.lru_cache(maxsize=None)
def _adapters(cls: type) -> dict[str, TypeAdapter]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: TypeAdapter(_finite_floats(hints[f.name])) for f in dataclasses.fields(cls)}


def _finite_floats(hint: Any) -> Any:
    """``hint`` with plain ``float`` made finite (a float field without a rule refuses NaN too)."""
    if hint is float:
        return typing.Annotated[float, Field(allow_inf_nan=False)]
    return hint


class Probe:
    """Base class for probes (subclasses are frozen dataclasses)."""

    name: ClassVar[str]
    hook_points: ClassVar[tuple[str, ...]]
    units: ClassVar[dict[str, str]]
    # The summary metrics that say what the probe found, most telling first: the app's default
    # metric, the figure set's metrics and the atlas's scores. Each is a (layer, head) or layer
    # summary the probe writes (``prompt_id`` null) and a key of ``units``; () for none.
    headline: ClassVar[tuple[str, ...]] = ()
    needs_logits: ClassVar[bool] = False
    owns_forward: ClassVar[bool] = False

    def __post_init__(self) -> None:
        """Check every parameter against its field's type and rule.

        Raises:
            InputError: a value of the wrong type, not finite, or out of its field's range
                (naming the probe, the parameter and the rule).
        """
        for name, adapter in _adapters(type(self)).items():
            value = getattr(self, name)
            try:
                adapter.validate_python(value)
            except ValidationError as err:
                msg = err.errors()[0]["msg"]
                raise InputError(f"probe {self.name!r}: parameter {name}={value!r}: {msg}"
                                 ) from None

    def params(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_params(cls, raw: dict[str, Any]) -> "Probe":
        """The probe with parameters ``{field: value}`` (:func:`build_probe`); what the
        ``workbench.probes`` entry points are called with.

        Raises:
            InputError: an unknown parameter, or a value of the wrong type.
        """
        return build_probe(cls, raw)

    def check(self, tokenized: list, model: Any) -> None:
        """Raise :class:`InputError` before any forward pass if the prompts or the model cannot
        support this probe (a missing segment, an unsupported hook)."""

    def required_segments(self) -> set[str]:
        """Segment names every prompt must have (default: the ``segment`` parameter, if any)."""
        segment = getattr(self, "segment", None)
        return {segment} if segment else set()

    def check_prompts(self, prompts: list) -> None:
        """Raise :class:`InputError` if a prompt lacks a segment this probe needs; needs no model,
        so callers run it before loading one (``workbench run``, ``wb.run``). A prompt with an
        image has the automatic ``image`` segment (its image tokens, found when it is tokenized)."""
        for name in sorted(self.required_segments()):
            for prompt in prompts:
                automatic = name == IMAGE_SEGMENT and getattr(prompt, "image", None) is not None
                if name not in prompt.segments and not automatic:
                    raise InputError(f"{prompt.source}: prompt {prompt.id!r} has no segment "
                                     f"{name!r} (probe {self.name}, segment {name})")

    def prepare(self, model: Any, tokenized: list) -> "Probe":
        """Return the probe to run (default: itself). Called once, after :meth:`check`."""
        return self

    def run_batch(self, model: Any, batch: Any) -> pa.Table | None:
        """For ``owns_forward`` probes: run this batch's forward passes and return its records."""
        raise NotImplementedError

    def start(self, batch: Any, model: Any) -> Any:
        raise NotImplementedError

    def observe(self, state: Any, layer: int, point: str, activation: Any) -> None:
        raise NotImplementedError

    def finish(self, state: Any) -> pa.Table | None:
        raise NotImplementedError

    def summarize(self, table: pa.Table) -> pa.Table | None:
        return None


def build_probe(cls: type[Probe], raw: dict[str, str | Any]) -> Probe:
    """Instantiate ``cls`` from ``{field: value}``, validating each value against the field's type
    (strings from the command line are parsed: ``"true"``, ``"3"``, ``"0.5"``).

    Raises:
        InputError: an unknown parameter, or a value of the wrong type.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise InputError(f"probe {cls.name!r} has no parameter {key!r}; it has: "
                             f"{', '.join(fields) or 'none'}")
        adapter = TypeAdapter(_finite_floats(hints[key]))
        try:
            if isinstance(value, str):
                kwargs[key] = adapter.validate_json(value) if _json_like(value, hints[key]) \
                    else adapter.validate_python(value)
            else:
                kwargs[key] = adapter.validate_python(value)
        except ValidationError as err:
            msg = err.errors()[0]["msg"]
            raise InputError(f"probe {cls.name!r}: parameter {key}={value!r}: {msg}") from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise InputError(f"probe {cls.name!r}: {err}") from None


def _json_like(value: str, hint: Any) -> bool:
    """Whether a command-line string should be parsed as JSON for a field of type ``hint``."""
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if hint is str or value.strip() == "":
        return False
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal and all(isinstance(a, str) for a in args):
        return value.strip().startswith('"')  # a bare word: the literal itself
    if str in args and not value.strip().startswith(("[", "{", '"')) and value not in ("null",):
        return False
    return True
