"""Decoder service HTTP layer: thin routes over ``DecoderRuntime`` (model + scheduler).

Run (settings from the environment, see docs/services.md):

    TEXTSKETCH_PROFILE=tiny python -m decoder_service --port 8002

(the launcher, ``services/serving/server.py``: uvicorn with the connection limits and a graceful
timeout above ``drain_timeout_s``). ``decoder_service.app:app`` works for a plain uvicorn too: it
builds the app from the environment when uvicorn looks the name up, never at import.
"""

from __future__ import annotations

import contextlib
import logging

import msgpack
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from decoder_service.runtime import DecoderRuntime, ReconstructorFactory, State, default_reconstructor
from decoder_service.settings import DecoderSettings
from services.bitstream.container import MAX_CANDIDATE, parse
from services.serving.errors import InvalidRequestError, NotAcceptableError
from services.serving.http import PAYLOAD_BODY, install_error_handlers, read_payload_body, require_token
from services.serving.lifecycle import install_sigterm_drain
from services.serving.metrics import ServiceMetrics, add_metrics_route, install_request_metrics

log = logging.getLogger("textsketch.decoder")

IMAGE_TYPES = {"image/png": "png", "image/webp": "webp", "image/jpeg": "jpeg"}

_IMAGE_RESPONSES = {
    200: {
        "description": "The reconstructed image at the original size; PNG unless Accept asks for WebP or JPEG.",
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
    },
    406: {"description": "Accept names no image format this service writes."},
    409: {"description": "The payload was encoded for another model profile."},
    422: {"description": "Malformed payload; detail has the bitstream's error message."},
    413: {"description": "Body larger than max_body_bytes, or the request costs more than max_request_cost."},
    429: {"description": "Queue full, or the estimated wait exceeds the deadline; retry after Retry-After seconds "
          "(computed from the measured throughput)."},
    503: {"description": "Loading or draining; retry after Retry-After seconds."},
    504: {"description": "The request's deadline passed while it was queued."},
}
_CANDIDATE_RESPONSES = {
    200: {
        "description": "msgpack map {indices: [1..N], format: 'png'|'webp'|'jpeg', images: [bytes, ...]}.",
        "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
    },
    **{k: v for k, v in _IMAGE_RESPONSES.items() if k != 200},
}


