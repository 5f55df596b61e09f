"""Checks every encoder work route makes before doing anything: the bearer token, and a payload body read
within the bitstream's own size limit (for ``/inspect``, ``/sketch`` and the forwarded ``/decode`` and
``/candidates``)."""

from __future__ import annotations

from fastapi import Request

from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_PAYLOAD_BYTES
from services.errors import UnsupportedMediaError
from services.serving.errors import BodyTooLargeError, UnauthorizedError
from services.serving.http import bearer_token_ok, read_body
from services.serving.metrics import ServiceMetrics

# The content types the decoder accepts for a payload (decoder_service/app.py), the same here.
MSGPACK_TYPES = ("application/msgpack", "application/x-msgpack", "application/vnd.msgpack", "application/octet-stream")


def authorize(request: Request, settings: EncoderSettings, metrics: ServiceMetrics) -> None:
    """401 unless the request carries the encoder's bearer token (when one is configured)."""
    if not bearer_token_ok(request.headers.get("authorization"), settings.auth_token):
        metrics.rejected("unauthorized")
        raise UnauthorizedError("missing or wrong bearer token; send Authorization: Bearer <token>")


async def read_payload(request: Request, metrics: ServiceMetrics) -> bytes:
    """The payload bytes of the body: 415 unless msgpack, 413 over ``MAX_PAYLOAD_BYTES`` (refused from
    ``Content-Length`` before reading, or at the first byte over while streaming)."""
    content_type = request.headers.get("content-type", "application/msgpack").split(";")[0].strip().lower()
    if content_type not in MSGPACK_TYPES:
        raise UnsupportedMediaError(f"send the payload as application/msgpack, not {content_type}")
    try:
        return await read_body(request, MAX_PAYLOAD_BYTES)
    except BodyTooLargeError:
        metrics.rejected("too_large")
        raise
