"""Encoder service HTTP layer: POST /encode returns the payload bytes (application/msgpack).

CPU work (image decoding, prompt and sketch stages) runs in the thread pool,
never on the event loop; at most ``max_concurrent_encodes`` run at once and at
most ``max_waiting_encodes`` wait (then 429). Candidate selection asks the
decoder service for candidates 1..N and keeps the closest by CLIP similarity.

Run: ``TEXTSKETCH_PROFILE=tiny python -m uvicorn --factory encoder_service.app:create_app --port 8000``
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from encoder_service.selection import get_scorer, unpack_candidates
from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_CANDIDATE, Payload
from services.errors import CodecError, ImageTooLargeError, UnsupportedMediaError
from services.imaging import ACCEPTED_CONTENT_TYPES, load_image
from services.serving.errors import (
    DrainingError,
    InvalidRequestError,
    NotReadyError,
    QueueFullError,
    UnauthorizedError,
    UpstreamError,
)
from services.serving.http import bearer_token_ok, install_error_handlers, read_body
from services.serving.metrics import ServiceMetrics, add_metrics_route, install_request_metrics

log = logging.getLogger("textsketch.encoder")

_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "The image: either the raw file with its image content type, or multipart/form-data "
        "with the file in the field `image`.",
        "content": {
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in ("image/png", "image/jpeg", "image/webp")},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}},
                           "required": ["image"]}
            },
        },
    }
}
_PAYLOAD_RESPONSES = {
    200: {
        "description": "The payload (bitstream v2). Headers: X-Payload-Bytes, X-Bpp, X-Prompt-Bytes, "
        "X-Sketch-Bytes, X-Candidate, X-Candidate-Selection.",
        "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
    },
    413: {"description": "Upload larger than the byte or pixel limit."},
    415: {"description": "Not an image type the encoder reads."},
    422: {"description": "Corrupt image or an option out of range."},
    429: {"description": "Too many encodes waiting; retry after Retry-After seconds."},
    502: {"description": "Candidate selection: the decoder answered with an error."},
    503: {"description": "Candidate selection: the decoder is unreachable (without candidate_fallback)."},
}


class _Limiter:
    """At most ``running`` encodes at once, at most ``waiting`` queued behind them (then 429)."""

    def __init__(self, running: int, waiting: int, retry_after_s: float, metrics: ServiceMetrics) -> None:
        self._semaphore = asyncio.Semaphore(running)
        self._capacity = running + waiting
        self._inside = 0
        self._retry_after_s = retry_after_s
        self._metrics = metrics

    @contextlib.asynccontextmanager
    async def slot(self):
        if self._inside >= self._capacity:
            self._metrics.rejected("queue_full")
            raise QueueFullError("too many encodes in progress; retry after the Retry-After delay",
                                 retry_after_s=self._retry_after_s)
        self._inside += 1
        self._metrics.queue_size(self._inside)
        try:
            async with self._semaphore:
                yield
        finally:
            self._inside -= 1
            self._metrics.queue_size(self._inside)


def create_app(settings: EncoderSettings | None = None, http_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build the encoder app. ``http_transport`` replaces the network for calls to the decoder (tests)."""
    settings = settings or EncoderSettings()
    metrics = ServiceMetrics("encoder")
    limiter = _Limiter(settings.max_concurrent_encodes, settings.max_waiting_encodes, settings.retry_after_s, metrics)
    state = {"ready": False, "draining": False}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        headers = {"Authorization": f"Bearer {settings.decoder_token.get_secret_value()}"} if settings.decoder_token else {}
        app.state.decoder = httpx.AsyncClient(
            timeout=settings.decoder_timeout_s, headers=headers, transport=http_transport)
        if settings.warmup:
            await run_in_threadpool(_warm_up, settings)
        state["ready"] = True
        metrics.set_ready(True)
        try:
            yield
        finally:
            state["ready"], state["draining"] = False, True
            metrics.set_ready(False)
            await app.state.decoder.aclose()

    app = FastAPI(title="textsketch encoder", version="1", lifespan=lifespan,
                  description="Codes images as a short CLIP-token prompt plus a tiny coded sketch.")
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    install_request_metrics(app, metrics)

    @app.post("/encode", response_class=Response, openapi_extra=_IMAGE_BODY, responses=_PAYLOAD_RESPONSES,
              summary="Encode an image into a payload")
    async def encode(
        request: Request,
        mode: str = Query("pics", pattern="^(?i:pic|pics)$", description="pic (prompt only) or pics (prompt + sketch)."),
        prompt_source: str | None = Query(None, pattern="^(pez|caption|given)$", description="Default: the codec setting."),
        text: str | None = Query(None, max_length=2000, description="The prompt text for prompt_source=given."),
        quality: int | None = Query(None, ge=0, le=64, description="Sketch quality level."),
        target_bytes: int | None = Query(None, ge=1, le=65535, description="Sketch byte budget (overrides quality)."),
        candidates: int = Query(0, ge=0, le=MAX_CANDIDATE, description="N candidates to choose from (power of two); 0 = off."),
        candidate_fallback: bool | None = Query(None, description="Encode without selection when the decoder is unreachable."),
    ) -> Response:
        if not bearer_token_ok(request.headers.get("authorization"), settings.auth_token):
            metrics.rejected("unauthorized")
            raise UnauthorizedError("missing or wrong bearer token; send Authorization: Bearer <token>")
        if state["draining"]:
            metrics.rejected("draining")
            raise DrainingError("the encoder is shutting down", retry_after_s=5)
        if not state["ready"]:
            metrics.rejected("not_ready")
            raise NotReadyError("the encoder is still starting", retry_after_s=5)
        if candidates and (candidates & (candidates - 1) or candidates > settings.max_candidates):
            raise InvalidRequestError(f"candidates must be a power of two up to {settings.max_candidates}, got {candidates}")
        max_bytes, max_pixels = settings.upload_limits()
        upload = await _read_upload(request, max_bytes, metrics)
        options = {"mode": mode, "prompt_source": prompt_source, "text": text, "quality": quality,
                   "target_bytes": target_bytes}
        async with limiter.slot():
            with metrics.stage("decode_image"):
                image = await run_in_threadpool(load_image, upload, max_bytes=max_bytes, max_pixels=max_pixels)
            with metrics.stage("encode"):
                result = await run_in_threadpool(_encode, image, settings, options)
        payload: Payload = result.payload
        selection_note = "off"
        if candidates:
            fallback = settings.candidate_fallback if candidate_fallback is None else candidate_fallback
            with metrics.stage("candidate_selection"):
                payload, selection_note = await _select(app, settings, metrics, image, payload, candidates, fallback)
        data = payload.to_bytes()
        headers = {
            "X-Payload-Bytes": str(len(data)),
            "X-Bpp": f"{payload.bpp(len(data)):.6f}",
            "X-Prompt-Bytes": str(len(payload.prompt)),
            "X-Sketch-Bytes": str(len(payload.sketch or b"")),
            "X-Candidate": str(payload.candidate),
            "X-Candidate-Selection": selection_note,
        }
        return Response(data, media_type="application/msgpack", headers=headers)

    @app.get("/health/live", summary="Liveness")
    async def live() -> JSONResponse:
        return JSONResponse({"status": "alive"})

    @app.get("/health/ready", summary="Readiness: started (and warmed up when configured), not draining")
    async def ready() -> JSONResponse:
        ok = state["ready"] and not state["draining"]
        return JSONResponse({"status": "ready" if ok else ("draining" if state["draining"] else "loading")},
                            status_code=200 if ok else 503, headers={} if ok else {"Retry-After": "5"})

    add_metrics_route(app, metrics)

    return app


