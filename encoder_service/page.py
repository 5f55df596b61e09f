"""The encoder's web page and the two routes it reads payloads with.

- ``GET /``: one static page (``encoder_service/static``, package data: HTML, CSS and JavaScript, no build
  step, nothing loaded from elsewhere) that encodes an image, shows the original, the decoded sketch and
  the reconstruction side by side, the payload's byte breakdown and prompt, and offers the payload for
  download. It calls the encoder's own routes only: ``/encode``, ``/inspect``, ``/sketch``, and the
  decoder through ``/decode`` and ``/candidates``, which the encoder forwards (``encoder_service.forward``),
  so the decoder never needs to be reachable from browsers. A Content-Security-Policy keeps it to that.
- ``POST /inspect``: payload -> JSON (``services.inspection.PayloadInfo``: fields, bytes, bpp, token ids
  and the prompt text they decode to).
- ``POST /sketch``: payload -> PNG of its decoded sketch at the working size (white lines on black).

The page and its files are public (they hold nothing secret); ``/inspect`` and ``/sketch`` need the
encoder's bearer token like ``/encode``. The page keeps a token typed into it in memory only.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from encoder_service.guards import authorize, read_payload
from encoder_service.runtime import EncoderRuntime
from encoder_service.settings import EncoderSettings
from services.inspection import NoSketchError, inspect_payload, sketch_png
from services.serving.errors import InvalidRequestError
from services.serving.http import PAYLOAD_BODY
from services.serving.metrics import ServiceMetrics

PAGE_FILES = {"index.html": "text/html; charset=utf-8", "page.css": "text/css; charset=utf-8",
              "page.js": "text/javascript; charset=utf-8"}
# Everything the page loads comes from this origin; images and the download are blob: URLs the page makes from
# the answers (blob: in connect-src lets it, and its tests, read them back; no other origin is reachable).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                               "connect-src 'self' blob:; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_PAYLOAD_ERRORS = {
    401: {"description": "auth_token is set and the bearer token is missing or wrong."},
    413: {"description": "Body over the bitstream's payload limit."},
    415: {"description": "Not application/msgpack."},
    422: {"description": "Not a valid payload (the parser's message), or sizes over the working/output limits."},
    429: {"description": "Too many encodes in progress; retry after Retry-After seconds."},
    503: {"description": "Loading or draining; retry after Retry-After seconds."},
}


def page_files() -> dict[str, bytes]:
    """The page's files, read from the installed package (``encoder_service/static``)."""
    static = resources.files("encoder_service").joinpath("static")
    return {name: static.joinpath(name).read_bytes() for name in PAGE_FILES}


def install_page(app: FastAPI, settings: EncoderSettings, metrics: ServiceMetrics, runtime: EncoderRuntime,
                 limiter) -> None:
    """Add ``GET /``, the page's files under ``/page/``, ``POST /inspect`` and ``POST /sketch`` to ``app``.

    ``limiter`` is the encoder's (``encoder_service.app._Limiter``): decoding a sketch or a prompt is CPU
    work, so it takes a slot like an encode (429 when full).
    """
    files = page_files()

    def static(name: str) -> Response:
        return Response(files[name], media_type=PAGE_FILES[name], headers=PAGE_HEADERS)

    @app.get("/", response_class=Response, summary="The encoder's web page (encode, inspect, decode, download)",
             responses={200: {"content": {"text/html": {}}}})
    async def index() -> Response:
        return static("index.html")

    @app.get("/page/page.js", response_class=Response, include_in_schema=False)
    async def script() -> Response:
        return static("page.js")

    @app.get("/page/page.css", response_class=Response, include_in_schema=False)
    async def stylesheet() -> Response:
        return static("page.css")

    async def payload_work(request: Request, work, *args):
        authorize(request, settings, metrics)
        runtime.check_accepting()
        limiter.check_capacity()  # before reading the body
        async with runtime.request():
            data = await read_payload(request, metrics)
            async with limiter.slot():
                return await run_in_threadpool(work, data, *args)

    @app.post("/inspect", openapi_extra=PAYLOAD_BODY, summary="Describe a payload: fields, bytes, bpp, prompt text",
              responses={200: {"description": "JSON: version, profile, profile_id, mode, width, height, "
                                              "working_width, working_height, candidate, bytes, prompt_bytes, "
                                              "sketch_bytes, overhead_bytes, bpp, token_ids, prompt_text."},
                         **_PAYLOAD_ERRORS})
    async def inspect(request: Request) -> JSONResponse:
        info = await payload_work(request, inspect_payload, settings.codec)
        return JSONResponse(info.to_dict())

    @app.post("/sketch", response_class=Response, openapi_extra=PAYLOAD_BODY,
              summary="The payload's decoded sketch as a PNG at the working size",
              responses={200: {"description": "Grayscale PNG, white lines on black, at the working size the "
                                              "decoder draws the sketch at.", "content": {"image/png": {}}},
                         **_PAYLOAD_ERRORS})
    async def sketch(request: Request) -> Response:
        try:
            png = await payload_work(request, sketch_png, settings.codec.max_working_pixels,
                                     settings.codec.max_output_pixels)
        except NoSketchError as exc:
            raise InvalidRequestError(str(exc)) from None
        return Response(png, media_type="image/png")
