"""Validation of a spec against a model and a tokenised prompt set, before any forward pass."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from workbench.errors import InputError
from workbench.heads import Head
from workbench.interventions.spec import Spec
from workbench.interventions.targets import resolve_heads
from workbench.prompts import load_prompt_set
from workbench.tokens import TokenizedPrompt, tokenize_prompt, tokenize_prompt_set



@dataclass(frozen=True)
class Checked:
    """A spec checked against one model and prompt set.

    Attributes:
        heads: the resolved heads of each operation (``redistribute_attention`` without the last
            layer's heads).
        sources: prompt id -> the tokenised ``corrupted_text`` (when an operation needs it).
        references: operation index -> the tokenised reference prompts of a ``mean`` ablation.
        cache: values computed once per checked spec (the ``mean`` ablation's means).
    """

    spec: Spec
    heads: tuple[tuple[Head, ...], ...]
    sources: dict[str, TokenizedPrompt]
    references: dict[int, list[TokenizedPrompt]]
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # e.g. ablation means

    @property
    def kinds(self) -> set[str]:
        """The hook points edited (for :func:`workbench.interventions.verify.verify_edits`)."""
        point = {"redistribute_attention": "hook_pattern", "mask_keys": "hook_pattern",
                 "attention_temperature": "hook_attn_scores"}
        return {point.get(op.op, getattr(op, "point", "hook_z")) for op in self.spec.operations}


def _needs_source(op) -> bool:
    return op.op == "kv_misalign" or (op.op == "ablate_head" and op.mode == "resample")


def check_spec(model, spec: Spec, tokenized: list[TokenizedPrompt]) -> Checked:
    """Resolve every operation's heads and check its fields against the model and prompts.

    Raises:
        InputError: a head out of range or a bad selector, a segment missing from a prompt, a
            ``mask_keys`` with nothing to mask, a ``redistribute_attention`` left with only
            last-layer heads, a missing or length-mismatched ``corrupted_text``; the message names
            the operation's index, op and field (and the prompt).
    """
    info = model.info
    heads, references = [], {}
    needs_source = False
    for i, op in enumerate(spec.operations):
        where = f"{spec.source}: operation {i} ({op.op})"
        found = resolve_heads(op.heads, info.n_layers, info.n_heads, f"{where}: field 'heads'")
        if op.op == "redistribute_attention":
            found = [h for h in found if h[0] < info.n_layers - 1]
            if not found:
                raise InputError(f"{where}: field 'heads': only last-layer heads, which "
                                 "redistribution leaves untouched")
            _check_segments([op.target_segment], tokenized, f"{where}: field 'target_segment'")
        if op.op == "mask_keys":
            if not op.positions and not op.segments:
                raise InputError(f"{where}: give 'positions' or 'segments' to mask")
            _check_segments(op.segments, tokenized, f"{where}: field 'segments'")
        if op.op == "ablate_head" and op.mode == "mean":
            references[i] = _references(model, op.reference, tokenized, f"{where}: field "
                                        "'reference'")
        needs_source |= _needs_source(op)
        heads.append(tuple(found))
    sources = _sources(model, tokenized, spec.source) if needs_source else {}
    return Checked(spec, tuple(heads), sources, references)


def _check_segments(names: list[str], tokenized: list[TokenizedPrompt], where: str) -> None:
    for name in names:
        for tok in tokenized:
            if name not in tok.segments:
                raise InputError(f"{where}: prompt {tok.id!r} ({tok.prompt.source}) has no "
                                 f"segment {name!r}")


def _references(model, path, tokenized, where) -> list[TokenizedPrompt]:
    if path is None:
        return tokenized
    try:
        prompts = load_prompt_set(path)
    except InputError as err:
        raise InputError(f"{where}: {err}") from None
    return tokenize_prompt_set(prompts, model.tokenizer, prepend_bos=model.info.prepend_bos,
                               n_ctx=model.info.n_ctx, model_name=model.info.name)


def _sources(model, tokenized: list[TokenizedPrompt], source: str) -> dict[str, TokenizedPrompt]:
    out = {}
    for tok in tokenized:
        p = tok.prompt
        where = f"{source}: prompt {p.id!r} ({p.source}): corrupted_text"
        if not p.corrupted_text:
            raise InputError(f"{where} is missing; kv_misalign and resample ablation take the "
                             "other prompt from it")
        other = tokenize_prompt(replace(p, text=p.corrupted_text, segments={}), model.tokenizer,
                                prepend_bos=model.info.prepend_bos)
        if other.n_tokens != tok.n_tokens:
            raise InputError(f"{where} has {other.n_tokens} tokens, text has {tok.n_tokens}; "
                             "the values must come from a prompt of the same length")
        out[p.id] = other
    return out
