"""Python clients of the encoder and decoder services (httpx, sync and async).

    with TextSketchClient(encoder_url="http://localhost:8001", decoder_url="http://localhost:8002") as client:
        payload = client.encode("photo.png", mode="pics", prompt_source="caption")
        png = client.decode(payload)                  # PNG bytes
        webp = client.decode(payload, fmt="webp")

Every non-2xx answer raises ``ServiceClientError`` carrying the status, the
service's error code and its detail message (and ``retry_after_s`` for 429/503).

``encode``, ``decode`` and ``candidates`` are retried (tenacity) when the service
answers 429 or 503, waiting its ``Retry-After`` (at most ``max_retry_wait_s``) plus
up to ``RETRY_JITTER_S`` of random jitter, and when the connection could not be
made; at most ``retries`` times, then the last error is raised. Every other status
is raised at once. They are pure functions of their input, so a retry is safe.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
from tenacity import (
    AsyncRetrying,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exception,
    wait_random,
)
from typing_extensions import Self

from services.errors import CodecError

log = logging.getLogger("textsketch.client")

RETRY_STATUSES = frozenset({429, 503})  # overloaded, loading or draining: the same request may succeed later
RETRY_JITTER_S = 0.5  # up to this much random delay on top of each wait, so retrying clients spread out
CONNECT_RETRY_WAIT_S = 1.0  # wait before retrying a connection that could not be made (no Retry-After)

IMAGE_MEDIA = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg", "jpg": "image/jpeg"}
_SUFFIX_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff", ".gif": "image/gif",
                 ".ppm": "image/x-portable-pixmap"}
ENCODE_OPTIONS = ("mode", "prompt_source", "text", "quality", "target_bytes", "candidates", "candidate_fallback")


class ServiceClientError(CodecError):
    """A service answered with an error status, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{status} {code}: {detail}" if status else f"{code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Candidates:
    """A decoder /candidates answer: candidate indices (1-based) and their encoded images."""

    indices: tuple[int, ...]
    format: str
    images: tuple[bytes, ...]


def _image_request(image: bytes | str | Path, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ServiceClientError(0, "no_such_file", f"no such image file: {path}")
        return path.read_bytes(), content_type or _SUFFIX_MEDIA.get(path.suffix.lower(), "application/octet-stream")
    return bytes(image), content_type or "application/octet-stream"


def _encode_params(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(ENCODE_OPTIONS)
    if unknown:
        raise TypeError(f"unknown encode option(s) {sorted(unknown)}; use {', '.join(ENCODE_OPTIONS)}")
    params = {}
    for key, value in options.items():
        if value is None:
            continue
        if hasattr(value, "name") and key == "mode":  # services.bitstream.container.Mode
            value = value.name.lower()
        elif hasattr(value, "value"):  # enums such as PromptSource
            value = value.value
        params[key] = str(value).lower() if isinstance(value, bool) else value
    return params


def _accept(fmt: str) -> str:
    media = IMAGE_MEDIA.get(fmt.lower())
    if media is None:
        raise ValueError(f"unsupported image format {fmt!r}; use png, webp or jpeg")
    return media


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()
        code, detail = body.get("error", "error"), body.get("detail", response.text)
    except ValueError:
        code, detail = "error", response.text[:500]
    retry = response.headers.get("retry-after")
    raise ServiceClientError(response.status_code, code, str(detail),
                             float(retry) if retry and retry.replace(".", "", 1).isdigit() else None)


def _unreachable(url: str | None, exc: httpx.HTTPError) -> ServiceClientError:
    """Status 0: ``unreachable`` when no connection could be made (retried), ``timeout`` or
    ``connection_error`` when it broke off after the request may have reached the service (not retried)."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ServiceClientError(0, "unreachable", f"cannot reach {url}: {exc!r}")
    if isinstance(exc, httpx.TimeoutException):
        return ServiceClientError(0, "timeout", f"no answer from {url} in time: {exc!r}")
    return ServiceClientError(0, "connection_error", f"connection to {url} failed: {exc!r}")


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, ServiceClientError) and (exc.status in RETRY_STATUSES or exc.code == "unreachable")


def _retry_options(retries: int, max_retry_wait_s: float) -> dict[str, Any]:
    """tenacity settings: ``retries`` retries of a retryable error, waiting Retry-After (capped) plus jitter."""
    if retries < 0 or max_retry_wait_s < 0:
        raise ValueError(f"retries and max_retry_wait_s must be >= 0, got {retries} and {max_retry_wait_s}")

    def wait_s(exc: BaseException) -> float:
        after = getattr(exc, "retry_after_s", None)
        return min(CONNECT_RETRY_WAIT_S if after is None else after, max_retry_wait_s)

    return {"stop": stop_after_attempt(retries + 1), "wait": wait_exception(wait_s) + wait_random(0, RETRY_JITTER_S),
            "retry": retry_if_exception(_retryable), "reraise": True,
            "before_sleep": before_sleep_log(log, logging.INFO)}


def _candidates(response: httpx.Response) -> Candidates:
    message = msgpack.unpackb(response.content, raw=False)
    return Candidates(tuple(message["indices"]), message["format"], tuple(message["images"]))


def _base(url: str | None, which: str) -> str:
    if not url:
        raise ServiceClientError(0, "not_configured", f"no {which} URL given to the client")
    return url.rstrip("/")


class TextSketchClient:
    """Blocking client. Either URL may be omitted if that service is not used.

    ``retries``: how often a 429, a 503 or a failed connection is retried (0 = never);
    ``max_retry_wait_s`` caps the wait a service's ``Retry-After`` asks for.
    """

    def __init__(self, encoder_url: str | None = None, decoder_url: str | None = None, *,
                 token: str | None = None, timeout_s: float = 300.0, transport: httpx.BaseTransport | None = None,
                 retries: int = 3, max_retry_wait_s: float = 30.0):
        self.encoder_url = encoder_url
        self.decoder_url = decoder_url
        self._retry = _retry_options(retries, max_retry_wait_s)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _post(self, url: str, **kwargs) -> httpx.Response:
        return Retrying(**self._retry)(self._post_once, url, **kwargs)

    def _post_once(self, url: str, **kwargs) -> httpx.Response:
        try:
            return _check(self._http.post(url, **kwargs))
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    def encode(self, image: bytes | str | Path, *, content_type: str | None = None, **options: Any) -> bytes:
        """Payload bytes for an image (file path or bytes). Options: ``ENCODE_OPTIONS``."""
        data, media = _image_request(image, content_type)
        return self._post(f"{_base(self.encoder_url, 'encoder')}/encode", content=data,
                          params=_encode_params(options), headers={"Content-Type": media}).content

    def decode(self, payload: bytes, fmt: str = "png") -> bytes:
        """Image bytes (PNG, WebP or JPEG) for payload bytes."""
        return self._post(f"{_base(self.decoder_url, 'decoder')}/decode", content=bytes(payload),
                          headers={"Content-Type": "application/msgpack", "Accept": _accept(fmt)}).content

    def candidates(self, payload: bytes, n: int = 4, fmt: str = "png") -> Candidates:
        """Candidates 1..n of a payload, rendered by the decoder in one batch."""
        return _candidates(self._post(f"{_base(self.decoder_url, 'decoder')}/candidates", content=bytes(payload),
                                      params={"n": n, "format": fmt}, headers={"Content-Type": "application/msgpack"}))

    def health(self, service: str = "decoder") -> dict:
        """The /health/ready body of ``"encoder"`` or ``"decoder"``; raises unless ready."""
        url = _base(self.encoder_url if service == "encoder" else self.decoder_url, service)
        try:
            return _check(self._http.get(f"{url}/health/ready")).json()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None


class AsyncTextSketchClient:
    """The same API as ``TextSketchClient``, awaitable."""

    def __init__(self, encoder_url: str | None = None, decoder_url: str | None = None, *,
                 token: str | None = None, timeout_s: float = 300.0,
                 transport: httpx.AsyncBaseTransport | None = None, retries: int = 3, max_retry_wait_s: float = 30.0):
        self.encoder_url = encoder_url
        self.decoder_url = decoder_url
        self._retry = _retry_options(retries, max_retry_wait_s)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers, transport=transport)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _post(self, url: str, **kwargs) -> httpx.Response:
        return await AsyncRetrying(**self._retry)(self._post_once, url, **kwargs)

    async def _post_once(self, url: str, **kwargs) -> httpx.Response:
        try:
            return _check(await self._http.post(url, **kwargs))
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def encode(self, image: bytes | str | Path, *, content_type: str | None = None, **options: Any) -> bytes:
        data, media = _image_request(image, content_type)
        response = await self._post(f"{_base(self.encoder_url, 'encoder')}/encode", content=data,
                                    params=_encode_params(options), headers={"Content-Type": media})
        return response.content

    async def decode(self, payload: bytes, fmt: str = "png") -> bytes:
        response = await self._post(f"{_base(self.decoder_url, 'decoder')}/decode", content=bytes(payload),
                                    headers={"Content-Type": "application/msgpack", "Accept": _accept(fmt)})
        return response.content

    async def candidates(self, payload: bytes, n: int = 4, fmt: str = "png") -> Candidates:
        response = await self._post(f"{_base(self.decoder_url, 'decoder')}/candidates", content=bytes(payload),
                                    params={"n": n, "format": fmt}, headers={"Content-Type": "application/msgpack"})
        return _candidates(response)

    async def health(self, service: str = "decoder") -> dict:
        url = _base(self.encoder_url if service == "encoder" else self.decoder_url, service)
        try:
            return _check(await self._http.get(f"{url}/health/ready")).json()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
