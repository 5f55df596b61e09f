"""The codec in-process: image -> payload (encode) and payload -> image (decode).

This module only wires the stages together, in the order of the flow:

- ``services.prompt``: what is in the scene (token ids), coded by ``services.bitstream.text_coder``;
- ``services.sketch``: where things are (edge map -> sketch body -> control image);
- ``services.bitstream.container``: the payload that carries both;
- ``services.reconstruction``: decode jobs and the diffusion decoder.

Model-running stages are imported lazily so ``textsketch info`` and the bitstream
work without loading torch.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from services.bitstream.container import Mode, Payload, derive_seed, parse
from services.errors import BitstreamError, ImageTooLargeError
from services.imaging import resize
from services.limits import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_WORKING_PIXELS, fit_within
from services.profiles import ModelProfile, check_served
from services.reconstruction.jobs import DecodeJob
from services.settings import CodecSettings

if TYPE_CHECKING:
    from services.reconstruction.reconstructor import Reconstructor


def check_working_dimensions(profile: ModelProfile, width: int, height: int, max_working_pixels: int,
                             error: type[Exception] = BitstreamError, what: str = "payload") -> tuple[int, int]:
    """The working size of a ``width`` x ``height`` original, or ``error`` when it is over the limit.

    Every side may be legal on its own while an extreme aspect ratio (16384x1) scales to a
    multi-gigapixel working size; this runs before anything is allocated at that size.
    """
    working_w, working_h = profile.working_size(width, height)
    if working_w * working_h > max_working_pixels:
        raise error(
            f"{what} {width}x{height} needs a {working_w}x{working_h} working size, over the "
            f"{max_working_pixels}-pixel limit (max_working_pixels); use a less extreme aspect ratio")
    return working_w, working_h


def image_working_size(settings: CodecSettings) -> Callable[[int, int], tuple[int, int]]:
    """``working_size`` for ``services.imaging.load_image``: an image's working size under ``settings``,
    or ``ImageTooLargeError`` (413) when it is over ``max_working_pixels``, checked from the file's header."""
    return functools.partial(check_working_dimensions, settings.model_profile(),
                             max_working_pixels=settings.max_working_pixels, error=ImageTooLargeError, what="image")


