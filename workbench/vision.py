"""Images in prompts for LLaVA-style vision-language models.

A LLaVA-style model (``LlavaForConditionalGeneration``: a CLIP-like vision tower, a projector and a
Llama-like language model) reads an image as ``n_tokens`` consecutive *image tokens*: the text holds
one placeholder token (``"<image>"``), which is expanded to ``n_tokens`` copies of its id, and the
model writes the projected vision features over those positions. The workbench does the expansion
itself at tokenisation, so that character offsets, segments and the ``image`` segment (the image
token positions, added automatically) stay exact; :func:`image_pixels` turns the image (a file or an
array) into the ``pixel_values`` the model takes.

Only models whose image-token count is fixed (LLaVA-1.5: ``(image_size / patch_size)^2``, one more
with ``vision_feature_select_strategy="full"``) are supported; LLaVA-NeXT's variable "anyres" tiling
is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import InputError, ModelNotAvailable

IMAGE_SEGMENT = "image"  # the automatic segment holding a prompt's image-token positions
SUPPORTED_MODEL_TYPES = ("llava",)


@dataclass(frozen=True)
class ImageTokens:
    """How a vision-language model takes an image.

    Attributes:
        token: the placeholder's text in a prompt (``"<image>"``).
        token_id: its token id; the model finds image positions by this id.
        n_tokens: image tokens per image (576 for LLaVA-1.5 at 336 px).
        image_size: side in pixels of the ``pixel_values`` the vision tower takes.
        processor: the image processor (``processor(images=[...], return_tensors="pt")``).
    """

    token: str
    token_id: int
    n_tokens: int
    image_size: int
    processor: Any


def takes_images(hf_model: Any) -> bool:
    """Whether the workbench can give this Hugging Face model images (a supported LLaVA-style
    model); other models, vision-language ones included, are used on text only."""
    config = hf_model.config
    return (getattr(config, "vision_config", None) is not None
            and getattr(config, "model_type", None) in SUPPORTED_MODEL_TYPES)


def image_tokens(hf_model: Any, tokenizer: Any, processor: Any, name: str) -> ImageTokens:
    """The :class:`ImageTokens` of a model for which :func:`takes_images` is true.

    Raises:
        ModelNotAvailable: the image placeholder is not a single token of the tokenizer.
    """
    config = hf_model.config
    vision = config.vision_config
    token_id = int(config.image_token_id)
    token = tokenizer.convert_ids_to_tokens(token_id)
    if tokenizer(token, add_special_tokens=False).input_ids != [token_id]:
        raise ModelNotAvailable(f"model {name!r}: its image placeholder {token!r} (id {token_id}) "
                                "is not a single token of its tokenizer")
    side = int(vision.image_size) // int(vision.patch_size)
    full = getattr(config, "vision_feature_select_strategy", "default") == "full"
    return ImageTokens(token, token_id, side * side + int(full), int(vision.image_size), processor)


def load_image(image: Any, where: str) -> np.ndarray:
    """An image as an ``[H, W, 3]`` uint8 array: from a file (any format PIL reads, or ``.npy``
    holding ``[H, W, 3]`` / ``[H, W]`` uint8, or floats in [0, 1]) or from such an array.

    Raises:
        InputError: an unreadable file, or an array of the wrong shape or range (``where`` names
            the prompt).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            if path.suffix.lower() == ".npy":
                array = np.load(path, allow_pickle=False)
            else:
                from PIL import Image

                with Image.open(path) as img:
                    array = np.asarray(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise InputError(f"{where}: image {str(path)!r} cannot be read: {err}") from None
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < 1:
        raise InputError(f"{where}: image must be [height, width, 3] (or [height, width]), got "
                         f"shape {list(array.shape)}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or array.min() < 0 or array.max() > 1:
            raise InputError(f"{where}: image array must be uint8, or floats in [0, 1]; got "
                             f"{array.dtype} in [{array.min()}, {array.max()}]")
        array = np.round(array * 255).astype(np.uint8)
    return array


def image_pixels(image: Any, images: ImageTokens, where: str):
    """``[3, image_size, image_size]`` float32 ``pixel_values`` of one image (file or array).

    Raises:
        InputError: the image cannot be read, or the processor makes another size than the
            vision tower takes.
    """
    pixels = images.processor(images=[load_image(image, where)],
                              return_tensors="pt")["pixel_values"][0]
    if tuple(pixels.shape[-2:]) != (images.image_size, images.image_size):
        raise InputError(f"{where}: the image processor made {list(pixels.shape)} pixels; the "
                         f"vision tower takes {images.image_size} x {images.image_size}")
    return pixels.float()


def expand_image(ids: list[int], offsets: list[tuple[int, int]], image: Any,
                 images: ImageTokens | None, where: str
                 ) -> tuple[list[int], list[tuple[int, int]], np.ndarray | None, Any]:
    """Expand a prompt's one image placeholder to ``images.n_tokens`` image tokens.

    The copies keep the placeholder's character span. Returns the new ids and offsets, the image
    token positions (``None`` for a prompt without image) and the image's ``pixel_values``.

    Raises:
        InputError: an image for a model that takes none; a text without exactly one placeholder
            while it has an image; a placeholder without an image.
    """
    if images is None:
        if image is not None:
            raise InputError(f"{where}: the prompt has an image, but the model is not a "
                             "(supported, LLaVA-style) vision-language model")
        return ids, offsets, None, None
    found = [i for i, t in enumerate(ids) if t == images.token_id]
    if image is None:
        if found:
            raise InputError(f"{where}: the text holds the image placeholder {images.token!r} but "
                             "the prompt has no 'image'")
        return ids, offsets, None, None
    if len(found) != 1:
        raise InputError(f"{where}: a prompt with an image must hold the placeholder "
                         f"{images.token!r} exactly once in its text; found {len(found)}")
    at, n = found[0], images.n_tokens
    ids = ids[:at] + [images.token_id] * n + ids[at + 1:]
    offsets = offsets[:at] + [offsets[at]] * n + offsets[at + 1:]
    return ids, offsets, np.arange(at, at + n, dtype=np.int64), image_pixels(image, images, where)


@contextmanager
def no_processor_autoload() -> Iterator[None]:
    """Stop ``boot_transformers`` from loading a multimodal model's processor itself.

    TransformerLens 4.3 calls ``AutoProcessor.from_pretrained(model_name)`` for multimodal models
    (retrying the hub for minutes when offline) and, when that fails, runs ``pip install
    torchvision`` in the current environment, which also upgrades torch. The workbench loads the
    image processor itself (``workbench.hf_checkpoints.hf_image_processor``), so the bridge's own load is skipped.
    """
    from transformer_lens.model_bridge.sources.transformers import source

    original = source.load_modality_processor
    source.load_modality_processor = lambda *args, **kwargs: None
    try:
        yield
    finally:
        source.load_modality_processor = original
