"""The Python clients: the async one against the decoder app (ASGI), the sync one against a mock."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from PIL import Image

from services.serving.client import AsyncTextSketchClient, ServiceClientError, TextSketchClient
from services.testing.payloads import pic_payload
from services.testing.servers import serving
from tests.test_decoder_service import make_app


def test_async_client_decodes_and_renders_candidates_through_the_app(tmp_path):
    app, _ = make_app(tmp_path)

    async def main():
        async with serving(app):
            transport = httpx.ASGITransport(app=app)
            async with AsyncTextSketchClient(decoder_url="http://testserver", transport=transport) as client:
                webp = await client.decode(pic_payload(), fmt="webp")
                candidates = await client.candidates(pic_payload(), n=2)
                health = await client.health()
                with pytest.raises(ServiceClientError) as bad:
                    await client.decode(b"nonsense")
                return webp, candidates, health, bad.value

    webp, candidates, health, error = asyncio.run(main())
    assert Image.open(io.BytesIO(webp)).format == "WEBP"
    assert candidates.indices == (1, 2) and len(candidates.images) == 2
    assert health["status"] == "ready"
    assert error.status == 422 and error.code == "invalid_payload" and "payload" in error.detail


def test_sync_client_sends_options_and_raises_typed_errors(tmp_path):
    seen: list[httpx.Request] = []
    image_path = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(image_path)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/encode":
            return httpx.Response(200, content=b"\x98payload", headers={"Content-Type": "application/msgpack"})
        return httpx.Response(429, headers={"Retry-After": "3"},
                              content=json.dumps({"error": "queue_full", "detail": "decode queue is full"}))

    with TextSketchClient("http://enc", "http://dec", token="t0k", transport=httpx.MockTransport(handler),
                          retries=0) as client:
        data = client.encode(image_path, mode="pic", prompt_source="given", text="a cat", candidate_fallback=True)
        with pytest.raises(ServiceClientError) as busy:
            client.decode(data, fmt="jpeg")
        with pytest.raises(TypeError):
            client.encode(image_path, colour="red")
    encode_call, decode_call = seen
    assert data == b"\x98payload"
    assert encode_call.headers["content-type"] == "image/png" and encode_call.headers["authorization"] == "Bearer t0k"
    assert dict(encode_call.url.params) == {"mode": "pic", "prompt_source": "given", "text": "a cat",
                                           "candidate_fallback": "true"}
    assert decode_call.headers["accept"] == "image/jpeg"
    assert busy.value.status == 429 and busy.value.retry_after_s == 3 and busy.value.code == "queue_full"


def test_unreachable_service_is_a_client_error_with_status_zero():
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with TextSketchClient(decoder_url="http://127.0.0.1:9", transport=httpx.MockTransport(refuse),
                          retries=0) as client:
        with pytest.raises(ServiceClientError) as info:
            client.decode(pic_payload())
        with pytest.raises(ServiceClientError) as missing:
            client.encode(b"abc")
    assert info.value.status == 0 and info.value.code == "unreachable"
    assert missing.value.code == "not_configured"
