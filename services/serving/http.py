"""One place that maps domain errors to HTTP status codes, for both services.

Service-level errors (overload, readiness, deadlines, an unreachable
upstream) live in ``services.serving.errors`` and carry no HTTP knowledge
themselves; only ``error_response`` and ``install_error_handlers`` turn them
into responses. ``read_body`` is the one bounded request-body reader.

Every error response has the JSON body ``{"error": code, "detail": message}``.

==========================  ======  ======================  =====================================
error                       status  code                    notes
==========================  ======  ======================  =====================================
BitstreamError              422     invalid_payload         well-formed request, unusable payload
ProfileMismatchError        409     profile_mismatch        payload is for another decoder
ImageTooLargeError          413     image_too_large         upload bytes or pixel count
UnsupportedMediaError       415     unsupported_media       not an image type we read
ImageInputError             422     invalid_image           truncated / corrupt image
RequestValidationError      422     invalid_request         bad query parameter (FastAPI)
InvalidRequestError         422     invalid_request         option out of range (our checks)
NotAcceptableError          406     not_acceptable          ``Accept`` names no format we write
BodyTooLargeError           413     body_too_large          request body over ``max_body_bytes``
RequestTooCostlyError       413     request_too_costly      decode work over ``max_request_cost``
UnauthorizedError           401     unauthorized            missing / wrong bearer token
QueueFullError              429     queue_full              + ``Retry-After`` (queue at capacity, or
                                                            the estimated wait beyond the deadline)
NotReadyError               503     not_ready               + ``Retry-After`` (loading)
DrainingError               503     draining                + ``Retry-After`` (shutting down)
DeadlineExceededError       504     deadline_exceeded       deadline passed while queued
RequestCancelledError       499     client_closed_request   client went away (never seen by it)
EncodeCancelledError        499     client_closed_request   encoder: PEZ stopped, the client went away
UpstreamError               502/503 upstream_unavailable    decoder service unreachable / failed
ModelUnavailableError       503     model_unavailable       weights cannot be loaded
DecodeOutOfMemoryError      503     out_of_memory           + ``Retry-After``; one job alone did not fit
anything else               500     internal_error          generic message; logged with traceback
==========================  ======  ======================  =====================================

``BitstreamError`` is 422 rather than 400: the request itself (method,
content type, body size) is well formed; its content does not decode.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable

from pydantic import SecretStr

from services.errors import (
    BitstreamError,
    CodecError,
    DecodeOutOfMemoryError,
    EncodeCancelledError,
    ImageInputError,
    ImageTooLargeError,
    ModelUnavailableError,
    ProfileMismatchError,
    UnsupportedMediaError,
)
from services.serving.errors import (
    BodyTooLargeError,
    DeadlineExceededError,
    DrainingError,
    InvalidRequestError,
    NotAcceptableError,
    NotReadyError,
    QueueFullError,
    RequestCancelledError,
    RequestTooCostlyError,
    UnauthorizedError,
    UpstreamError,
)

log = logging.getLogger("textsketch.http")


# Order matters: subclasses before their bases.
_TABLE: tuple[tuple[type[BaseException], int, str], ...] = (
    (BitstreamError, 422, "invalid_payload"),
    (ProfileMismatchError, 409, "profile_mismatch"),
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedMediaError, 415, "unsupported_media"),
    (ImageInputError, 422, "invalid_image"),
    (InvalidRequestError, 422, "invalid_request"),
    (NotAcceptableError, 406, "not_acceptable"),
    (BodyTooLargeError, 413, "body_too_large"),
    (RequestTooCostlyError, 413, "request_too_costly"),
    (UnauthorizedError, 401, "unauthorized"),
    (QueueFullError, 429, "queue_full"),
    (NotReadyError, 503, "not_ready"),
    (DrainingError, 503, "draining"),
    (DeadlineExceededError, 504, "deadline_exceeded"),
    (RequestCancelledError, 499, "client_closed_request"),
    (EncodeCancelledError, 499, "client_closed_request"),
    (UpstreamError, 502, "upstream_unavailable"),
    (ModelUnavailableError, 503, "model_unavailable"),
    (DecodeOutOfMemoryError, 503, "out_of_memory"),
)


def bearer_token_ok(authorization: str | None, token: SecretStr | str | None) -> bool:
    """True when no token is configured or ``authorization`` is ``Bearer <token>``.

    Compared in constant time (``hmac.compare_digest``) on the UTF-8 bytes, so the
    answer time says nothing about how much of a guess was right, and non-ASCII
    headers are a plain mismatch rather than an error.
    """
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    return hmac.compare_digest((authorization or "").encode("utf-8", "surrogateescape"), expected)


def status_for(exc: BaseException) -> tuple[int, str]:
    """(HTTP status, error code) of an exception; 500 for anything unexpected."""
    for error_type, status, code in _TABLE:
        if isinstance(exc, error_type):
            if isinstance(exc, UpstreamError):
                status = exc.status
            return status, code
    return 500, "internal_error"


def error_response(exc: BaseException):
    """A JSONResponse for ``exc``; unexpected errors are logged and get a generic message."""
    from fastapi.responses import JSONResponse

    status, code = status_for(exc)
    headers: dict[str, str] = {}
    if status == 500:
        log.error("unhandled error: %r", exc, exc_info=exc)
        detail = "internal error; the server log has the details"
    else:
        detail = str(exc)
    retry_after = getattr(exc, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def install_error_handlers(app) -> None:
    """Route every domain error, validation error and unexpected exception through ``error_response``.

    Unexpected exceptions are caught by a middleware rather than an ``Exception``
    handler: Starlette re-raises after calling such a handler, which the ASGI
    test transport would turn into a client-side exception instead of a 500.
    Install this before the request-metrics middleware so that one (outer) sees the 500.
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def on_codec_error(request, exc):
        return error_response(exc)

    async def on_validation(request, exc):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}" for err in exc.errors()
        )
        return JSONResponse({"error": "invalid_request", "detail": problems}, status_code=422)

    app.add_exception_handler(CodecError, on_codec_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_middleware(UnexpectedErrorMiddleware)


class UnexpectedErrorMiddleware:
    """Pure ASGI middleware: an exception no handler took becomes the generic JSON 500.

    Pure ASGI (not ``@app.middleware("http")``): Starlette's ``BaseHTTPMiddleware``
    wraps ``receive`` in a way that hides client disconnects from the route,
    and the decoder relies on ``request.is_disconnected()``.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started:
                raise
            await error_response(exc)(scope, receive, send)


# Content types a textsketch payload may be sent as (both services' payload routes).
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack", "application/octet-stream")
# OpenAPI request body of a payload route.
PAYLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "A textsketch payload (bitstream v2, or v1 written by older encoders) exactly as returned "
                       "by the encoder's POST /encode.",
        "content": {"application/msgpack": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def require_token(request, token: SecretStr | str | None, rejected: Callable[[str], None]) -> None:
    """401 (``UnauthorizedError``) unless ``request`` carries the bearer ``token`` (when one is configured)."""
    if not bearer_token_ok(request.headers.get("authorization"), token):
        rejected("unauthorized")
        raise UnauthorizedError("missing or wrong bearer token; send Authorization: Bearer <token>")


async def read_payload_body(request, limit: int, rejected: Callable[[str], None]) -> bytes:
    """A payload body: 415 unless a msgpack content type, 413 over ``limit`` bytes (``read_body``)."""
    content_type = request.headers.get("content-type", "application/msgpack").split(";")[0].strip().lower()
    if content_type not in MSGPACK_TYPES:
        raise UnsupportedMediaError(f"send the payload as application/msgpack, not {content_type}")
    try:
        return await read_body(request, limit)
    except BodyTooLargeError:
        rejected("too_large")
        raise


async def read_body(request, limit: int, too_large: type[CodecError] = BodyTooLargeError) -> bytes:
    """A request body of at most ``limit`` bytes: refused from ``Content-Length`` before reading, and
    while streaming (a chunked body without a length stops at the first byte over)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(f"body is {declared} bytes; the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(f"body exceeds the {limit}-byte limit")
    return bytes(body)
