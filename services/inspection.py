"""What a payload carries, for people: where its bytes go, the prompt its tokens decode to, and its sketch.

Used by the encoder's ``POST /inspect`` and ``POST /sketch`` (the page it serves at ``/``) and by
``textsketch info --tokens --sketch``. Nothing here runs a model: the prompt text comes from the CLIP
tokenizer (built from package data), the sketch from the sketch decoder, both bounded by the payload
parser's limits and by ``max_working_pixels``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from services.bitstream.container import Mode, Payload, parse
from services.codec import check_working_size
from services.limits import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_WORKING_PIXELS
from services.profiles import get_profile
from services.settings import CodecSettings


class NoSketchError(ValueError):
    """A PIC payload carries no sketch (prompt only)."""


@dataclass(frozen=True)
class PayloadInfo:
    """One payload described: its fields, its byte breakdown, its bpp and its prompt.

    ``bytes == prompt_bytes + sketch_bytes + overhead_bytes``; ``bpp`` is of the declared (original)
    size; ``working_width`` x ``working_height`` is the size the sketch and the diffusion run at.
    """

    version: int
    profile: str
    profile_id: int
    mode: str
    width: int
    height: int
    working_width: int
    working_height: int
    candidate: int
    bytes: int
    prompt_bytes: int
    sketch_bytes: int
    overhead_bytes: int
    bpp: float
    token_ids: tuple[int, ...]
    prompt_text: str

    def to_dict(self) -> dict:
        return {**asdict(self), "token_ids": list(self.token_ids)}


def inspect_payload(data: bytes, settings: CodecSettings | None = None) -> PayloadInfo:
    """Parse ``data`` and describe it; ``BitstreamError`` when it is not a valid payload."""
    from services.bitstream.text_coder import decode_token_ids
    from services.prompt.tokenizer import ids_to_text, load_tokenizer

    payload = parse(data)
    profile = get_profile(payload.profile)
    working_w, working_h = profile.working_size(payload.width, payload.height)
    token_ids = tuple(decode_token_ids(payload.prompt))
    return PayloadInfo(
        version=payload.version,
        profile=profile.name,
        profile_id=int(payload.profile),
        mode=payload.mode.name,
        width=payload.width,
        height=payload.height,
        working_width=working_w,
        working_height=working_h,
        candidate=payload.candidate,
        bytes=len(data),
        prompt_bytes=len(payload.prompt),
        sketch_bytes=len(payload.sketch or b""),
        overhead_bytes=payload.overhead_bytes,
        bpp=round(payload.bpp(len(data)), 6),
        token_ids=token_ids,
        prompt_text=ids_to_text(token_ids, load_tokenizer(settings)),
    )


def payload_sketch(payload: Payload, max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS,
                   max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> np.ndarray:
    """The sketch as the decoder of the payload's profile draws it: a uint8 line map (255 on the lines) at the
    working size. ``NoSketchError`` for a PIC payload, ``BitstreamError`` for a corrupt sketch body or sizes over
    the limits (the decoder's own checks, made before anything is drawn)."""
    from services.sketch.coder import decode_sketch

    if payload.mode != Mode.PICS or payload.sketch is None:
        raise NoSketchError("a PIC payload carries no sketch (prompt only); encode with mode=pics to get one")
    profile = get_profile(payload.profile)
    check_working_size(payload, profile, max_working_pixels, max_output_pixels)
    working_w, working_h = profile.working_size(payload.width, payload.height)
    return decode_sketch(payload.sketch, working_w, working_h, max_working_pixels)


def sketch_png(data: bytes, max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS,
               max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> bytes:
    """The decoded sketch of the payload ``data`` as a grayscale PNG (white lines on black, working size)."""
    lines = payload_sketch(parse(data), max_working_pixels, max_output_pixels)
    buffer = io.BytesIO()
    Image.fromarray(lines, "L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
