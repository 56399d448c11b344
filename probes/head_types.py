"""Head-type detectors: how well each head's attention matches a detection pattern.

Semantics of TransformerLens ``head_detector.py`` (METHODS.md section 5), per prompt then averaged:

* ``mul``: ``sum(A * P) / sum(A)``, the share of the head's attention on the pattern's (query, key)
  pairs;
* ``abs``: ``1 - sum|A - P| / seq_len``, in [-1, 1], 1 for a perfect match (TransformerLens rounds
  it to 3 decimals; we do not).

Sums run over the prompt's real tokens only (padding never counts). ``exclude_bos`` drops key
position 0 and ``exclude_current_token`` the diagonal from both sums, as TransformerLens does.
Unlike TransformerLens, options apply to every prompt of a set (its list input used to drop them)
and no activation is modified (its ``mul`` used to mask the cached pattern in place).

A detection pattern is a rule: terms joined by ``|`` (union), each selecting keys ``j`` for query
``i`` (always ``j <= i``):

* ``offset:K`` - ``j = i - K`` (``offset:1`` previous token, ``offset:0`` current token);
* ``pos:J`` - ``j = J`` (``pos:0`` the first token);
* ``match:S`` - ``token[j - S] == token[i]`` with ``j - S < i`` (``match:0`` duplicate token,
  ``match:1`` induction: the token after an earlier copy of the current token);
* ``segment:NAME`` - ``j`` in the prompt's segment ``NAME``.

Built-in detectors: ``previous_token = offset:1``, ``duplicate_token = match:0``,
``induction = match:1`` (equal to TransformerLens's patterns; a test checks it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from probes.base import Probe
from workbench.errors import InputError
from workbench.records import concat, records, string_column

BUILTIN_DETECTORS = {"previous_token": "offset:1", "duplicate_token": "match:0",
                     "induction": "match:1"}
MEASURES = ("mul", "abs")
_MEASURE_UNITS = {"mul": "fraction of attention", "abs": "1 - sum|A - P| / seq_len"}
_TERM = re.compile(r"^(offset|pos|match):(\d+)$|^segment:(.+)$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _units(names) -> dict[str, str]:
    return {f"{pre}{name}_{m}": _MEASURE_UNITS[m] for name in names for m in MEASURES
            for pre in ("", "mean_")}


@dataclass(frozen=True)
class Detector:
    """A named detection rule; ``terms`` are ``(kind, argument)`` pairs (see the module doc)."""

    name: str
    rule: str
    terms: tuple[tuple[str, int | str], ...]

    @property
    def segments(self) -> list[str]:
        return [str(arg) for kind, arg in self.terms if kind == "segment"]


def parse_detector(item: str, where: str) -> Detector:
    """``"induction"`` (built-in) or ``"name=rule"`` -> :class:`Detector`.

    Raises:
        InputError: an unknown built-in, a bad name, or a bad term; ``where`` prefixes the message.
    """
    name, sep, rule = (s.strip() for s in item.partition("="))
    if not sep:
        if name not in BUILTIN_DETECTORS:
            raise InputError(f"{where}: unknown detector {name!r}; built-ins are "
                             f"{', '.join(BUILTIN_DETECTORS)}, or write name=rule "
                             f"(e.g. first=pos:0)")
        rule = BUILTIN_DETECTORS[name]
    if not _NAME.match(name):
        raise InputError(f"{where}: detector name {name!r} must be lower case letters, digits "
                         f"and _, starting with a letter")
    terms = []
    for term in rule.split("|"):
        match = _TERM.match(term.strip())
        if not match:
            raise InputError(f"{where}: detector {name!r}: term {term.strip()!r} is not one of "
                             f"offset:K, pos:J, match:S (K, J, S >= 0) or segment:NAME")
        kind = match.group(1) or "segment"
        terms.append((kind, int(match.group(2)) if match.group(1) else match.group(3).strip()))
    return Detector(name, "|".join(f"{k}:{a}" for k, a in terms), tuple(terms))


def read_detectors_file(path: str) -> list[Detector]:
    """Detectors from a text file: one ``name = rule`` (or a built-in name) per line; blank lines
    and ``#`` comments are ignored.

    Raises:
        InputError: a missing file, or a bad line (with file and line number).
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise InputError(f"head_types: cannot read detectors_file {path!r} ({err.strerror})") \
            from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(parse_detector(text, f"{path}:{lineno}"))
    return out