def check_working_size(payload: Payload, profile: ModelProfile, max_working_pixels: int,
                       max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> None:
    """Refuse payloads whose working or output size is over the limits (``BitstreamError``, 422)."""
    if payload.width * payload.height > max_output_pixels:
        raise BitstreamError(
            f"invalid payload: it declares a {payload.width}x{payload.height} output, over this decoder's "
            f"{max_output_pixels}-pixel limit (max_output_pixels)")
    check_working_dimensions(profile, payload.width, payload.height, max_working_pixels,
                             what="invalid payload: the declared size")


@dataclass(frozen=True)
class EncodeOptions:
    """Per-request encoder choices; ``None`` means the settings' default."""

    mode: Mode = Mode.PICS
    prompt_source: str | None = None
    text: str | None = None
    quality: int | None = None
    target_bytes: int | None = None
    # Asked during long stages (PEZ): True stops the encode with EncodeCancelledError (the client left).
    should_stop: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EncodeResult:
    """A coded image and what went into it (for logs, headers and evaluation)."""

    payload: Payload
    data: bytes
    prompt_ids: tuple[int, ...]
    sketch: np.ndarray | None  # decoded sketch as the decoder will see it (PICS)
    # Wall seconds per encoder stage: resize, prompt, edges and sketch (PICS: lossy stage + coding + check decode).
    stage_seconds: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def n_bytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return self.payload.bpp(len(self.data))


def parse_mode(value: str | int | Mode) -> Mode:
    """``"pic"``/``"pics"`` (any case), ``0``/``1`` or a ``Mode``."""
    if isinstance(value, Mode):
        return value
    if isinstance(value, int):
        return Mode(value)
    try:
        return Mode[str(value).strip().upper()]
    except KeyError:
        raise ValueError(f"unknown mode {value!r}; use pic (prompt only) or pics (prompt + sketch)") from None


def encode_image(image: Image.Image, settings: CodecSettings, options: EncodeOptions = EncodeOptions(),
                 original_size: tuple[int, int] | None = None) -> EncodeResult:
    """Code an RGB image as a payload under the configured profile.

    ``original_size`` is the original's size when ``image`` was decoded at a reduced scale
    (``services.imaging.load_image_for_coding``); the payload declares it, the working size follows from it.
    """
    from services.bitstream.text_coder import encode_token_ids
    from services.prompt.sources import make_prompt_ids
    from services.sketch.coder import decode_sketch, encode_sketch
    from services.sketch.edges import edge_map

    profile = settings.model_profile()
    stages = _StageClock()
    image = image.convert("RGB")
    width, height = original_size or image.size
    working_w, working_h = check_working_dimensions(
        profile, width, height, settings.max_working_pixels, ImageTooLargeError, "image")
    with stages("resize"):
        working = resize(image, working_w, working_h)
    # The payload never declares more than max_output_pixels: larger originals are coded as if downscaled.
    out_w, out_h = fit_within(width, height, settings.max_output_pixels)

    source = options.prompt_source or settings.prompt_source
    with stages("prompt"):
        prompt_ids = tuple(make_prompt_ids(working, source, settings, text=options.text,
                                           should_stop=options.should_stop))
        prompt_body = encode_token_ids(prompt_ids)

    sketch_body: bytes | None = None
    sketch: np.ndarray | None = None
    if options.mode == Mode.PICS:
        with stages("edges"):
            edges = edge_map(working, profile.sketch_kind, settings)
        quality = settings.sketch_quality if options.quality is None else options.quality
        target = options.target_bytes if options.target_bytes is not None else settings.sketch_target_bytes
        with stages("sketch"):
            sketch_body = encode_sketch(edges, profile.sketch_kind, quality=quality, target_bytes=target)
            sketch = decode_sketch(sketch_body, working_w, working_h, settings.max_working_pixels)

    payload = Payload(
        profile=int(profile.id),
        width=out_w,
        height=out_h,
        mode=options.mode,
        prompt=prompt_body,
        sketch=sketch_body,
    )
    return EncodeResult(payload=payload, data=payload.to_bytes(), prompt_ids=prompt_ids, sketch=sketch,
                        stage_seconds=stages.seconds)


class _StageClock:
    """``with clock("name"):`` adds the block's wall time to ``clock.seconds["name"]``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def payload_to_job(
    payload: Payload,
    profile: ModelProfile,
    candidate: int | None = None,
    max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> DecodeJob:
    """Everything the diffusion stage needs for one payload, checked and decoded.

    ``candidate`` overrides the payload's own candidate index (candidate rendering).
    Raises ``ProfileMismatchError`` for another profile and ``BitstreamError`` for
    corrupt bodies.
    """
    from services.bitstream.text_coder import decode_token_ids
    from services.sketch.coder import decode_sketch
    from services.sketch.render import control_image

    check_served(payload.profile, profile)
    check_working_size(payload, profile, max_working_pixels, max_output_pixels)
    working_w, working_h = profile.working_size(payload.width, payload.height)
    token_ids = tuple(decode_token_ids(payload.prompt))
    control = None
    if payload.mode == Mode.PICS:
        sketch = decode_sketch(payload.sketch, working_w, working_h, max_working_pixels)
        control = control_image(sketch, profile.sketch_kind)
    return DecodeJob(
        token_ids=token_ids,
        control=control,
        seed=derive_seed(payload, candidate),
        width=payload.width,
        height=payload.height,
        working_width=working_w,
        working_height=working_h,
        mode=payload.mode,
        steps=profile.steps,
        guidance=profile.guidance,
    )


def decode_payload(data: bytes, reconstructor: Reconstructor) -> Image.Image:
    """Parse, check and regenerate one payload (batch of one)."""
    job = payload_to_job(parse(data), reconstructor.profile)
    return reconstructor.decode_batch([job])[0]


def candidate_jobs(
    payload: Payload,
    profile: ModelProfile,
    indices: Sequence[int],
    max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS,
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS,
) -> list[DecodeJob]:
    """The jobs for the given candidate indices of a payload (the published selection trick).

    The prompt and sketch are decoded once; the jobs differ only in their seed, which
    is the one the payload sent later with ``candidate=k`` derives.
    """
    from dataclasses import replace

    job = payload_to_job(payload, profile, max_working_pixels=max_working_pixels, max_output_pixels=max_output_pixels)
    return [replace(job, seed=derive_seed(payload, k)) for k in indices]
