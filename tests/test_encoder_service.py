"""Encoder app through the ASGI transport: real codec stages (tiny profile), a mocked decoder for selection."""

from __future__ import annotations

import asyncio
import io

import httpx
import msgpack
import pytest
from PIL import Image

from encoder_service.app import _Limiter, create_app
from encoder_service.settings import EncoderSettings
from services.bitstream.container import Mode, parse
from services.serving.errors import QueueFullError
from services.serving.metrics import ServiceMetrics
from services.settings import CodecSettings
from services.testing.servers import serving
from services.tiny.encoders import build_tiny_clip
from tests.paths import EXAMPLES

GIVEN = {"prompt_source": "given", "text": "a red house by the sea"}


@pytest.fixture(scope="module")
def photo_png() -> bytes:
    image = Image.open(EXAMPLES / "kodim23.png").convert("RGB").resize((192, 128), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return str(build_tiny_clip(tmp_path_factory.mktemp("selection-clip")))


def make_app(tmp_path, transport=None, **overrides):
    # prompt_source=given: the background warm-up then needs no caption model (none offline but tiny)
    codec = CodecSettings(profile="tiny", cache_dir=tmp_path / "cache", prompt_source="given")
    return create_app(EncoderSettings(codec=codec, **overrides), http_transport=transport)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_encode_raw_and_multipart_return_the_payload_with_size_headers(tmp_path, photo_png):
    app = make_app(tmp_path)

    async def main():
        async with serving(app) as client:
            raw = await client.post("/encode", content=photo_png, headers={"Content-Type": "image/png"},
                                    params={"mode": "pics", **GIVEN})
            form = await client.post("/encode", files={"image": ("photo.png", photo_png, "image/png")},
                                     params={"mode": "pics", **GIVEN})
            pic = await client.post("/encode", content=photo_png, headers={"Content-Type": "image/png"},
                                    params={"mode": "pic", **GIVEN})
            return raw, form, pic

    raw, form, pic = run(main())
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "application/msgpack"
    payload = parse(raw.content)
    assert (payload.width, payload.height, payload.mode) == (192, 128, Mode.PICS)
    assert int(raw.headers["X-Payload-Bytes"]) == len(raw.content)
    assert float(raw.headers["X-Bpp"]) == pytest.approx(len(raw.content) * 8 / (192 * 128), rel=1e-4)
    assert int(raw.headers["X-Sketch-Bytes"]) == len(payload.sketch) > 0
    assert int(raw.headers["X-Prompt-Bytes"]) == len(payload.prompt)
    assert raw.headers["X-Candidate-Selection"] == "off"
    assert form.status_code == 200 and form.content == raw.content  # same image, same options, same bits
    assert pic.status_code == 200 and parse(pic.content).sketch is None


def test_bad_uploads_and_options_get_clear_4xx(tmp_path, photo_png):
    app = make_app(tmp_path, max_upload_bytes=len(photo_png) + 10, max_image_pixels=100 * 100)
    small = Image.open(io.BytesIO(photo_png)).convert("RGB").resize((60, 40))
    truncated = png_bytes(small)[:-400]

    async def main():
        async with serving(app) as client:
            post = client.post
            return {
                "text": await post("/encode", content=b"hello", headers={"Content-Type": "text/plain"}),
                "corrupt": await post("/encode", content=truncated, headers={"Content-Type": "image/png"}),
                "pixels": await post("/encode", content=photo_png, headers={"Content-Type": "image/png"}),
                "bytes": await post("/encode", content=photo_png + b"\0" * 100, headers={"Content-Type": "image/png"}),
                "mode": await post("/encode", content=photo_png, headers={"Content-Type": "image/png"},
                                   params={"mode": "jpeg"}),
                "candidates": await post("/encode", content=photo_png, headers={"Content-Type": "image/png"},
                                         params={"candidates": 3}),
                "no_field": await post("/encode", files={"file": ("a.png", photo_png, "image/png")}),
            }

    r = run(main())
    assert r["text"].status_code == 415 and r["text"].json()["error"] == "unsupported_media"
    assert r["corrupt"].status_code == 422 and r["corrupt"].json()["error"] == "invalid_image"
    assert r["pixels"].status_code == 413 and "pixels" in r["pixels"].json()["detail"]
    assert r["bytes"].status_code == 413
    assert r["mode"].status_code == 422 and r["mode"].json()["error"] == "invalid_request"
    assert r["candidates"].status_code == 422 and "power of two" in r["candidates"].json()["detail"]
    assert r["no_field"].status_code == 422 and "image" in r["no_field"].json()["detail"]


def fake_decoder(candidate_images: list[Image.Image], calls: list):
    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        n = int(request.url.params["n"])
        body = msgpack.packb({"indices": list(range(1, n + 1)), "format": "png",
                              "images": [png_bytes(im) for im in candidate_images[:n]]}, use_bin_type=True)
        return httpx.Response(200, content=body, headers={"Content-Type": "application/msgpack"})

    return httpx.MockTransport(handler)


def test_candidate_selection_sends_the_index_of_the_closest_rendering(tmp_path, photo_png, tiny_clip):
    original = Image.open(io.BytesIO(photo_png)).convert("RGB")
    others = [Image.new("RGB", original.size, colour) for colour in ((255, 0, 0), (0, 0, 0), (0, 0, 255))]
    renderings = [others[0], others[1], original, others[2]]  # candidate 3 is the input itself
    calls: list[httpx.Request] = []
    app = make_app(tmp_path, fake_decoder(renderings, calls), decoder_url="http://decoder:8001",
                   selection_clip_model=tiny_clip)

    async def main():
        async with serving(app) as client:
            return await client.post("/encode", content=photo_png, headers={"Content-Type": "image/png"},
                                     params={"candidates": 4, **GIVEN})

    response = run(main())
    assert response.status_code == 200, response.text
    assert parse(response.content).candidate == 3
    assert response.headers["X-Candidate"] == "3" and response.headers["X-Candidate-Selection"] == "selected 3 of 4"
    (call,) = calls
    assert call.url.path == "/candidates" and parse(call.content).candidate == 0


def test_unreachable_decoder_fails_clearly_or_falls_back(tmp_path, photo_png, tiny_clip):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": "internal_error", "detail": "boom"})

    down = make_app(tmp_path, httpx.MockTransport(refuse), decoder_url="http://decoder:8001",
                    selection_clip_model=tiny_clip)
    failing = make_app(tmp_path, httpx.MockTransport(broken), decoder_url="http://decoder:8001",
                       selection_clip_model=tiny_clip)
    unset = make_app(tmp_path)
    headers = {"Content-Type": "image/png"}

    async def main():
        async with serving(down) as a, serving(failing) as b, serving(unset) as c:
            return (
                await a.post("/encode", content=photo_png, headers=headers, params={"candidates": 2, **GIVEN}),
                await a.post("/encode", content=photo_png, headers=headers,
                             params={"candidates": 2, "candidate_fallback": "true", **GIVEN}),
                await b.post("/encode", content=photo_png, headers=headers, params={"candidates": 2, **GIVEN}),
                await c.post("/encode", content=photo_png, headers=headers, params={"candidates": 2, **GIVEN}),
            )

    unreachable, fallback, upstream_error, not_configured = run(main())
    assert unreachable.status_code == 503 and unreachable.json()["error"] == "upstream_unavailable"
    assert "unreachable" in unreachable.json()["detail"] and "Retry-After" in unreachable.headers
    assert fallback.status_code == 200 and parse(fallback.content).candidate == 0
    assert fallback.headers["X-Candidate-Selection"] == "fallback"
    assert upstream_error.status_code == 502 and "boom" in upstream_error.json()["detail"]
    assert not_configured.status_code == 503 and "DECODER_URL" in not_configured.json()["detail"]


def test_limiter_refuses_beyond_running_plus_waiting():
    async def main():
        limiter = _Limiter(running=1, waiting=1, retry_after_s=2, metrics=ServiceMetrics("encoder"))
        release = asyncio.Event()
        order = []

        async def hold(name):
            async with limiter.slot():
                order.append(name)
                await release.wait()

        first, second = asyncio.ensure_future(hold("a")), asyncio.ensure_future(hold("b"))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError) as info:
            async with limiter.slot():
                pass
        release.set()
        await asyncio.gather(first, second)
        async with limiter.slot():  # room again
            order.append("c")
        return order, info.value

    order, error = run(main())
    assert order == ["a", "b", "c"] and error.retry_after_s == 2