def negotiate_image_format(accept: str | None) -> str:
    """Pick png / webp / jpeg from an Accept header (PNG for none, */* or image/*)."""
    if not accept:
        return "png"
    offers: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        q = 1.0
        for param in fields[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if q > 0:
            offers.append((-q, position, media))
    for _, _, media in sorted(offers):
        if media in IMAGE_TYPES:
            return IMAGE_TYPES[media]
        if media in ("*/*", "image/*"):
            return "png"
    raise NotAcceptableError(f"cannot produce {accept!r}; ask for image/png, image/webp or image/jpeg")


def client_timeout(request: Request) -> float | None:
    """The client's own queue deadline from ``X-Request-Timeout`` (seconds), if it sent a valid one."""
    value = request.headers.get("x-request-timeout")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise InvalidRequestError(f"X-Request-Timeout must be a number of seconds, got {value!r}") from None
    if not 0 < seconds < 86400:
        raise InvalidRequestError(f"X-Request-Timeout must be in (0, 86400) seconds, got {value}")
    return seconds


def create_app(
    settings: DecoderSettings | None = None,
    reconstructor_factory: ReconstructorFactory = default_reconstructor,
) -> FastAPI:
    """Build the decoder app; models load in the lifespan, not here."""
    settings = settings or DecoderSettings()
    metrics = ServiceMetrics("decoder", longest_timeout_s=max(settings.request_timeout_s, settings.drain_timeout_s),
                             build={"profile": settings.codec.profile})
    runtime = DecoderRuntime(settings, metrics, reconstructor_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.startup()
        restore = install_sigterm_drain(runtime.begin_drain, runtime.drain) if settings.handle_sigterm else None
        try:
            yield
        finally:
            if restore is not None:
                restore()
            await runtime.shutdown()

    app = FastAPI(
        title="textsketch decoder",
        version="1",
        lifespan=lifespan,
        description="Regenerates images from text+sketch payloads with dynamically batched diffusion.",
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    install_request_metrics(app, metrics)

    async def payload_from(request: Request):
        require_token(request, settings.auth_token, metrics.rejected)
        # 503 while loading or draining, 429 when full or overloaded: all before reading the body
        runtime.check_accepting(client_timeout(request))
        return parse(await read_payload_body(request, settings.max_body_bytes, metrics.rejected))

    @app.post("/decode", response_class=Response, openapi_extra=PAYLOAD_BODY, responses=_IMAGE_RESPONSES,
              summary="Decode a payload to an image")
    async def decode(request: Request) -> Response:
        fmt = negotiate_image_format(request.headers.get("accept"))
        payload = await payload_from(request)
        jobs = await run_in_threadpool(runtime.jobs_for, payload)
        images = await runtime.run_jobs(jobs, request.is_disconnected, client_timeout(request))
        (data,) = await runtime.finish_images(images, jobs, fmt)
        media = "image/jpeg" if fmt == "jpeg" else f"image/{fmt}"
        return Response(data, media_type=media, headers={"X-Candidate": str(payload.candidate)})

    @app.post("/candidates", response_class=Response, openapi_extra=PAYLOAD_BODY, responses=_CANDIDATE_RESPONSES,
              summary="Render candidates 1..n of a payload in one batch")
    async def candidates(
        request: Request,
        n: int = Query(4, ge=1, le=MAX_CANDIDATE, description="Number of candidates, a power of two."),
        format: str = Query("png", pattern="^(png|webp|jpeg)$", description="Image format of each candidate."),
    ) -> Response:
        if n & (n - 1) or n > settings.max_candidates:
            raise InvalidRequestError(f"n must be a power of two up to {settings.max_candidates}, got {n}")
        payload = await payload_from(request)
        jobs = await run_in_threadpool(runtime.jobs_for, payload, list(range(1, n + 1)))
        images = await runtime.run_jobs(jobs, request.is_disconnected, client_timeout(request))
        encoded = await runtime.finish_images(images, jobs, format)
        body = msgpack.packb({"indices": list(range(1, n + 1)), "format": format, "images": encoded}, use_bin_type=True)
        return Response(body, media_type="application/msgpack")

    @app.get("/health/live", summary="Liveness: fails when loading failed or the model thread is stuck")
    async def live() -> JSONResponse:
        stalled = runtime.stalled_for()
        if runtime.state is State.FAILED:
            return JSONResponse({"status": "failed", "detail": runtime.load_error}, status_code=503)
        if stalled > settings.liveness_stall_s:
            return JSONResponse({"status": "stalled", "detail": f"the running batch has shown no progress for "
                                 f"{stalled:.0f} s (liveness_stall_s {settings.liveness_stall_s:.0f})"},
                                status_code=503)
        return JSONResponse({"status": "alive", "detail": None})

    @app.get("/health/ready", summary="Readiness: models loaded and warmed up, not draining")
    async def ready() -> JSONResponse:
        body = {
            "status": runtime.state.value,
            "profile": runtime.profile.name,
            "queued_jobs": runtime.scheduler.queued_jobs,
            "queued_cost": round(runtime.scheduler.queued_cost, 3),
            "max_queue_cost": round(runtime.max_queue_cost, 3),
            "estimated_wait_s": round(runtime.scheduler.estimated_wait(), 3),
            "max_batch_size": settings.max_batch_size,
        }
        headers = {} if runtime.ready else {"Retry-After": "5"}
        return JSONResponse(body, status_code=200 if runtime.ready else 503, headers=headers)

    add_metrics_route(app, metrics)

    return app


def __getattr__(name: str):
    """``decoder_service.app:app`` for uvicorn: built from the environment on first access."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
