"""The encoder's page routes through the ASGI transport: GET / and its files, POST /inspect and /sketch with
real tiny-profile payloads, and the forwarded POST /decode and /candidates against a mocked decoder.
The same page in a real browser against real processes: tests/test_page_browser.py."""

from __future__ import annotations

import asyncio
import io
import re

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from encoder_service.app import create_app
from encoder_service.page import PAGE_FILES, page_files
from encoder_service.settings import EncoderSettings
from services.bitstream.container import MAX_PAYLOAD_BYTES, parse
from services.inspection import payload_sketch
from services.settings import CodecSettings
from services.testing.servers import serving

GIVEN = {"prompt_source": "given", "text": "a red box on a blue wall"}
MSGPACK = {"Content-Type": "application/msgpack"}


def make_app(tmp_path, transport=None, **overrides):
    codec = CodecSettings(profile="tiny", cache_dir=tmp_path / "cache", prompt_source="given")
    return create_app(EncoderSettings(codec=codec, **overrides), http_transport=transport)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def scene_png(size=(192, 128)) -> bytes:
    image = Image.new("RGB", size, (40, 80, 160))
    ImageDraw.Draw(image).rectangle((40, 30, 120, 110), fill=(200, 50, 30))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def encode(client, mode="pics", **headers) -> bytes:
    response = await client.post("/encode", content=scene_png(), params={"mode": mode, **GIVEN},
                                 headers={"Content-Type": "image/png", **headers})
    assert response.status_code == 200, response.text
    return response.content


def test_the_page_and_its_files_are_served_with_a_same_origin_policy(tmp_path):
    app = make_app(tmp_path)

    async def main():
        async with serving(app) as client:
            return {path: await client.get(path) for path in ("/", "/page/page.js", "/page/page.css")}

    answers = run(main())
    for path, name in (("/", "index.html"), ("/page/page.js", "page.js"), ("/page/page.css", "page.css")):
        response = answers[path]
        assert response.status_code == 200 and response.headers["content-type"] == PAGE_FILES[name]
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert "connect-src 'self'" in response.headers["content-security-policy"]
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == page_files()[name]
    # nothing loaded from elsewhere: no absolute URLs, no CDN, no web fonts
    for name, text in page_files().items():
        text = text.decode()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), name
        assert "@import" not in text and "@font-face" not in text and "localStorage" not in text, name
        assert "document.cookie" not in text and "sessionStorage" not in text, name
    paths = app.openapi()["paths"]
    assert {"/", "/inspect", "/sketch", "/decode", "/candidates"} <= set(paths)


def test_inspect_and_sketch_describe_a_real_payload(tmp_path):
    app = make_app(tmp_path)

    async def main():
        async with serving(app) as client:
            pics, pic = await encode(client), await encode(client, mode="pic")
            return (pics, pic, await client.post("/inspect", content=pics, headers=MSGPACK),
                    await client.post("/sketch", content=pics, headers=MSGPACK),
                    await client.post("/inspect", content=pic, headers=MSGPACK),
                    await client.post("/sketch", content=pic, headers=MSGPACK))

    pics, pic, info, sketch, pic_info, pic_sketch = run(main())
    payload = parse(pics)
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["bytes"] == len(pics) == body["prompt_bytes"] + body["sketch_bytes"] + body["overhead_bytes"]
    assert (body["mode"], body["profile"], body["width"], body["height"]) == ("PICS", "tiny", 192, 128)
    assert (body["working_width"], body["working_height"]) == (768, 512)
    assert body["sketch_bytes"] == len(payload.sketch) and body["prompt_text"] == GIVEN["text"]
    assert sketch.status_code == 200 and sketch.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(sketch.content)) as image:
        assert image.size == (768, 512) and np.array_equal(np.asarray(image), payload_sketch(payload))
    assert pic_info.status_code == 200 and pic_info.json()["sketch_bytes"] == 0
    assert pic_sketch.status_code == 422 and pic_sketch.json()["error"] == "invalid_request"
    assert "PIC payload carries no sketch" in pic_sketch.json()["detail"]


def test_payload_routes_refuse_bad_bodies_clearly(tmp_path):
    app = make_app(tmp_path)

    async def main():
        async with serving(app) as client:
            post = client.post
            return {
                "garbage": await post("/sketch", content=b"\x89PNG not a payload", headers=MSGPACK),
                "inspect_garbage": await post("/inspect", content=b"\x93\x62", headers=MSGPACK),
                "empty": await post("/inspect", content=b"", headers=MSGPACK),
                "type": await post("/sketch", content=b"x", headers={"Content-Type": "image/png"}),
                "large": await post("/inspect", content=b"\0" * (MAX_PAYLOAD_BYTES + 1), headers=MSGPACK),
            }

    r = run(main())
    for name in ("garbage", "inspect_garbage", "empty"):
        assert r[name].status_code == 422 and r[name].json()["error"] == "invalid_payload", name
        assert r[name].json()["detail"].startswith("invalid payload"), name
    assert r["type"].status_code == 415 and r["type"].json()["error"] == "unsupported_media"
    assert r["large"].status_code == 413 and r["large"].json()["error"] == "body_too_large"


