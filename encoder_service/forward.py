"""``POST /decode`` and ``POST /candidates`` on the encoder: forwarded to its configured decoder.

The encoder's page (``encoder_service.page``) decodes through these, so a deployment exposes one origin
(the encoder) and keeps the decoder private: no CORS on the decoder, and the decoder's token stays in the
encoder (``decoder_token``, the one candidate selection already sends). Clients that can reach the
decoder may still call it directly; the answers are the same.

What a client sees:

- The encoder's own checks first: its bearer token (401), 503 while loading or draining, a payload body
  within the bitstream's limit (413) sent as msgpack (415). Without ``decoder_url``: 503
  ``upstream_unavailable``.
- The decoder's answer as it is: its image (streamed, never buffered whole), or its status and
  ``{"error", "detail"}`` body (406, 409, 413, 422, 429 and 503 with ``Retry-After``, 504), marked with
  ``X-Upstream: decoder``. ``Accept`` and ``X-Request-Timeout`` are passed on.
- A decoder that cannot be reached: 503 ``upstream_unavailable`` (+ ``Retry-After``); that does not answer
  within ``decoder_timeout_s``: 504; that refuses the encoder's token (401) or fails (5xx): 502.
- A client that leaves while the decoder works: the call to the decoder is dropped, so the decoder
  stops the request too (it watches its own client).
"""

from __future__ import annotations

import asyncio
import json

import httpx
from fastapi import FastAPI, Query, Request
from fastapi.responses import Response, StreamingResponse

from encoder_service.guards import authorize, read_payload
from encoder_service.runtime import EncoderRuntime
from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_CANDIDATE
from services.serving.errors import RequestCancelledError, UpstreamError
from services.serving.http import PAYLOAD_BODY
from services.serving.metrics import ServiceMetrics

DISCONNECT_POLL_S = 0.25
MAX_ERROR_BYTES = 64 * 1024  # an error body from the decoder is read up to this
PASSED_ON = ("accept", "x-request-timeout")
# x-decoder-replica: the decoder replica that answered, where the decoder names one (Ray Serve, ray_service/)
RELAYED = ("content-type", "retry-after", "x-candidate", "www-authenticate", "x-decoder-replica")

_FORWARD_RESPONSES = {
    502: {"description": "The decoder failed (5xx) or refused the encoder's decoder_token."},
    503: {"description": "Encoder loading or draining; no decoder_url; the decoder is unreachable; or the "
                         "decoder's own 503 (X-Upstream: decoder)."},
    504: {"description": "The decoder did not answer within decoder_timeout_s, or its own 504."},
}


def install_forwarding(app: FastAPI, settings: EncoderSettings, metrics: ServiceMetrics,
                       runtime: EncoderRuntime) -> None:
    """Add the forwarded ``POST /decode`` and ``POST /candidates``; the decoder client is ``app.state.decoder``."""

    async def forward(request: Request, path: str, params: dict) -> Response:
        authorize(request, settings, metrics)
        runtime.check_accepting()
        async with runtime.request():
            data = await read_payload(request, metrics)
            if not settings.decoder_url:
                metrics.rejected("upstream")
                raise UpstreamError("this encoder has no decoder to forward to; set TEXTSKETCH_ENCODER_DECODER_URL",
                                    status=503)
            headers = {"Content-Type": "application/msgpack",
                       **{k: v for k, v in request.headers.items() if k.lower() in PASSED_ON}}
            client: httpx.AsyncClient = app.state.decoder
            upstream = client.build_request("POST", f"{settings.decoder_url.rstrip('/')}{path}", params=params,
                                            content=data, headers=headers)
            response = await _send(client, upstream, request, settings, metrics)
        relayed = {k: v for k, v in response.headers.items() if k.lower() in RELAYED}
        relayed["X-Upstream"] = "decoder"
        if response.status_code == 200:
            return StreamingResponse(_stream(response), headers=relayed)
        body = await _read_error(response)
        if response.status_code == 401 or (response.status_code >= 500 and response.status_code not in (503, 504)):
            metrics.rejected("upstream")
            raise UpstreamError(f"the decoder answered {response.status_code} to {path}: "
                                f"{_detail(body)}" + (" (check TEXTSKETCH_ENCODER_DECODER_TOKEN)"
                                                      if response.status_code == 401 else ""), status=502)
        relayed.pop("www-authenticate", None)
        return Response(body, status_code=response.status_code, headers=relayed)

    @app.post("/decode", response_class=Response, openapi_extra=PAYLOAD_BODY,
              summary="Decode a payload through this encoder's decoder (forwarded)",
              responses={200: {"description": "The decoder's image (PNG unless Accept asks for WebP or JPEG).",
                               "content": {"image/png": {}, "image/webp": {}, "image/jpeg": {}}},
                         **_FORWARD_RESPONSES})
    async def decode(request: Request) -> Response:
        return await forward(request, "/decode", {})

    @app.post("/candidates", response_class=Response, openapi_extra=PAYLOAD_BODY,
              summary="Render candidates 1..n of a payload through this encoder's decoder (forwarded)",
              responses={200: {"description": "The decoder's msgpack map {indices, format, images}.",
                               "content": {"application/msgpack": {}}},
                         **_FORWARD_RESPONSES})
    async def candidates(
        request: Request,
        n: int = Query(4, ge=1, le=MAX_CANDIDATE, description="Number of candidates, a power of two."),
        format: str = Query("png", pattern="^(png|webp|jpeg)$", description="Image format of each candidate."),
    ) -> Response:
        return await forward(request, "/candidates", {"n": n, "format": format})


def decoder_unreachable(exc: httpx.HTTPError, settings: EncoderSettings) -> UpstreamError:
    """The error for a decoder call that got no answer: 504 when it timed out, else 503 (unreachable)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(f"the decoder at {settings.decoder_url} did not answer within "
                             f"{settings.decoder_timeout_s:.0f} s ({exc!r})", status=504)
    return UpstreamError(f"the decoder at {settings.decoder_url} is unreachable ({exc!r})", status=503,
                         retry_after_s=5)


async def _send(client: httpx.AsyncClient, upstream: httpx.Request, request: Request, settings: EncoderSettings,
                metrics: ServiceMetrics) -> httpx.Response:
    """The decoder's response (body not read yet); dropped when our own client leaves first."""
    sending = asyncio.ensure_future(client.send(upstream, stream=True))
    try:
        while True:
            done, _ = await asyncio.wait({sending}, timeout=DISCONNECT_POLL_S)
            if done:
                return sending.result()
            if await request.is_disconnected():
                metrics.rejected("cancelled")
                raise RequestCancelledError("the client went away; the decoder call was dropped")
    except httpx.HTTPError as exc:
        metrics.rejected("upstream")
        raise decoder_unreachable(exc, settings) from None
    finally:
        if not sending.done():
            sending.cancel()


async def _stream(response: httpx.Response):
    """The decoder's body as it arrives; the connection is released however the stream ends."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    finally:
        await response.aclose()


async def _read_error(response: httpx.Response) -> bytes:
    """An error body of the decoder, at most ``MAX_ERROR_BYTES``."""
    body = bytearray()
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_ERROR_BYTES:
                break
    finally:
        await response.aclose()
    return bytes(body[:MAX_ERROR_BYTES])


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail", ""))[:300]
    except (ValueError, AttributeError):
        return body[:300].decode("utf-8", "replace")
