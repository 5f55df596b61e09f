"""Encoder service HTTP layer: POST /encode returns the payload bytes (application/msgpack).

CPU work (image decoding, prompt and sketch stages, CLIP scoring) runs in the
thread pool, never on the event loop; at most ``max_concurrent_encodes`` run at
once and at most ``max_waiting_encodes`` wait (then 429). The upload is read
within its byte limit (``encoder_service.uploads``) and its declared size checked
against the limits before any pixel is decoded. Models load in the background
after start-up (``encoder_service.runtime``); until then: 503. Candidate
selection asks the decoder service for candidates 1..N and keeps the closest by
CLIP similarity. The web page at ``/`` with ``POST /inspect`` and ``POST /sketch``
(``encoder_service/page.py``), and ``POST /decode`` and ``POST /candidates`` forwarded to the
decoder (``encoder_service/forward.py``), are installed at the end of ``create_app``.

Run: ``TEXTSKETCH_PROFILE=tiny python -m encoder_service --port 8001`` (the launcher,
``services/serving/server.py``). On SIGTERM the encoder answers new requests 503 ``draining`` and
lets the encodes in flight finish (``drain_timeout_s``) before uvicorn stops
(``services/serving/lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from encoder_service.forward import decoder_unreachable, install_forwarding
from encoder_service.page import install_page
from encoder_service.runtime import EncoderRuntime, set_torch_threads, warm_up
from encoder_service.selection import CandidateScorer, load_scorer, unpack_candidates
from encoder_service.settings import EncoderSettings
from encoder_service.uploads import read_upload
from services.bitstream.container import MAX_CANDIDATE, Payload
from services.codec import image_working_size
from services.errors import CodecError, ModelUnavailableError
from services.imaging import load_image_for_coding
from services.serving.errors import InvalidRequestError, QueueFullError, UpstreamError
from services.serving.http import install_error_handlers, require_token
from services.serving.lifecycle import install_sigterm_drain
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
    413: {"description": "Upload larger than the byte limit, or an image whose declared size is over the pixel "
                 "or working-size limit (checked before decoding)."},
    415: {"description": "Not an image type the encoder reads."},
    422: {"description": "Corrupt image or an option out of range."},
    429: {"description": "Too many encodes waiting; retry after Retry-After seconds."},
    502: {"description": "Candidate selection: the decoder answered with an error."},
    503: {"description": "Models still loading or failed to load (not_ready, Retry-After); shutting down "
                 "(draining); candidate selection without candidate_fallback: the decoder is unreachable "
                 "(upstream_unavailable) or the selection CLIP cannot be loaded (model_unavailable)."},
}


class _Limiter:
    """At most ``running`` encodes at once, at most ``waiting`` queued behind them (then 429)."""

    def __init__(self, running: int, waiting: int, retry_after_s: float, metrics: ServiceMetrics) -> None:
        self._semaphore = asyncio.Semaphore(running)
        self._capacity = running + waiting
        self._inside = 0
        self._retry_after_s = retry_after_s
        self._metrics = metrics

    def check_capacity(self) -> None:
        """429 before an upload is read when the limiter is already full."""
        if self._inside >= self._capacity:
            self._metrics.rejected("queue_full")
            raise QueueFullError("too many encodes in progress; retry after the Retry-After delay",
                                 retry_after_s=self._retry_after_s)

    @contextlib.asynccontextmanager
    async def slot(self, admitted: bool = False):
        """A running slot. ``admitted``: the request already passed this limiter once (it comes back with
        the decoder's candidates to score), so it waits for a slot instead of getting a 429."""
        if not admitted:
            self.check_capacity()
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
    concurrent_encodes, torch_threads = settings.encode_concurrency()
    limiter = _Limiter(concurrent_encodes, settings.max_waiting_encodes, settings.retry_after_s, metrics)
    runtime = EncoderRuntime(metrics, (lambda: warm_up(settings)) if settings.warmup else None)
    working_size = image_working_size(settings.codec)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        headers = {"Authorization": f"Bearer {settings.decoder_token.get_secret_value()}"} if settings.decoder_token else {}
        app.state.decoder = httpx.AsyncClient(
            timeout=settings.decoder_timeout_s, headers=headers, transport=http_transport)
        set_torch_threads(torch_threads)
        log.info("encoder: %d encodes at once, %d torch threads each", concurrent_encodes, torch_threads)
        await runtime.startup()
        restore = (install_sigterm_drain(runtime.begin_drain, lambda: runtime.drain(settings.drain_timeout_s))
                   if settings.handle_sigterm else None)
        try:
            yield
        finally:
            if restore is not None:
                restore()
            await runtime.shutdown()
            await app.state.decoder.aclose()

    app = FastAPI(title="textsketch encoder", version="1", lifespan=lifespan,
                  description="Codes images as a short CLIP-token prompt plus a tiny coded sketch.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
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
        require_token(request, settings.auth_token, metrics.rejected)
        runtime.check_accepting()
        if candidates and (candidates & (candidates - 1) or candidates > settings.max_candidates):
            raise InvalidRequestError(f"candidates must be a power of two up to {settings.max_candidates}, got {candidates}")
        limiter.check_capacity()  # before reading the upload
        async with runtime.request():
            return await _handle_encode(request, candidates, candidate_fallback, {
                "mode": mode, "prompt_source": prompt_source, "text": text, "quality": quality,
                "target_bytes": target_bytes})

    async def _handle_encode(request: Request, candidates: int, candidate_fallback: bool | None,
                             options: dict) -> Response:
        max_bytes, max_pixels = settings.upload_limits()
        upload = await read_upload(request, max_bytes, metrics)
        async with limiter.slot():
            with metrics.stage("decode_image"):
                loaded = await run_in_threadpool(load_image_for_coding, upload, max_bytes=max_bytes,
                                                 max_pixels=max_pixels, working_size=working_size)
            with metrics.stage("encode"), _watch_disconnect(request, metrics) as gone:
                result = await run_in_threadpool(_encode, loaded.image, settings, options, loaded.size, gone.is_set)
            metrics.observe_stages(result.stage_seconds)
        payload: Payload = result.payload
        selection_note = "off"
        if candidates:
            fallback = settings.candidate_fallback if candidate_fallback is None else candidate_fallback
            with metrics.stage("candidate_selection"):
                payload, selection_note = await _select(app, settings, limiter, metrics, loaded.image, payload,
                                                        candidates, fallback)
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

    @app.get("/health/live", summary="Liveness: the process runs (fails only when loading the models failed)")
    async def live() -> JSONResponse:
        failed = runtime.load_error is not None
        return JSONResponse({"status": "failed" if failed else "alive", "detail": runtime.load_error},
                            status_code=503 if failed else 200)

    @app.get("/health/ready", summary="Readiness: models loaded (warm-up encode done), not draining")
    async def ready() -> JSONResponse:
        ok = runtime.ready
        return JSONResponse({"status": runtime.state.value, "detail": runtime.load_error},
                            status_code=200 if ok else 503, headers={} if ok else {"Retry-After": "5"})

    add_metrics_route(app, metrics)
    install_page(app, settings, metrics, runtime, limiter)  # GET /, POST /inspect, POST /sketch
    install_forwarding(app, settings, metrics, runtime)  # POST /decode, POST /candidates -> the decoder

    return app


@contextlib.contextmanager
def _watch_disconnect(request: Request, metrics: ServiceMetrics, poll_s: float = 0.25):
    """A ``threading.Event`` set when the client goes away, for stages that can stop (PEZ)."""
    gone = threading.Event()

    async def watch() -> None:
        while not gone.is_set():
            if await request.is_disconnected():
                gone.set()
                metrics.rejected("cancelled")
                return
            await asyncio.sleep(poll_s)

    task = asyncio.get_running_loop().create_task(watch())
    try:
        yield gone
    finally:
        task.cancel()


def _encode(image, settings: EncoderSettings, options: dict, original_size: tuple[int, int],
            should_stop: Callable[[], bool] | None = None):
    from services.codec import EncodeOptions, encode_image, parse_mode

    try:
        return encode_image(image, settings.codec, EncodeOptions(
            mode=parse_mode(options["mode"]), prompt_source=options["prompt_source"], text=options["text"],
            quality=options["quality"], target_bytes=options["target_bytes"], should_stop=should_stop),
            original_size)
    except ValueError as exc:
        if isinstance(exc, CodecError):
            raise
        raise InvalidRequestError(str(exc)) from None


async def _select(app, settings: EncoderSettings, limiter: _Limiter, metrics: ServiceMetrics, image,
                  payload: Payload, n: int, fallback: bool) -> tuple[Payload, str]:
    """Ask the decoder for candidates 1..n, keep the closest; on failure fall back or raise.

    The scorer is loaded first, so an unavailable scorer never costs the decoder a rendering; loading
    and scoring take a slot of the encoder's limiter like every other CPU (or GPU) step.
    """
    try:
        if not settings.decoder_url:
            raise UpstreamError("candidate selection needs TEXTSKETCH_ENCODER_DECODER_URL (the decoder service)",
                                status=503)
        async with limiter.slot(admitted=True):
            scorer: CandidateScorer = await run_in_threadpool(
                load_scorer, settings.clip_model(), settings.codec.device, settings.selection_clip_revision,
                settings.codec.cache_dir)
        images = await _render_candidates(app, settings, payload, n)
        async with limiter.slot(admitted=True):
            selection = await run_in_threadpool(scorer.select, image, images)
    except (UpstreamError, ModelUnavailableError) as exc:
        metrics.rejected("upstream" if isinstance(exc, UpstreamError) else "model_unavailable")
        if not fallback:
            raise
        log.warning("candidate selection skipped (fallback): %s", exc)
        return payload.with_candidate(0), "fallback"
    return payload.with_candidate(selection.index), f"selected {selection.index} of {n}"


async def _render_candidates(app, settings: EncoderSettings, payload: Payload, n: int) -> list:
    """The decoder's renderings of candidates 1..n of ``payload``; ``UpstreamError`` when it fails."""
    try:
        response = await app.state.decoder.post(
            f"{settings.decoder_url.rstrip('/')}/candidates", params={"n": n, "format": "png"},
            content=payload.with_candidate(0).to_bytes(), headers={"Content-Type": "application/msgpack"})
    except httpx.HTTPError as exc:
        raise decoder_unreachable(exc, settings) from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text[:200]
        busy = response.status_code in (429, 503)
        raise UpstreamError(f"the decoder answered {response.status_code} to /candidates: {detail}",
                            status=503 if busy else 502, retry_after_s=5 if busy else None)
    return unpack_candidates(response.content, n)


def __getattr__(name: str):
    """``encoder_service.app:app`` for uvicorn: built from the environment on first access."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