async def _read_upload(request: Request, max_bytes: int, metrics: ServiceMetrics) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    slack = 64 * 1024 if content_type == "multipart/form-data" else 0
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + slack:
        metrics.rejected("too_large")
        raise ImageTooLargeError(f"upload is {declared} bytes; the limit is {max_bytes}")
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=8)
        field = form.get("image")
        if field is None or isinstance(field, str):
            raise InvalidRequestError("multipart upload needs the image file in the form field `image`")
        data = await field.read()
    elif content_type in ACCEPTED_CONTENT_TYPES or content_type.startswith("image/"):
        try:
            data = await read_body(request, max_bytes, too_large=ImageTooLargeError)
        except ImageTooLargeError:
            metrics.rejected("too_large")
            raise
    else:
        raise UnsupportedMediaError(
            f"send the image as its own content type (image/png, image/jpeg, ...) or multipart/form-data, "
            f"not {content_type or 'no content type'}")
    if len(data) > max_bytes:
        metrics.rejected("too_large")
        raise ImageTooLargeError(f"upload is {len(data)} bytes; the limit is {max_bytes}")
    return data


def _encode(image, settings: EncoderSettings, options: dict):
    from services.codec import EncodeOptions, encode_image, parse_mode

    try:
        return encode_image(image, settings.codec, EncodeOptions(
            mode=parse_mode(options["mode"]), prompt_source=options["prompt_source"], text=options["text"],
            quality=options["quality"], target_bytes=options["target_bytes"]))
    except ValueError as exc:
        if isinstance(exc, CodecError):
            raise
        raise InvalidRequestError(str(exc)) from None


def _warm_up(settings: EncoderSettings) -> None:
    from PIL import Image

    _encode(Image.new("RGB", (96, 64), (128, 96, 64)), settings,
            {"mode": "pics", "prompt_source": None, "text": "warm up", "quality": None, "target_bytes": None})


async def _select(app, settings: EncoderSettings, metrics: ServiceMetrics, image, payload: Payload, n: int,
                  fallback: bool) -> tuple[Payload, str]:
    """Ask the decoder for candidates 1..n, keep the closest; on failure fall back or raise."""
    try:
        if not settings.decoder_url:
            raise UpstreamError("candidate selection needs TEXTSKETCH_ENCODER_DECODER_URL (the decoder service)",
                                status=503)
        try:
            response = await app.state.decoder.post(
                f"{settings.decoder_url.rstrip('/')}/candidates", params={"n": n, "format": "png"},
                content=payload.with_candidate(0).to_bytes(), headers={"Content-Type": "application/msgpack"})
        except httpx.TimeoutException as exc:
            raise UpstreamError(f"the decoder at {settings.decoder_url} timed out rendering candidates ({exc!r})",
                                status=504) from None
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the decoder at {settings.decoder_url} is unreachable ({exc!r})", status=503,
                                retry_after_s=5) from None
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text[:200]
            busy = response.status_code in (429, 503)
            raise UpstreamError(f"the decoder answered {response.status_code} to /candidates: {detail}",
                                status=503 if busy else 502, retry_after_s=5 if busy else None)
        images = unpack_candidates(response.content, n)
        scorer = get_scorer(settings.clip_model(), settings.codec.device, settings.selection_clip_revision)
        selection = await run_in_threadpool(scorer.select, image, images)
    except UpstreamError as exc:
        metrics.rejected("upstream")
        if not fallback:
            raise
        log.warning("candidate selection skipped (fallback): %s", exc)
        return payload.with_candidate(0), "fallback"
    return payload.with_candidate(selection.index), f"selected {selection.index} of {n}"


def __getattr__(name: str):
    """``encoder_service.app:app`` for uvicorn: built from the environment on first access."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
