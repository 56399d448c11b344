"""The public Python API (``import workbench as wb``): the CLI's operations, in memory.

Few names, each documented: :func:`load`, :func:`prompts`, :func:`run`, :func:`open_run`,
:class:`~workbench.results.Results`, :func:`show_pattern`, :func:`applied`, and :func:`atlas`,
:func:`circuits`, :func:`intervene` (the ``workbench.jobs`` plug-ins: :mod:`workbench.plugins`).
The CLI runs the same functions, so a run made here has the same records as ``workbench run``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from workbench.bounds import echo
from workbench.errors import InputError
from workbench.heads import format_head
from workbench.results import Results, open_run


def load(spec: Any = "smollm2-135m", *, tokenizer: Any = None, device: str | None = None,
         dtype: str | None = None, prepend_bos: bool | None = None,
         recheck: bool = False) -> Any:
    """A model ready for :func:`run`: a :class:`~workbench.models.LoadedModel` (``.bridge``, the
    TransformerBridge; ``.tokenizer``; ``.info``, what runs record, with the bridge-vs-HF parity
    check in ``.info.parity``).

    Args:
        spec: a registry name (``"smollm2-135m"``, ``"tiny-llama"``; see ``workbench models``), a
            local folder, a Hugging Face id; or a model already loaded: a Hugging Face model
            (pass ``tokenizer``) or a ``TransformerBridge`` (reused as it is; its own tokenizer
            adds BOS, TransformerLens's convention: pass the Hugging Face ``tokenizer`` or
            ``prepend_bos=False`` for the records of the same model loaded by name).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...; default: CUDA when available, else the
            CPU (a preloaded model stays where it is).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``; default: bf16 on CUDA, else fp32.
        prepend_bos: BOS before every prompt (default: what the tokenizer does).
        recheck: run the load-time checks (parity with Hugging Face, causality) even when their
            outcome is kept in the check cache for this model, dtype, device and library versions
            (:mod:`workbench.load_checks`; ``.info.parity.cached`` says which happened).

    Raises:
        ModelNotAvailable: nothing loadable of that name here. InputError: a bad device, dtype, or
            a preloaded model without its tokenizer.
    """
    from workbench.models import load_model

    return load_model(spec, tokenizer=tokenizer, device=device, dtype=dtype,
                      prepend_bos=prepend_bos, recheck=recheck)


def prompts(texts_or_path: Any, segments: Sequence[dict] | None = None, *, ids: Sequence[str]
            | None = None, name: str = "") -> Any:
    """A :class:`~workbench.prompts.PromptSet` from a JSONL path (or a list of paths), a list of
    strings, or a list of dicts with the JSONL fields (``id``, ``text``, ``segments``, ``answer``,
    ``distractor``, ``corrupted_text``, ``task``, ``meta``).

    Args:
        segments: for a list of strings, one ``{name: [char_start, char_end]}`` per text.
        ids: for a list of strings, their ids (default ``p0``, ``p1`` ...).
        name: the set's name in run ids (default ``prompts``; a file's stem for a path).

    A set built in memory is identified by the sha256 of its content (two different sets never
    share a run id). Errors name the prompt (``<prompts>:N``, 1-based) and the field.

    Raises:
        InputError: an empty list, a bad field, a segment outside its text, a duplicate id, a
            ``segments``/``ids`` list of another length, or a bad file.
    """
    from workbench.prompts import PromptSet, load_prompt_set, parse_line, unique

    if isinstance(texts_or_path, PromptSet):
        return texts_or_path
    if isinstance(texts_or_path, str) and not Path(texts_or_path).suffix == ".jsonl" \
            and not Path(texts_or_path).exists():
        raise InputError(f"prompts {echo(texts_or_path)}: no such file; a prompt set is a JSONL "
                         "path or a list of texts (for one text: [text])")
    if isinstance(texts_or_path, (str, Path)) and not (isinstance(texts_or_path, str)
                                                         and "\n" in texts_or_path):
        return load_prompt_set(texts_or_path)
    if not isinstance(texts_or_path, (list, tuple)):
        raise InputError(f"prompts {echo(texts_or_path)}: expected a JSONL path, a list of "
                         f"texts or dicts, or a PromptSet; got a {type(texts_or_path).__name__}")
    items = list(texts_or_path)
    if items and all(isinstance(i, (str, Path)) for i in items) and all(
            str(i).endswith(".jsonl") for i in items):
        return load_prompt_set(items)
    if not items:
        raise InputError("prompts(): no prompts given")
    for extra, what in ((segments, "segments"), (ids, "ids")):
        if extra is not None and len(extra) != len(items):
            raise InputError(f"prompts(): {len(items)} texts but {len(extra)} {what}")
    rows = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"id": ids[i] if ids else f"p{i}", "text": item,
                    **({"segments": segments[i]} if segments and segments[i] else {})}
        elif not isinstance(item, dict):
            raise InputError(f"prompts(): item {i} is a {type(item).__name__}; expected a string "
                             "or a dict with id and text")
        rows.append(item)
    seen: dict[str, str] = {}
    out = [unique(parse_line(json.dumps(row), f"<prompts>:{i}"), f"<prompts>:{i}", seen)
           for i, row in enumerate(rows, start=1)]
    return PromptSet(tuple(out), (), label=name)


def run(model: Any, prompt_set: Any, probes: Sequence[Any] = ("attention_entropy",), *,
        params: dict[str, dict[str, Any]] | None = None, runs_dir: Path | str | None = None,
        batch_size: int | None = None, run_id: str | None = None, resume: bool = False,
        attention: str = "auto", attention_mask: str | None = None,
        progress: bool = False) -> Results:
    """Run ``probes`` over ``prompt_set`` on ``model``: the job of ``workbench run``, same records.

    Args:
        model: a :func:`load` result, or anything :func:`load` accepts (loaded here).
        prompt_set: a PromptSet or anything :func:`prompts` accepts.
        probes: probe names (``workbench probes`` lists them; the ``workbench.probes`` entry
            points) or probe objects.
        params: ``{probe: {parameter: value}}``, as ``--param probe.parameter=value``.
        runs_dir: None (default) keeps the run in memory and writes nothing; a folder writes
            ``runs_dir/<run_id>/`` as the CLI does (``resume`` then continues it).
        batch_size: prompts per forward (default: chosen from free memory, 8 on the CPU).
        run_id: the run folder's name (default: derived from the configuration).
        attention: ``auto``, ``eager`` or ``sdpa``, as ``workbench run --attention``.
        attention_mask: a mask spec for every layer, as ``workbench run --attention-mask``.

    Returns:
        :class:`~workbench.results.Results`: ``results[probe]`` DataFrames,
        ``results.heads(metric)`` (layer x head), ``results.top(metric, k)``.

    Raises:
        InputError: an unknown probe or parameter, a prompt a probe cannot use (a missing
            segment), a prompt longer than the context. RunStateError: see ``workbench run``.
    """
    from workbench.bounds import check, flag, mapping, text
    from workbench.manifest import check_run_id
    from workbench.models import as_loaded
    from workbench.plugins import make_probes
    from workbench.run import RunOptions, execute_run

    check("run", batch_size=batch_size)
    for name, value in (("resume", resume), ("progress", progress)):
        flag(value, name)
    check_run_id(text(run_id, "run_id"), "run_id=")
    text(attention, "attention", optional=False)
    text(attention_mask, "attention_mask")
    if runs_dir is not None and not isinstance(runs_dir, (str, Path)):
        raise InputError(f"runs_dir={echo(runs_dir)}: expected a folder path or None")
    chosen = make_probes(probe_list(probes), mapping(params, "params"))
    prompt_set = prompts(prompt_set)
    check_prompts(prompt_set, chosen)
    model = as_loaded(model)
    options = RunOptions(runs_dir=None if runs_dir is None else Path(runs_dir), run_id=run_id,
                         batch_size=batch_size, resume=resume, progress=progress,
                         command=["wb.run"], attention_mask=attention_mask, attention=attention)
    return Results.of(execute_run(model, prompt_set, chosen, options,
                                  load_seconds=model.info.load_seconds))


def probe_list(probes: Any) -> list[Any]:
    """``probes`` of :func:`run` / ``wb.intervene`` as a list: a string is one probe name (or
    several, comma-separated), never its characters; a list may mix names and probe objects.

    Raises:
        InputError: ``None``, a number, a dict, or an item that is neither a name nor a probe.
    """
    if isinstance(probes, str):
        return [p.strip() for p in probes.split(",") if p.strip()]
    if not isinstance(probes, (list, tuple)):
        raise InputError(f"probes={echo(probes)}: expected a probe name or a list of them, got a "
                         f"{type(probes).__name__}")
    bad = [p for p in probes if not isinstance(p, str) and not hasattr(p, "name")]
    if bad:
        raise InputError(f"probes=: {echo(bad[0])} is neither a probe name nor a probe")
    return list(probes)


def check_prompts(prompt_set: Any, probes: Sequence[Any]) -> None:
    """Check the prompts against the probes without a model (a missing segment, a probe that
    needs one): each probe's ``check_prompts(prompts)`` where it has one. Called before a model
    loads, so these errors come in seconds.

    Raises:
        InputError: what the probe found, naming the prompt and the probe.
    """
    for probe in probes:
        check = getattr(probe, "check_prompts", None)
        if check is not None:
            check(prompt_set.prompts)


def show_pattern(model: Any, text: str, layer: int, head: int, *, max_tokens: int = 64) -> Any:
    """The attention pattern of head ``layer.head`` on ``text`` as a plotly figure (query rows,
    key columns, over the tokens; fraction of attention): the ``attention_pattern`` probe's
    records drawn by the app's and exporter's pattern figure (:mod:`workbench.figures.grid`).

    Raises:
        InputError: a head outside the model, an empty text.
    """
    from workbench.figures.grid import attention_pattern

    res = run(model, prompts([text]), ["attention_pattern"],
              params={"attention_pattern": {"heads": format_head((layer, head)), "n_prompts": 1,
                                            "max_tokens": max_tokens}})
    return attention_pattern(res["attention_pattern"], res["tokens"], "pattern", "p0", layer,
                             head, unit=res.units.get("pattern")).figure()


@contextlib.contextmanager
def applied(model: Any, spec: Any, texts: Sequence[str] | str) -> Iterator[Any]:
    """Interventions active on ``model.bridge`` for any forward inside the block; yields the
    batch of ``texts`` (``input_ids`` [batch, pos], right-padded; ``attention_mask``)::

        with wb.applied(model, [{"op": "scale_head", "heads": ["4.0"], "alpha": 0}], texts) as b:
            logits = model.bridge(b.input_ids, attention_mask=b.attention_mask)

    ``spec`` is a list of intervention dicts (``workbench intervene --spec`` format), a Spec, or
    a spec file's path; positions and segments refer to ``texts``.

    Raises:
        InputError: a bad spec (naming the field), an intervention the prompts cannot support.
    """
    from workbench.interventions import applied as apply_checked
    from workbench.interventions import as_spec, check_spec
    from workbench.tokens import make_batches, pad_token_id, tokenize_prompt_set

    parsed = as_spec(spec)
    prompt_set = prompts([texts] if isinstance(texts, str) else texts)
    tokenized = tokenize_prompt_set(prompt_set, model.tokenizer,
                                    prepend_bos=model.info.prepend_bos, n_ctx=model.info.n_ctx)
    batch = make_batches(tokenized, len(tokenized), pad_token_id(model.tokenizer),
                         sort_by_length=False)[0].to(model.device)
    with apply_checked(model, check_spec(model, parsed, tokenized), batch):
        yield batch


def _job(name: str, *args: Any, **kwargs: Any) -> Results:
    from workbench.plugins import job

    return job(name)(*args, **kwargs)


def atlas(model: Any = "smollm2-135m", **options: Any) -> Any:
    """The head atlas (``workbench atlas``): the probe battery and circuit tasks condensed into one
    row per (layer, head). Runs the ``atlas`` job of the ``workbench.jobs`` entry points; options
    as the CLI's (``out``, ``n_prompts``, ``skip``, ``resume`` ...). Returns the atlas (``.heads``:
    one row per head; ``.path``: its folder)."""
    return _job("atlas", model, **options)


def circuits(model: Any, tasks: Sequence[str] | str, **options: Any) -> Results:
    """Circuit discovery (``workbench circuits``) for ``tasks`` (shipped names or JSONL files):
    per-head effects, circuits, faithfulness, overlap. Options as the CLI's (``methods``,
    ``select``, ``n_prompts`` ...); ``runs_dir`` None works in a temporary folder and returns the
    results in memory. Runs the ``circuits`` job of the ``workbench.jobs`` entry points."""
    return _job("circuits", model, tasks, **options)  # a string is one task, not characters


def intervene(model: Any, prompt_set: Any, spec: Any, **options: Any) -> Results:
    """Interventions (``workbench intervene``): ``prompt_set`` without and with ``spec`` (and a
    ``sweep="alpha=0,1,2"``); logit differences, KL, probe metrics per condition. ``runs_dir``
    None works in a temporary folder and returns the results in memory. Runs the ``intervene``
    job of the ``workbench.jobs`` entry points."""
    return _job("intervene", model, prompts(prompt_set), spec, **options)


__all__ = ["Results", "applied", "atlas", "check_prompts", "circuits", "intervene", "load",
           "open_run", "prompts", "run", "show_pattern"]
