"""The declarative intervention spec: a list of operations on attention heads (METHODS.md §7).

A spec is JSON or YAML (a list of operations, or ``{"operations": [...]}``); it is validated with
pydantic, then against the model and the prompt set by :func:`check_spec`, before any forward pass.
Every operation has ``op`` and ``heads``: an explicit list (``["9.6", "3.1"]``) or a selector
(:mod:`workbench.interventions.targets`: ``{"select": "vhr", "run": "runs/x"}``, ``top_k``,
``image_centric``, ``random``, ``all``). Example::

    [{"op": "scale_head", "heads": ["4.0"], "alpha": 2.0},
     {"op": "redistribute_attention", "heads": {"select": "all"}, "p": 0.6,
      "target_segment": "passage"}]

Parameters a sweep can vary (``--sweep alpha=0,1,2``): :data:`SWEEPABLE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from workbench.errors import InputError

SWEEPABLE = ("alpha", "p", "sigma", "temperature")
MAX_SEED = 2**32 - 1  # noise seeds are mixed with batch and layer into torch's 64-bit seed


class _Strict(BaseModel):
    # allow_inf_nan=False: NaN and +-inf are refused for every float field (they silently turn
    # logit differences into NaN); each field's range is its own Field(...) rule.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Selector(_Strict):
    """Heads chosen from a stored run (or at random). Fields by ``select``:

    * ``all``: every head (``redistribute_attention`` drops the last layer itself).
    * ``vhr``: VHR heads of a ``head_divergence`` run (:func:`workbench.selection.vhr_heads`),
      ``last_n_layers`` optional.
    * ``top_k``: the ``k`` heads with the largest mean ``metric`` in ``table`` of ``run``
      (rows with a head; ``segment``/``condition`` filter them when given).
    * ``image_centric``: VAR's image-centric heads from an ``attention_sink`` run (table
      ``attention_sink``): mean ``segment_mass`` of ``segment`` >= ``min_mass`` and mean
      ``segment_nonsink_share`` >= ``rho``.
    * ``random``: ``k`` heads drawn with ``seed`` (a control), from every layer but the last when
      ``exclude_last_layer``.
    """

    select: Literal["all", "vhr", "top_k", "image_centric", "random"]
    run: str | None = None
    table: str | None = None
    metric: str | None = None
    k: int | None = Field(None, ge=1)
    segment: str | None = None
    condition: str | None = None
    last_n_layers: int | None = Field(None, ge=1)
    min_mass: float = Field(0.2, ge=0, le=1)
    rho: float = Field(0.8, ge=0, le=1)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    exclude_last_layer: bool = True


Heads = Union[list[str], Selector]


class ScaleHead(_Strict):
    """Multiply each head's output by ``alpha`` at ``attn.{point}`` (MoH 2410.11842 / VHR
    2412.13949). 1 = exact no-op, 0 = zero ablation."""

    op: Literal["scale_head"]
    heads: Heads
    alpha: float = Field(1.0, ge=-1e3, le=1e3)  # beyond this the activations overflow
    point: Literal["hook_z", "hook_result"] = "hook_z"


class AblateHead(_Strict):
    """Replace each head's ``hook_z``: ``zero``; ``mean`` over every real token of ``reference``
    (a JSONL prompt file; default: the evaluated prompts), position-independent; ``resample``: the
    head's ``z`` from the prompt's ``corrupted_text`` (same token length) at the same positions."""

    op: Literal["ablate_head"]
    heads: Heads
    mode: Literal["zero", "mean", "resample"] = "zero"
    reference: str | None = None


class RedistributeAttention(_Strict):
    """VAR (Kang et al., ICLR 2025, arXiv 2503.03321): see
    :func:`workbench.interventions.edits.redistribute`. ``p`` = fraction MOVED off the sink keys
    (the paper's convention; the released code's p is the fraction kept, i.e. 1 - p here);
    ``rho`` = minimum non-sink share of the row's segment attention (paper; the code thresholds
    the sink ratio <= rho, i.e. 1 - rho here). Heads of the last layer are never edited."""

    op: Literal["redistribute_attention"]
    heads: Heads
    p: float = Field(0.6, ge=0, le=1)
    target_segment: str
    sink_positions: list[Annotated[int, Field(ge=0)]] = [0]
    min_segment_mass: float = Field(0.2, ge=0, le=1)
    rho: float = Field(0.8, ge=0, le=1)
    queries: Literal["all", "last"] = "all"


class AttentionTemperature(_Strict):
    """Divide the heads' pre-softmax scores (``hook_attn_scores``) by ``temperature`` (> 1
    flattens, < 1 sharpens; masked keys stay masked)."""

    op: Literal["attention_temperature"]
    heads: Heads
    # below 1e-3 scores / temperature overflows (NaN patterns); above 1e3 the row is uniform
    temperature: float = Field(1.0, ge=1e-3, le=1e3)


class MaskKeys(_Strict):
    """Knock out the heads' attention to key ``positions`` and the tokens of ``segments``, and
    renormalise each row over the remaining keys (on ``hook_pattern``; equal to a softmax over
    the remaining keys). A row left with no attention is kept unchanged."""

    op: Literal["mask_keys"]
    heads: Heads
    positions: list[Annotated[int, Field(ge=0)]] = []
    segments: list[str] = []
    queries: Literal["all", "last"] = "all"


class ValueNoise(_Strict):
    """Indirect Attention (arXiv 2509.26015): Gaussian noise on the heads' values, per key,
    per component std ``sigma * ||v_k|| / sqrt(d_head)`` (so the noise norm is about
    ``sigma * ||v_k||``); applied per query head at ``hook_z`` (see ``edits.noisy_z``)."""

    op: Literal["value_noise"]
    heads: Heads
    sigma: float = Field(0.0, ge=0, le=1e3)  # relative to ||v_k||
    seed: int = Field(0, ge=0, le=MAX_SEED)


class KVMisalign(_Strict):
    """Indirect Attention: each head reads the values of the prompt's ``corrupted_text`` (same
    token length) through its own attention pattern; keys and queries stay (at ``hook_z``)."""

    op: Literal["kv_misalign"]
    heads: Heads
    source: Literal["corrupted_text"] = "corrupted_text"


Operation = Annotated[Union[ScaleHead, AblateHead, RedistributeAttention, AttentionTemperature,
                            MaskKeys, ValueNoise, KVMisalign], Field(discriminator="op")]
OPS = {cls.model_fields["op"].annotation.__args__[0]: cls
       for cls in (ScaleHead, AblateHead, RedistributeAttention, AttentionTemperature, MaskKeys,
                   ValueNoise, KVMisalign)}
_OP = TypeAdapter(Operation)


class Spec(BaseModel):
    """A validated spec and its verbatim text (stored in the run manifest)."""

    model_config = ConfigDict(frozen=True)
    operations: tuple[Operation, ...]
    text: str = ""
    source: str = "<spec>"


def parse_spec(data: object, text: str = "", source: str = "<spec>") -> Spec:
    """Validate already-parsed JSON/YAML data (a list of operations or ``{"operations": [...]}``).

    Raises:
        InputError: not a non-empty list, an unknown ``op``, a missing, unknown or bad field; the
            message names the operation's index, its op and the field.
    """
    if isinstance(data, dict) and set(data) == {"operations"}:
        data = data["operations"]
    if not isinstance(data, list) or not data:
        raise InputError(f"{source}: a spec is a non-empty list of operations (or "
                         "{\"operations\": [...]})")
    ops = []
    for i, item in enumerate(data):
        name = item.get("op") if isinstance(item, dict) else None
        if name not in OPS:
            raise InputError(f"{source}: operation {i}: field 'op': unknown operation {name!r}; "
                             f"choose one of {', '.join(OPS)}")
        try:
            ops.append(_OP.validate_python(item))
        except ValidationError as err:
            raise InputError(f"{source}: operation {i} ({name}): {_describe(err)}") from None
    return Spec(operations=tuple(ops), text=text, source=source)


def load_spec(path: str | Path) -> Spec:
    """Read and validate a JSON (``.json``) or YAML (anything else) spec file.

    Raises:
        InputError: a missing or unparsable file, or an invalid spec (see :func:`parse_spec`).
    """
    from workbench.inputs import parse_document, read_text

    path = Path(path)
    text = read_text(path, "spec")
    return parse_spec(parse_document(text, path, "spec"), text, str(path))


def as_spec(spec: object) -> Spec:
    """A :class:`Spec` as it is, a spec file's path (:func:`load_spec`), or already-parsed data
    such as a list of operation dicts (:func:`parse_spec`).

    Raises:
        InputError: as :func:`load_spec` / :func:`parse_spec`.
    """
    if isinstance(spec, Spec):
        return spec
    return load_spec(spec) if isinstance(spec, (str, Path)) else parse_spec(spec)


def _describe(err: ValidationError) -> str:
    """``field 'name': message`` of the first error (the ``heads`` union: its relevant branch)."""
    errors = err.errors()
    first = errors[0]
    loc = [str(x) for x in first["loc"][1:]]
    if loc and loc[0] == "heads":
        branch = "Selector" if isinstance(first["input"], dict) else "list"
        first = next((e for e in errors if len(e["loc"]) > 2
                      and str(e["loc"][2]).startswith(branch)), first)
        where = ".".join(str(x) for x in first["loc"][3:])
        return ("field 'heads': expected a list of 'layer.head' strings or a selector "
                "{select: all | vhr | top_k | image_centric | random, ...}; "
                f"{where + ': ' if where else ''}{first['msg']}")
    return f"field {'.'.join(loc) or 'op'!r}: {first['msg']}"


def with_value(spec: Spec, name: str, value: float) -> Spec:
    """The spec with parameter ``name`` set to ``value`` in every operation that has it.

    Raises:
        InputError: ``name`` is not sweepable or no operation has it.
    """
    if name not in SWEEPABLE:
        raise InputError(f"--sweep {name}: sweepable parameters are {', '.join(SWEEPABLE)}")
    if not any(name in type(op).model_fields for op in spec.operations):
        raise InputError(f"--sweep {name}: no operation of the spec has a parameter {name!r}")
    ops = []
    for i, op in enumerate(spec.operations):
        if name in type(op).model_fields:
            try:
                op = _OP.validate_python({**op.model_dump(), name: value})
            except ValidationError as err:
                raise InputError(f"--sweep {name}={value:g}: operation {i} ({op.op}): "
                                 f"{_describe(err)}") from None
        ops.append(op)
    return spec.model_copy(update={"operations": tuple(ops)})