def detection_pattern(detector: Detector, input_ids: Int[Tensor, "batch pos"],
                      lengths: Int[Tensor, " batch"],
                      segment_masks: dict[str, Bool[Tensor, "batch pos"]] | None = None
                      ) -> Bool[Tensor, "batch query_pos key_pos"]:
    """The detector's pattern ``P[b, i, j]`` for a right-padded batch: lower triangular
    (``j <= i``), False on padded queries and keys."""
    n_batch, seq = input_ids.shape
    dev = input_ids.device
    i = torch.arange(seq, device=dev)[:, None]
    j = torch.arange(seq, device=dev)[None, :]
    out = torch.zeros(n_batch, seq, seq, dtype=torch.bool, device=dev)
    for kind, arg in detector.terms:
        if kind == "offset":
            out |= (i - j == arg)[None]
        elif kind == "pos":
            out |= (j == arg)[None]
        elif kind == "match":
            shifted = torch.full_like(input_ids, -1)
            shifted[:, arg:] = input_ids[:, :seq - arg]  # shifted[b, j] = token[b, j - arg]
            same = shifted[:, None, :] == input_ids[:, :, None]  # [b, i, j]
            out |= same & (j - arg < i)[None] & (j >= arg)[None]
        else:
            out |= segment_masks[arg].to(dev)[:, None, :]
    real = torch.arange(seq, device=dev)[None, :] < lengths.to(dev)[:, None]
    return out & (j <= i)[None] & real[:, :, None] & real[:, None, :]


def head_scores(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                detection: Bool[Tensor, "batch query_pos key_pos"], lengths: Int[Tensor, " batch"],
                *, exclude_bos: bool = False, exclude_current_token: bool = False
                ) -> tuple[Float[Tensor, "batch head_index"], Float[Tensor, "batch head_index"]]:
    """``(mul, abs)`` scores of every head against a 0/1 detection pattern, per prompt, in
    float64 (float32 on MPS).

    Over the prompt's real (query, key) pairs, minus key 0 (``exclude_bos``) and the diagonal
    (``exclude_current_token``): ``mul = sum(A P) / sum(A)`` (NaN where ``sum(A) = 0``) and
    ``abs = 1 - sum|A - P| / length`` with ``|A - P| = A + P - 2 A P`` (exact for P in {0, 1}).
    ``sum(A P)`` gathers the pattern's entries and ``sum(A)`` uses row sums, so no
    ``[batch, head, query, key]`` temporary is made; ``pattern`` is not modified.
    Source: TransformerLens ``head_detector.py`` (``compute_head_attention_similarity_score``).

    Several detectors on one pattern: :func:`prepare_targets` once per batch and detector,
    :func:`kept_attention` once per layer, then :func:`scores_from` (what this function does).
    """
    opts = dict(exclude_bos=exclude_bos, exclude_current_token=exclude_current_token)
    return scores_from(pattern, prepare_targets(detection, lengths, **opts),
                       kept_attention(pattern, lengths, **opts), lengths)


@dataclass(frozen=True)
class Targets:
    """A detection pattern ready for scoring: its kept entries (batch, query, key index tensors)
    and their number per prompt (``[batch, 1]`` integer)."""

    b: Tensor
    q: Tensor
    k: Tensor
    n_target: Tensor


def prepare_targets(detection: Bool[Tensor, "batch query_pos key_pos"],
                    lengths: Int[Tensor, " batch"], *, exclude_bos: bool = False,
                    exclude_current_token: bool = False) -> Targets:
    """The pattern's entries on real (query, key) pairs, less key 0 / the diagonal when
    excluded (computed once per batch; every layer reuses them)."""
    dev = detection.device
    seq = detection.shape[-1]
    pos = torch.arange(seq, device=dev)
    is_real = pos[None, :] < lengths.to(dev)[:, None]  # [batch, pos]
    det = detection & is_real[:, :, None] & is_real[:, None, :]
    if exclude_bos:
        det = det & (pos != 0)[None, None, :]
    if exclude_current_token:
        det = det & (pos[:, None] != pos[None, :])[None]
    b, q, k = det.nonzero(as_tuple=True)
    return Targets(b, q, k, det.sum((-1, -2))[:, None])