def test_a_request_coming_back_to_score_its_candidates_waits_instead_of_a_429():
    async def main():
        limiter = _Limiter(running=1, waiting=0, retry_after_s=2, metrics=ServiceMetrics("encoder"))
        release = asyncio.Event()

        async def hold():
            async with limiter.slot():
                await release.wait()

        holder = asyncio.ensure_future(hold())
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFullError):  # a new request: refused at once
            async with limiter.slot():
                pass

        async def score():
            async with limiter.slot(admitted=True):  # already admitted once: waits for the running slot
                return "scored"

        scoring = asyncio.ensure_future(score())
        await asyncio.sleep(0.05)
        waited = not scoring.done()
        release.set()
        await holder
        return waited, await scoring

    assert run(main()) == (True, "scored")


def test_health_metrics_and_openapi(tmp_path, photo_png):
    app = make_app(tmp_path)

    async def main():
        async with serving(app) as client:
            await client.post("/encode", content=photo_png, headers={"Content-Type": "image/png"}, params=GIVEN)
            return (await client.get("/health/live"), await client.get("/health/ready"),
                    (await client.get("/metrics")).text)

    live, ready, metrics = run(main())
    assert live.status_code == 200 and ready.status_code == 200
    assert 'textsketch_requests_total{method="POST",route="/encode",service="encoder",status="200"} 1.0' in metrics
    assert 'textsketch_stage_duration_seconds_count{service="encoder",stage="encode"} 1.0' in metrics
    for stage in ("resize", "prompt", "edges", "sketch"):  # the codec's own stages, from EncodeResult.stage_seconds
        assert f'textsketch_stage_duration_seconds_count{{service="encoder",stage="{stage}"}} 1.0' in metrics
    schema = app.openapi()["paths"]["/encode"]["post"]
    assert {"image/png", "multipart/form-data"} <= set(schema["requestBody"]["content"])
    assert "application/msgpack" in schema["responses"]["200"]["content"]


