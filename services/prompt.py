"""Prompt stage: an image (or a client's text) -> CLIP token ids.

Three sources, chosen per request or by ``settings.prompt_source``:

- ``pez``: hard-prompt inversion against a CLIP model (``services.pez``);
- ``caption``: a transformers image-to-text model, greedy decoding, its text
  tokenised with the CLIP tokenizer (the fast default for a CPU encoder);
- ``given``: the client's text, tokenised.

Every source returns at most ``MAX_PROMPT_TOKENS`` ids without BOS/EOS; the
text coder codes exactly these ids and the decoder conditions on exactly them.
Models load on first use and stay cached per (model, device).
"""

from __future__ import annotations

import enum
import functools

from PIL import Image

from services.errors import ModelUnavailableError
from services.settings import CodecSettings
from services.tiny_encoders import resolve_model_id
from services.tokenizer import MAX_PROMPT_TOKENS, load_tokenizer, text_to_ids

CAPTION_MAX_NEW_TOKENS = 40


class PromptSource(str, enum.Enum):
    PEZ = "pez"
    CAPTION = "caption"
    GIVEN = "given"


def parse_source(source: PromptSource | str) -> PromptSource:
    try:
        return PromptSource(source)
    except ValueError:
        known = ", ".join(s.value for s in PromptSource)
        raise ValueError(f"unknown prompt source {source!r}; use one of: {known}") from None


class Captioner:
    """An image-to-text model (BLIP by default) with its processor, greedy decoding."""

    def __init__(self, model_id: str, device, revision: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
            self.model = AutoModelForImageTextToText.from_pretrained(model_id, revision=revision).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"cannot load the caption model {model_id!r}: {exc}. Set TEXTSKETCH_CAPTION_MODEL to a local "
                "folder holding an image-to-text model and its processor, or allow hub access."
            ) from exc
        self.device = device

    def caption(self, image: Image.Image) -> str:
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=CAPTION_MAX_NEW_TOKENS)
        return self.processor.decode(out[0], skip_special_tokens=True).strip()


@functools.lru_cache(maxsize=2)
def _captioner(model_id: str, device: str, revision: str | None = None) -> Captioner:
    return Captioner(model_id, device, revision)


@functools.lru_cache(maxsize=2)
def _pez_inverter(model_id: str, device: str, revision: str | None = None):
    import torch

    from services.pez import PezInverter

    return PezInverter(model_id, torch.device(device), revision)


def _device(settings: CodecSettings) -> str:
    from services.pez import resolve_device

    return str(resolve_device(settings.device))


def caption_text(image: Image.Image, settings: CodecSettings) -> str:
    """The caption model's text for ``image``."""
    model_id = resolve_model_id(settings.caption_model, "caption", settings.cache_dir)
    return _captioner(model_id, _device(settings), settings.caption_revision).caption(image)


def pez_ids(image: Image.Image, settings: CodecSettings) -> list[int]:
    """PEZ token ids for ``image`` (``settings.pez_tokens`` of them)."""
    from services.pez import PezConfig

    model_id = resolve_model_id(settings.clip_model, "clip", settings.cache_dir)
    inverter = _pez_inverter(model_id, _device(settings), settings.clip_revision)
    return list(inverter.invert(image, PezConfig.from_settings(settings)).ids)[:MAX_PROMPT_TOKENS]


def make_prompt_ids(
    image: Image.Image | None,
    source: PromptSource | str,
    settings: CodecSettings,
    text: str | None = None,
) -> list[int]:
    """CLIP token ids (no BOS/EOS, at most ``MAX_PROMPT_TOKENS``) describing ``image``.

    ``text`` is required for ``given`` and ignored otherwise.
    """
    source = parse_source(source)
    if source is PromptSource.GIVEN:
        if text is None:
            raise ValueError("prompt source 'given' needs the prompt text; pass text=... (or the form field 'text')")
        return text_to_ids(text, load_tokenizer(settings))
    if image is None:
        raise ValueError(f"prompt source {source.value!r} needs an image")
    if source is PromptSource.CAPTION:
        return text_to_ids(caption_text(image, settings), load_tokenizer(settings))
    return pez_ids(image, settings)