def _accumulator(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def kept_attention(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                   lengths: Int[Tensor, " batch"], *, exclude_bos: bool = False,
                   exclude_current_token: bool = False) -> Float[Tensor, "batch head_index"]:
    """``sum(A)`` over each prompt's kept (query, key) pairs (the ``mul`` denominator): row sums
    over real queries, less key 0 and the diagonal when excluded. Summed in float64: the kept
    mass is row sum - column 0 - diagonal, which cancels when almost all of a row is on token 0
    (sink heads: 0.99997 of it); fp32 was off by 1e-3 there. Without exclusions nothing cancels
    and the row sums are taken in the pattern's dtype (fp32 for half precision), then summed in
    float64."""
    dev = pattern.device
    acc = _accumulator(dev)
    real = (torch.arange(pattern.shape[-1], device=dev)[None, :]
            < lengths.to(dev)[:, None]).to(acc)
    if exclude_bos or exclude_current_token:
        # a float64 sum copies its input: one head at a time bounds that copy to one head's pattern
        row_sums = torch.stack([pattern[:, h].sum(-1, dtype=acc)
                                for h in range(pattern.shape[1])], dim=1)
    else:  # nothing cancels: rows sum to about 1, the pattern's own (fp32) sum is exact enough
        half = pattern.dtype in (torch.float16, torch.bfloat16)
        row_sums = pattern.sum(-1, dtype=torch.float32 if half else None).to(acc)
    total = torch.einsum("bhq,bq->bh", row_sums, real)
    if exclude_bos:
        total -= torch.einsum("bhq,bq->bh", pattern[..., 0].to(acc), real)
    if exclude_current_token:
        total -= torch.einsum("bhq,bq->bh", pattern.diagonal(dim1=-2, dim2=-1).to(acc), real)
    if exclude_bos and exclude_current_token:
        total += pattern[:, :, 0, 0].to(acc)  # (0, 0) was subtracted twice
    return total


def scores_from(pattern: Float[Tensor, "batch head_index query_pos key_pos"], targets: Targets,
                total: Float[Tensor, "batch head_index"], lengths: Int[Tensor, " batch"]
                ) -> tuple[Float[Tensor, "batch head_index"], Float[Tensor, "batch head_index"]]:
    """``(mul, abs)`` from prepared targets and the kept attention (see :func:`head_scores`),
    accumulated like :func:`kept_attention`."""
    n_batch, n_heads = pattern.shape[:2]
    dev = pattern.device
    acc = _accumulator(dev)
    b, q, k = (t.to(dev) for t in (targets.b, targets.q, targets.k))  # layers split over devices
    overlap = torch.zeros(n_batch, n_heads, device=dev, dtype=acc)
    overlap.index_add_(0, b, pattern[b, :, q, k].to(acc))
    n_target = targets.n_target.to(device=dev, dtype=acc)
    abs_ = 1 - (total.to(acc) + n_target - 2 * overlap) / lengths.to(dev)[:, None].to(acc)
    return overlap / total.to(acc), abs_


@dataclass
class _State:
    batch: Any
    targets: list[Targets]  # one per detector
    scores: dict[int, list[tuple[Tensor, Tensor]]] = field(default_factory=dict)


@dataclass(frozen=True)
class HeadTypes(Probe):
    """Head-type scores of every head (hook ``attn.hook_pattern``).

    Records per (prompt, layer, head): ``{detector}_mul`` and ``{detector}_abs`` for each detector
    (default: ``previous_token``, ``duplicate_token``, ``induction``); summaries
    ``mean_{detector}_{measure}`` per (layer, head), the mean over prompts (TransformerLens's
    list semantics). ``mul`` rows are left out where the kept attention sums to 0.

    ``detectors``: built-in names or ``name=rule`` items (module doc), e.g. on the command line
    ``--param 'head_types.detectors=["induction", "first=pos:0", "skip=offset:2|offset:3"]'``;
    ``detectors_file``: a text file with one ``name = rule`` per line, added to ``detectors``. The
    resolved rules are recorded in the manifest (``rules``). Use ``data/repeated_tokens.jsonl`` for
    duplicate-token and induction heads.

    Raises (at construction / in :meth:`check`): InputError for a bad rule, a duplicate name, an
    unreadable file, or a ``segment:`` rule naming a segment some prompt lacks.
    """

    name: ClassVar[str] = "head_types"
    hook_points: ClassVar[tuple[str, ...]] = ("attn.hook_pattern",)
    headline: ClassVar[tuple[str, ...]] = (
        "mean_induction_mul", "mean_previous_token_mul", "mean_duplicate_token_mul")
    units: ClassVar[dict[str, str]] = _units(BUILTIN_DETECTORS)  # plus custom detectors'

    detectors: list[str] = field(default_factory=lambda: list(BUILTIN_DETECTORS))
    detectors_file: str | None = None  # more detectors, one "name = rule" per line
    exclude_bos: bool = False  # leave key position 0 out of both sums (TransformerLens option)
    exclude_current_token: bool = False  # leave the diagonal out of both sums

    def __post_init__(self):
        super().__post_init__()
        found = [parse_detector(item, "head_types.detectors") for item in self.detectors]
        if self.detectors_file:
            found += read_detectors_file(self.detectors_file)
        names = [d.name for d in found]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes or not found:
            raise InputError(f"head_types: detector names must be unique and at least one is "
                             f"needed; got {names}")
        object.__setattr__(self, "_detectors", tuple(found))
        object.__setattr__(self, "units", _units([d.name for d in found]))  # this run's metrics

    def params(self) -> dict:
        return {**super().params(), "rules": {d.name: d.rule for d in self._detectors}}

    def required_segments(self) -> set[str]:
        return {s for d in self._detectors for s in d.segments}

    def check(self, tokenized: list, model: Any) -> None:
        for name in {s for d in self._detectors for s in d.segments}:
            for tok in tokenized:
                if name not in tok.segments:
                    raise InputError(f"{tok.prompt.source}: prompt {tok.id!r} has no segment "
                                     f"{name!r} (probe head_types, segment:{name})")

    def start(self, batch: Any, model: Any) -> _State:
        segments = {s: batch.segment_mask(s) for d in self._detectors for s in d.segments}
        opts = dict(exclude_bos=self.exclude_bos, exclude_current_token=self.exclude_current_token)
        targets = [prepare_targets(detection_pattern(d, batch.input_ids, batch.lengths, segments),
                                   batch.lengths, **opts) for d in self._detectors]
        return _State(batch, targets)

    def observe(self, state: _State, layer: int, point: str, activation: Tensor) -> None:
        opts = dict(exclude_bos=self.exclude_bos, exclude_current_token=self.exclude_current_token)
        lengths = state.batch.lengths
        total = kept_attention(activation, lengths, **opts)  # shared by every detector
        state.scores[layer] = [tuple(x.cpu() for x in scores_from(activation, t, total, lengths))
                               for t in state.targets]

    def finish(self, state: _State) -> pa.Table | None:
        ids = state.batch.prompt_ids
        out = []
        for layer, per_detector in sorted(state.scores.items()):
            for det, scores in zip(self._detectors, per_detector):
                for measure, values in zip(MEASURES, scores):
                    keep = ~torch.isnan(values)
                    idx = keep.nonzero().numpy()
                    out.append(records(f"{det.name}_{measure}", values[keep].double().numpy(),
                                       layer=layer, head=idx[:, 1],
                                       prompt_id=string_column(ids, idx[:, 0])))
        return concat(out)

    def summarize(self, table: pa.Table) -> pa.Table | None:
        rows = table.filter(pc.is_valid(table["prompt_id"]))
        out = []
        for det in self._detectors:
            for measure in MEASURES:
                metric = f"{det.name}_{measure}"
                sel = rows.filter(pc.equal(rows["metric"], metric))
                if sel.num_rows == 0:
                    continue
                agg = sel.group_by(["layer", "head"], use_threads=False).aggregate(
                    [("value", "mean")]).sort_by([("layer", "ascending"), ("head", "ascending")])
                out.append(records(f"mean_{metric}", agg["value_mean"].to_numpy(),
                                   layer=agg["layer"], head=agg["head"]))
        return concat(out)