@pytest.mark.parametrize(("cpus", "encodes", "threads", "expected"), [
    (2, None, None, (1, 2)),  # the default: one encode per 4 cores, the cores shared out
    (16, None, None, (4, 4)),
    (16, 2, None, (2, 8)),
    (3, 4, None, (4, 1)),  # never fewer than one thread
    (8, 2, 3, (2, 3)),  # both set: as given
])
def test_encode_concurrency_shares_the_cores_out(cpus, encodes, threads, expected):
    settings = EncoderSettings(max_concurrent_encodes=encodes, torch_threads=threads)
    assert settings.encode_concurrency(cpus) == expected


def test_available_cpus_respects_a_cgroup_quota(tmp_path):
    from services.devices import available_cpus

    unlimited = available_cpus(tmp_path / "missing")
    assert unlimited >= 1
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # docker --cpus=1.5
    assert available_cpus(quota) == min(unlimited, 2)
    quota.write_text("max 100000\n")
    assert available_cpus(quota) == unlimited


def test_the_cpu_budget_follows_omp_num_threads_when_set():
    from services.devices import available_cpus, cpu_budget

    assert cpu_budget({"OMP_NUM_THREADS": "3"}) == 3  # e.g. a Ray replica with num_cpus 3
    assert cpu_budget({"OMP_NUM_THREADS": "junk"}) == cpu_budget({}) == available_cpus()


def test_the_encoder_sets_its_torch_threads_at_start(tmp_path, photo_png):
    import torch

    before = torch.get_num_threads()
    app = make_app(tmp_path, max_concurrent_encodes=1, torch_threads=1)

    async def main():
        async with serving(app) as client:
            return (await client.get("/health/ready")).status_code, torch.get_num_threads()

    try:
        assert run(main()) == (200, 1)
    finally:
        torch.set_num_threads(before)
