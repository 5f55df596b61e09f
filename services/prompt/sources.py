"""Prompt stage: an image (or a client's text) -> CLIP token ids.

Three sources, chosen per request or by ``settings.prompt_source``:

- ``pez``: hard-prompt inversion against a CLIP model (``services.prompt.pez``);
- ``caption``: a transformers image-to-text model (``services.prompt.caption``), its
  text tokenised with the CLIP tokenizer (the fast default for a CPU encoder);
- ``given``: the client's text, tokenised.

Every source returns at most ``MAX_PROMPT_TOKENS`` ids without BOS/EOS; the
text coder codes exactly these ids and the decoder conditions on exactly them.
Models load on first use and stay cached per (model, device).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable

from PIL import Image

from services.bitstream.vocabulary import MAX_PROMPT_TOKENS
from services.devices import resolve_device
from services.prompt.caption import caption_text
from services.prompt.tokenizer import load_tokenizer, text_to_ids
from services.settings import CodecSettings, parse_choice
from services.tiny.encoders import resolve_model_id


class PromptSource(str, enum.Enum):
    PEZ = "pez"
    CAPTION = "caption"
    GIVEN = "given"


def parse_source(source: PromptSource | str) -> PromptSource:
    return parse_choice(PromptSource, source, "prompt source")


@functools.lru_cache(maxsize=2)
def _pez_inverter(model_id: str, device: str, revision: str | None = None):
    import torch

    from services.prompt.pez import PezInverter

    return PezInverter(model_id, torch.device(device), revision)


def pez_ids(image: Image.Image, settings: CodecSettings, should_stop: Callable[[], bool] | None = None) -> list[int]:
    """PEZ token ids for ``image`` (``settings.pez_tokens`` of them); ``should_stop`` as in ``PezInverter.invert``."""
    from services.prompt.pez import PezConfig

    model_id = resolve_model_id(settings.clip_model, "clip", settings.cache_dir)
    inverter = _pez_inverter(model_id, resolve_device(settings.device), settings.clip_revision)
    return list(inverter.invert(image, PezConfig.from_settings(settings), should_stop).ids)[:MAX_PROMPT_TOKENS]


def make_prompt_ids(
    image: Image.Image | None,
    source: PromptSource | str,
    settings: CodecSettings,
    text: str | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[int]:
    """CLIP token ids (no BOS/EOS, at most ``MAX_PROMPT_TOKENS``) describing ``image``.

    ``text`` is required for ``given`` and ignored otherwise. ``should_stop`` lets a long source
    (PEZ) stop when its caller no longer wants the answer (``EncodeCancelledError``).
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
    return pez_ids(image, settings, should_stop)