def test_with_auth_on_the_page_is_public_and_every_payload_route_needs_the_token(tmp_path):
    app = make_app(tmp_path, auth_token="s3cret", decoder_url="http://decoder:8002")

    async def main():
        async with serving(app) as client:
            payload = await encode(client, Authorization="Bearer s3cret")
            page = await client.get("/")
            bare = {path: await client.post(path, content=payload, headers=MSGPACK)
                    for path in ("/inspect", "/sketch", "/decode", "/candidates")}
            good = await client.post("/inspect", content=payload, headers={**MSGPACK, "Authorization": "Bearer s3cret"})
            return page, bare, good

    page, bare, good = run(main())
    assert page.status_code == 200
    for path, response in bare.items():
        assert response.status_code == 401 and response.json()["error"] == "unauthorized", path
        assert response.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 200


class FakeDecoder:
    """A decoder behind httpx.MockTransport: records what it gets, answers what the test sets."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answer = httpx.Response(200, content=b"\x89PNG fake", headers={"Content-Type": "image/png",
                                                                             "X-Candidate": "0"})
        self.error: Exception | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.error is not None:
            raise self.error
        return self.answer


def test_decode_and_candidates_are_forwarded_to_the_decoder_with_its_token(tmp_path):
    decoder = FakeDecoder()
    app = make_app(tmp_path, httpx.MockTransport(decoder), decoder_url="http://decoder:8002/",
                   decoder_token="decoder-secret")

    async def main():
        async with serving(app) as client:
            payload = await encode(client)
            decoded = await client.post("/decode", content=payload,
                                        headers={**MSGPACK, "Accept": "image/webp", "X-Request-Timeout": "30",
                                                 "Cookie": "not=forwarded"})
            candidates = await client.post("/candidates", params={"n": 2, "format": "jpeg"}, content=payload,
                                           headers=MSGPACK)
            return payload, decoded, candidates

    payload, decoded, candidates = run(main())
    assert decoded.status_code == 200 and decoded.content == b"\x89PNG fake"
    assert decoded.headers["content-type"] == "image/png" and decoded.headers["x-upstream"] == "decoder"
    sent_decode, sent_candidates = decoder.requests
    assert str(sent_decode.url) == "http://decoder:8002/decode" and sent_decode.content == payload
    assert sent_decode.headers["authorization"] == "Bearer decoder-secret"
    assert sent_decode.headers["accept"] == "image/webp" and sent_decode.headers["x-request-timeout"] == "30"
    assert "cookie" not in sent_decode.headers
    assert sent_candidates.url.path == "/candidates"
    assert dict(sent_candidates.url.params) == {"n": "2", "format": "jpeg"}
    assert candidates.status_code == 200


def test_forwarded_errors_are_the_decoders_or_say_what_failed(tmp_path):
    decoder = FakeDecoder()
    app = make_app(tmp_path, httpx.MockTransport(decoder), decoder_url="http://decoder:8002")
    no_decoder = make_app(tmp_path / "other")
    answers = {}

    def error(status: int, code: str, **headers) -> httpx.Response:
        return httpx.Response(status, json={"error": code, "detail": f"decoder says {code}"}, headers=headers)

    async def main():
        async with serving(app) as client:
            payload = await encode(client)
            for name, answer in (("invalid", error(422, "invalid_payload")),
                                 ("busy", error(429, "queue_full", **{"Retry-After": "7"})),
                                 ("token", error(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})),
                                 ("crash", error(500, "internal_error"))):
                decoder.answer = answer
                answers[name] = await client.post("/decode", content=payload, headers=MSGPACK)
            decoder.error = httpx.ConnectError("connection refused")
            answers["down"] = await client.post("/decode", content=payload, headers=MSGPACK)
            decoder.error = httpx.ReadTimeout("too slow")
            answers["slow"] = await client.post("/candidates", params={"n": 2}, content=payload, headers=MSGPACK)
            answers["not_a_payload"] = await client.post("/decode", content=b"x" * 10, headers={"Content-Type": "text/plain"})
        async with serving(no_decoder) as client:
            answers["unset"] = await client.post("/decode", content=payload, headers=MSGPACK)

    run(main())
    a = answers
    assert a["invalid"].status_code == 422 and a["invalid"].json() == {"error": "invalid_payload",
                                                                       "detail": "decoder says invalid_payload"}
    assert a["invalid"].headers["x-upstream"] == "decoder"
    assert a["busy"].status_code == 429 and a["busy"].headers["retry-after"] == "7"
    assert a["token"].status_code == 502 and "TEXTSKETCH_ENCODER_DECODER_TOKEN" in a["token"].json()["detail"]
    assert "www-authenticate" not in a["token"].headers  # not the browser's token that is wrong
    assert a["crash"].status_code == 502 and "decoder says internal_error" in a["crash"].json()["detail"]
    assert a["down"].status_code == 503 and a["down"].json()["error"] == "upstream_unavailable"
    assert "unreachable" in a["down"].json()["detail"] and a["down"].headers["retry-after"] == "5"
    assert a["slow"].status_code == 504 and "did not answer" in a["slow"].json()["detail"]
    assert a["not_a_payload"].status_code == 415
    assert a["unset"].status_code == 503 and "TEXTSKETCH_ENCODER_DECODER_URL" in a["unset"].json()["detail"]
    assert len(decoder.requests) == 6  # the 415 never reached the decoder


@pytest.mark.parametrize("path", ["/decode", "/candidates"])
def test_forwarding_is_refused_while_draining(tmp_path, path):
    decoder = FakeDecoder()
    app = make_app(tmp_path, httpx.MockTransport(decoder), decoder_url="http://decoder:8002")

    async def main():
        async with serving(app) as client:
            payload = await encode(client)
            app.state.runtime.begin_drain()
            return await client.post(path, content=payload, headers=MSGPACK)

    response = run(main())
    assert response.status_code == 503 and response.json()["error"] == "draining"
    assert decoder.requests == []
