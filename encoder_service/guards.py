"""Checks every encoder payload route makes before doing anything (``/inspect``, ``/sketch`` and the
forwarded ``/decode`` and ``/candidates``): the bearer token, and a payload body read within the
bitstream's own size limit. The checks themselves are the ones both services share
(``services.serving.http``)."""

from __future__ import annotations

from fastapi import Request

from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_PAYLOAD_BYTES
from services.serving.http import read_payload_body, require_token
from services.serving.metrics import ServiceMetrics


def authorize(request: Request, settings: EncoderSettings, metrics: ServiceMetrics) -> None:
    """401 unless the request carries the encoder's bearer token (when one is configured)."""
    require_token(request, settings.auth_token, metrics.rejected)


async def read_payload(request: Request, metrics: ServiceMetrics) -> bytes:
    """The payload bytes of the body: 415 unless msgpack, 413 over ``MAX_PAYLOAD_BYTES`` (refused from
    ``Content-Length`` before reading, or at the first byte over while streaming)."""
    return await read_payload_body(request, MAX_PAYLOAD_BYTES, metrics.rejected)
