"""The encoder's calls to the decoder over a Ray Serve deployment handle instead of HTTP.

The encoder app (``encoder_service.app``) talks to its decoder through an ``httpx.AsyncClient`` and
accepts any ``httpx`` transport. ``HandleTransport`` is one: each request becomes a
``ForwardedRequest`` sent with ``decoder_handle.forward.remote(...)``; the decoder replica runs it
through its own FastAPI app in memory (``ForwardedRequest.run``), so the answer (status codes, typed
errors, ``Retry-After``, auth) is exactly the plain decoder's. The bucket of a payload (mode and
working size) travels with the call, for the bucket-affine router (``ray_service.router``).

A replica that dies or cannot be reached becomes ``httpx.ConnectError`` (the encoder answers 503
``upstream_unavailable`` with ``Retry-After``), after one retry on another replica: a decode is a pure
function of its payload. A call that outlives the encoder's ``decoder_timeout_s`` becomes
``httpx.ReadTimeout`` (504); a caller that goes away cancels the call on the replica too.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

log = logging.getLogger("textsketch.ray")

# The decoder "URL" the encoder is configured with under Ray: only the path of a request is used.
HANDLE_URL = "http://decoder.ray-serve"


@dataclass(frozen=True)
class ForwardedRequest:
    """One HTTP request to the decoder app, as plain data that Ray can pickle."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    async def run(self, client: httpx.AsyncClient) -> ForwardedResponse:
        """Send it through ``client`` (an ASGI transport over the decoder app of this replica)."""
        response = await client.request(self.method, f"http://decoder{self.path}", params=self.query or None,
                                        headers=list(self.headers), content=self.body)
        return ForwardedResponse(response.status_code, tuple(response.headers.multi_items()), response.content)


@dataclass(frozen=True)
class ForwardedResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def payload_bucket(body: bytes, profile) -> str | None:
    """The decode bucket of a payload, ``"<mode>:<w>x<h>"`` at the working size; None when it does not parse.

    Only a label for routing: the decoder parses and checks the payload itself.
    """
    from services.bitstream.container import Mode, parse
    from services.errors import CodecError

    try:
        payload = parse(body)
        width, height = profile.working_size(payload.width, payload.height)
    except (CodecError, ValueError):
        return None
    return bucket_label(Mode(payload.mode).name.lower(), width, height)


def bucket_label(mode: str, width: int, height: int) -> str:
    return f"{mode}:{width}x{height}"


def scheduler_bucket_label(key: tuple) -> str:
    """The label of a decoder scheduler's bucket key ``(profile id, mode, working w, working h, steps, guidance)``
    (``DecoderRuntime.bucket_key``): the same as ``payload_bucket`` of the payloads queued under it."""
    from services.bitstream.container import Mode

    return bucket_label(Mode(key[1]).name.lower(), key[2], key[3])


def _ray_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayError
    from ray.serve.exceptions import BackPressureError

    return (RayError, BackPressureError)


class HandleTransport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport that sends every request to the decoder deployment through ``handle``."""

    def __init__(self, handle, profile, retries: int = 1) -> None:
        self.handle = handle
        self.profile = profile
        self.retries = retries

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        forwarded = ForwardedRequest(request.method, request.url.path, request.url.query.decode("ascii"),
                                     tuple((k, v) for k, v in request.headers.items() if k.lower() != "host"), body)
        bucket = payload_bucket(body, self.profile)
        timeout_s = (request.extensions.get("timeout") or {}).get("read")
        errors = _ray_errors()
        for attempt in range(self.retries + 1):
            call = self.handle.forward.remote(forwarded, bucket=bucket)
            try:
                answer: ForwardedResponse = await asyncio.wait_for(_result(call), timeout_s)
                break
            except asyncio.CancelledError:  # our caller went away: stop the work on the replica too
                call.cancel()
                raise
            except asyncio.TimeoutError:
                call.cancel()
                raise httpx.ReadTimeout(f"no answer from the decoder deployment within {timeout_s} s",
                                        request=request) from None
            except errors as exc:
                if attempt < self.retries and _retryable(exc):
                    log.warning("decoder replica failed (%s); retrying on another replica", type(exc).__name__)
                    continue
                raise httpx.ConnectError(f"decoder deployment: {type(exc).__name__}: {exc}"[:500],
                                         request=request) from None
        return httpx.Response(answer.status, headers=list(answer.headers), content=answer.body, request=request)


async def _result(call):
    return await call


def _retryable(exc: BaseException) -> bool:
    """A replica that died or went away: the request never produced an answer, so another replica may try."""
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    return isinstance(exc, (ActorDiedError, ActorUnavailableError))
