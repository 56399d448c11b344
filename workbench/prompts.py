"""Prompt sets: JSONL files of prompts with named segments, validated line by line.

One JSON object per line::

    {"id": "ioi-0001", "text": "...", "segments": {"IO": [18, 23]}, "answer": " Mary",
     "distractor": " John", "corrupted_text": "...", "task": "ioi", "meta": {...}}

``id`` and ``text`` are required; ``segments`` maps a name to a character span ``[start, end)`` of
``text`` (``start == end`` is an empty segment); everything else is optional. ``image`` (for
vision-language models) is an image file's path, relative to the JSONL file's folder; the text then
holds the model's image placeholder (``"<image>"``) once, see ``workbench/vision.py``. Free-form
data goes under ``meta``; any other key is an error (usually a typo). Errors name the file, the line
and the field, and are raised before anything is written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from workbench._callable import make_callable
from workbench.errors import InputError
from workbench.inputs import read_input


class _PromptLine(BaseModel):
    """The schema of one JSONL line (pydantic, strict: no silent coercion of types)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    segments: dict[str, tuple[int, int]] = Field(default_factory=dict)
    answer: str | None = None
    distractor: str | None = None
    corrupted_text: str | None = None
    task: str | None = None
    image: str | None = Field(default=None, min_length=1)
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("segments", mode="before")
    @classmethod
    def _spans_as_tuples(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        return value


@dataclass(frozen=True)
class Prompt:
    """One validated prompt. ``segments`` holds character spans ``[start, end)`` of ``text``."""

    id: str
    text: str
    segments: dict[str, tuple[int, int]] = field(default_factory=dict)
    answer: str | None = None
    distractor: str | None = None
    corrupted_text: str | None = None
    task: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # "file:line"
    image: Any = None  # an image file's path (str), or an array [height, width, 3]


@dataclass(frozen=True)
class PromptFile:
    path: str
    sha256: str
    n_prompts: int


@dataclass(frozen=True)
class PromptSet:
    """Prompts in file order, with the files they came from (paths and sha256)."""

    prompts: tuple[Prompt, ...]
    files: tuple[PromptFile, ...]

    label: str = ""  # the name of a set built in memory (no files); see :attr:`name`

    @property
    def sha256(self) -> str:
        """The file hash for one file; for several, the hash of their hashes in order; for a set
        built in memory (no files), the hash of its prompts' content (:func:`content_sha256`)."""
        if not self.files:
            return content_sha256(self.prompts)
        if len(self.files) == 1:
            return self.files[0].sha256
        return hashlib.sha256("".join(f.sha256 for f in self.files).encode()).hexdigest()

    @property
    def name(self) -> str:
        """The files' stems joined by ``+``; for a set built in memory, ``label`` or
        ``"prompts"``."""
        return "+".join(Path(f.path).stem for f in self.files) or self.label or "prompts"

    def __len__(self) -> int:
        return len(self.prompts)

    def by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    def take(self, n: int) -> "PromptSet":
        """The first ``n`` prompts, as a set of their own: no files, named like this one and
        identified by their content (:func:`content_sha256`), never by the whole files' hash.

        Raises:
            InputError: ``n`` below 1.
        """
        if n < 1:
            raise InputError(f"take({n}): expected at least 1 prompt")
        return PromptSet(self.prompts[:n], (), label=self.name)


def content_sha256(prompts: tuple[Prompt, ...] | list[Prompt]) -> str:
    """sha256 of the prompts' content in order: every field a run reads (id, text, segments,
    answer, distractor, corrupted_text, task, meta, image), as canonical JSON, one line each;
    ``source`` (where a prompt was read) is left out."""
    digest = hashlib.sha256()
    for p in prompts:
        image = p.image if p.image is None or isinstance(p.image, str) else \
            hashlib.sha256(repr(getattr(p.image, "tolist", lambda: p.image)()).encode()).hexdigest()
        row = {"id": p.id, "text": p.text, "segments": {k: list(v) for k, v in p.segments.items()},
               "answer": p.answer, "distractor": p.distractor,
               "corrupted_text": p.corrupted_text, "task": p.task, "meta": p.meta, "image": image}
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    kind, msg = first["type"], first["msg"]
    if kind == "extra_forbidden":
        return f"unknown field {loc!r} (put free-form data under 'meta')"
    if kind == "missing":
        return f"field {loc!r} is required"
    return f"field {loc!r}: {msg}"


def parse_line(line: str, where: str, folder: Path | None = None) -> Prompt:
    """Validate one JSONL line. ``where`` (``file:line``) prefixes every error; a relative
    ``image`` path is taken relative to ``folder`` (the JSONL file's folder).

    Raises:
        InputError: bad JSON, a wrong or unknown field, a segment outside the text, or an image
            that is not a file.
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    try:
        rec = _PromptLine.model_validate(obj)
    except ValidationError as err:
        raise InputError(f"{where}: {_describe(err)}") from None
    n = len(rec.text)
    for name, (start, end) in rec.segments.items():
        if not name:
            raise InputError(f"{where}: field 'segments' has an empty segment name")
        if not 0 <= start <= end <= n:
            raise InputError(f"{where}: field 'segments.{name}': span [{start}, {end}) is outside "
                             f"the text (length {n}) or reversed")
    image = None
    if rec.image is not None:
        path = Path(rec.image)
        image = path if path.is_absolute() or folder is None else folder / path
        if not image.is_file():
            raise InputError(f"{where}: field 'image': {str(image)!r} is not a file (a relative "
                             "path is relative to the JSONL file's folder)")
    return Prompt(id=rec.id, text=rec.text, segments=dict(rec.segments), answer=rec.answer,
                  distractor=rec.distractor, corrupted_text=rec.corrupted_text, task=rec.task,
                  meta=rec.meta, source=where, image=None if image is None else str(image))


def unique(prompt: Prompt, where: str, seen: dict[str, str]) -> Prompt:
    """``prompt``, after recording its id in ``seen`` (id -> where it was read).

    Raises:
        InputError: the id was read before (naming both places).
    """
    if prompt.id in seen:
        raise InputError(f"{where}: duplicate id {prompt.id!r} (first on {seen[prompt.id]})")
    seen[prompt.id] = where
    return prompt


def load_prompt_set(paths: str | Path | list[str | Path]) -> PromptSet:
    """Load and validate one or more JSONL prompt files (ids must be unique across them).

    Raises:
        InputError: a missing or empty file, a bad line (with file, line and field), or a duplicate
            id (with both lines).
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise InputError("no prompt file given (--prompts data/ioi.jsonl)")
    prompts: list[Prompt] = []
    files: list[PromptFile] = []
    seen: dict[str, str] = {}
    for raw in paths:
        path = Path(raw)
        data = read_input(path, "prompt file")  # the one reader of input files
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(f"{path}: not UTF-8 (byte {err.start})") from None
        count = 0
        # split on "\n" only: str.splitlines() also breaks inside JSON strings at U+2028,
        # U+2029, U+0085 and other characters JSON allows unescaped
        for lineno, line in enumerate(text.split("\n"), start=1):
            line = line.removesuffix("\r")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            prompts.append(unique(parse_line(line, where, path.parent), where, seen))
            count += 1
        if count == 0:
            raise InputError(f"prompt file {str(path)!r} is empty: no prompts")
        files.append(PromptFile(str(path), hashlib.sha256(data).hexdigest(), count))
    return PromptSet(tuple(prompts), tuple(files))


# ``wb.prompts(...)``: called as a function, this module is the public API's :func:`workbench.api.prompts`
make_callable(__name__, "workbench.api:prompts")
