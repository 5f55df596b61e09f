"""Caption prompt source: an image-to-text model (BLIP by default), greedy decoding.

The caption is plain text; ``services.prompt.sources`` tokenises it with the CLIP
tokenizer. The model id ``tiny`` builds a random BLIP in the cache folder
(``services.tiny.encoders``) for tests and the offline demo.
"""

from __future__ import annotations

import functools

from PIL import Image

from services.devices import resolve_device
from services.errors import ModelUnavailableError
from services.settings import CodecSettings
from services.tiny.encoders import resolve_model_id

CAPTION_MAX_NEW_TOKENS = 40


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


def caption_text(image: Image.Image, settings: CodecSettings) -> str:
    """The caption model's text for ``image``."""
    model_id = resolve_model_id(settings.caption_model, "caption", settings.cache_dir)
    return _captioner(model_id, resolve_device(settings.device), settings.caption_revision).caption(image)
