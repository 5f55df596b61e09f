"""Decoder app through the ASGI transport, with a fake reconstructor (real bitstream and text coder)."""

from __future__ import annotations

import asyncio
import io

import msgpack
import pytest
from PIL import Image

from decoder_service.app import create_app, negotiate_image_format
from decoder_service.settings import DecoderSettings
from services.bitstream.container import derive_seed, parse
from services.profiles import ProfileId
from services.serving.errors import NotAcceptableError
from services.settings import CodecSettings
from services.testing.fakes import FakeReconstructor, seed_colour
from services.testing.load import parse_histogram_counts
from services.testing.payloads import pic_payload
from services.testing.servers import serving


def make_app(tmp_path, **overrides):
    defaults = {"handle_sigterm": False, "max_queue_delay_ms": 20, "max_batch_size": 4, "max_candidates": 8,
                    "codec": CodecSettings(profile="tiny", cache_dir=tmp_path)}
    settings = DecoderSettings(**{**defaults, **overrides})
    fakes: list[FakeReconstructor] = []

    def factory(profile, codec):
        fakes.append(FakeReconstructor(profile, codec))
        return fakes[-1]

    app = create_app(settings, reconstructor_factory=factory)
    return app, fakes[0]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


MSGPACK = {"Content-Type": "application/msgpack"}


def test_decode_returns_png_at_original_size_and_warms_every_batch_size(tmp_path):
    app, fake = make_app(tmp_path)
    data = pic_payload(width=150, height=100)

    async def main():
        async with serving(app) as client:
            png = await client.post("/decode", content=data, headers=MSGPACK)
            webp = await client.post("/decode", content=data, headers={**MSGPACK, "Accept": "image/webp"})
            jpeg = await client.post("/decode", content=data, headers={**MSGPACK, "Accept": "text/html;q=0.9, image/jpeg"})
            bad = await client.post("/decode", content=data, headers={**MSGPACK, "Accept": "text/html"})
            return png, webp, jpeg, bad

    png, webp, jpeg, bad = run(main())
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(png.content))
    assert image.size == (150, 100)
    assert image.getpixel((0, 0)) == seed_colour(derive_seed(parse(data)))
    assert webp.headers["content-type"] == "image/webp" and Image.open(io.BytesIO(webp.content)).format == "WEBP"
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    assert bad.status_code == 406 and bad.json()["error"] == "not_acceptable"
    assert fake.warmed == [1, 2, 3, 4, 8]  # every batch size 1..4, plus candidate groups up to 8


def test_accept_negotiation_honours_q_values():
    assert negotiate_image_format(None) == "png"
    assert negotiate_image_format("*/*") == "png"
    assert negotiate_image_format("image/webp;q=0.5, image/jpeg;q=0.8") == "jpeg"
    assert negotiate_image_format("image/avif, image/*;q=0.1") == "png"
    with pytest.raises(NotAcceptableError):
        negotiate_image_format("image/png;q=0, application/json")


def test_bad_payloads_get_4xx_with_the_bitstream_message(tmp_path):
    app, fake = make_app(tmp_path, max_body_bytes=2000)
    other_profile = pic_payload(profile=int(ProfileId.SD21_HED))

    async def main():
        async with serving(app) as client:
            return (
                await client.post("/decode", content=b"\x92\x01\x02", headers=MSGPACK),
                await client.post("/decode", content=pic_payload()[:-1], headers=MSGPACK),
                await client.post("/decode", content=other_profile, headers=MSGPACK),
                await client.post("/decode", content=pic_payload(), headers={"Content-Type": "text/plain"}),
                await client.post("/decode", content=b"\x00" * 3000, headers=MSGPACK),
            )

    garbage, truncated, mismatch, wrong_type, too_big = run(main())
    assert garbage.status_code == 422 and garbage.json()["error"] == "invalid_payload"
    assert "not a text+sketch payload" in garbage.json()["detail"]
    assert truncated.status_code == 422 and "invalid payload" in truncated.json()["detail"]
    assert mismatch.status_code == 409 and "sd21-hed" in mismatch.json()["detail"]
    assert wrong_type.status_code == 415
    assert too_big.status_code == 413
    assert fake.batches == []


def test_concurrent_requests_form_batches_visible_in_metrics(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=4, max_queue_delay_ms=200)

    async def main():
        async with serving(app) as client:
            # one measured batch first: until then admission queues one batch's worth (cold start)
            assert (await client.post("/decode", content=pic_payload(), headers=MSGPACK)).status_code == 200
            payloads = [pic_payload(token_ids=(320 + i, 530)) for i in range(8)]
            responses = await asyncio.gather(
                *(client.post("/decode", content=p, headers=MSGPACK) for p in payloads))
            metrics = (await client.get("/metrics")).text
            return responses, metrics

    responses, metrics = run(main())
    assert [r.status_code for r in responses] == [200] * 8
    assert sorted(len(b) for b in fake.batches[1:]) == [4, 4]
    counts = parse_histogram_counts(metrics, "textsketch_batch_size")
    assert counts[float("inf")] - counts[1.0] == 2  # two batches larger than one
    assert 'textsketch_requests_total{method="POST",route="/decode",service="decoder",status="200"} 9.0' in metrics
    assert "textsketch_queue_wait_seconds_count" in metrics and "textsketch_inference_duration_seconds" in metrics


def test_queue_full_is_429_with_retry_after(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=1, max_queue_delay_ms=0, max_queue_size=2, retry_after_s=2)

    async def main():
        async with serving(app) as client:
            # one measured batch first (cold-start admission), then hold the worker
            assert (await client.post("/decode", content=pic_payload(), headers=MSGPACK)).status_code == 200
            fake.gate.clear()
            fake.batch_started.clear()
            first = asyncio.ensure_future(client.post("/decode", content=pic_payload(), headers=MSGPACK))
            await asyncio.get_running_loop().run_in_executor(None, fake.batch_started.wait, 10)
            queued = [asyncio.ensure_future(client.post("/decode", content=pic_payload(), headers=MSGPACK))
                      for _ in range(2)]
            while app.state.runtime.scheduler.queued_jobs < 2:
                await asyncio.sleep(0.01)
            rejected = await client.post("/decode", content=pic_payload(), headers=MSGPACK)
            fake.gate.set()
            rest = await asyncio.gather(first, *queued)
            metrics = (await client.get("/metrics")).text
            return rejected, rest, metrics

    rejected, rest, metrics = run(main())
    # computed from the measured throughput (a fast fake: the 1 s floor), not the cold-start setting
    assert rejected.status_code == 429 and rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"] == "queue_full"
    assert [r.status_code for r in rest] == [200, 200, 200]
    assert 'textsketch_rejections_total{reason="queue_full",service="decoder"} 1.0' in metrics


def test_deadline_passed_in_queue_is_504(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=1, max_queue_delay_ms=0, request_timeout_s=0.2)
    fake.gate.clear()

    async def main():
        async with serving(app) as client:
            first = asyncio.ensure_future(client.post("/decode", content=pic_payload(), headers=MSGPACK))
            await asyncio.get_running_loop().run_in_executor(None, fake.batch_started.wait, 10)
            late = await client.post("/decode", content=pic_payload(), headers=MSGPACK)
            fake.gate.set()
            return await first, late

    first, late = run(main())
    assert first.status_code == 200  # already running when its deadline passed
    assert late.status_code == 504 and late.json()["error"] == "deadline_exceeded"
    assert len(fake.batches) == 1


def test_a_failing_batch_fails_its_requests_with_500_and_the_service_recovers(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=4, max_queue_delay_ms=100)

    async def main():
        async with serving(app) as client:
            fake.fail = True
            failed = await asyncio.gather(
                *(client.post("/decode", content=pic_payload(token_ids=(400 + i,)), headers=MSGPACK) for i in range(3)))
            fake.fail = False
            ok = await client.post("/decode", content=pic_payload(), headers=MSGPACK)
            return failed, ok

    failed, ok = run(main())
    assert [r.status_code for r in failed] == [500, 500, 500]
    assert failed[0].json() == {"error": "internal_error", "detail": "internal error; the server log has the details"}
    assert ok.status_code == 200


def test_disconnected_client_is_dropped_before_its_batch(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=1, max_queue_delay_ms=0)
    fake.gate.clear()

    async def main():
        async with serving(app):
            runtime = app.state.runtime
            job = runtime.jobs_for(parse(pic_payload()))
            blocker = asyncio.ensure_future(runtime.run_jobs(job))
            await asyncio.get_running_loop().run_in_executor(None, fake.batch_started.wait, 10)

            async def gone() -> bool:
                return True

            with pytest.raises(Exception) as info:
                await runtime.run_jobs(runtime.jobs_for(parse(pic_payload(token_ids=(999,)))), gone)
            fake.gate.set()
            await blocker
            await runtime.scheduler.drain(5)
            return info.value

    error = run(main())
    assert type(error).__name__ == "RequestCancelledError"
    assert len(fake.batches) == 1  # only the blocker ever reached the model


def test_candidates_render_in_one_batch_with_the_seeds_of_each_index(tmp_path):
    app, fake = make_app(tmp_path, max_batch_size=2)
    data = pic_payload()

    async def main():
        async with serving(app) as client:
            ok = await client.post("/candidates", params={"n": 4}, content=data, headers=MSGPACK)
            not_pow2 = await client.post("/candidates", params={"n": 3}, content=data, headers=MSGPACK)
            too_many = await client.post("/candidates", params={"n": 16}, content=data, headers=MSGPACK)
            chosen = await client.post("/decode", content=parse(data).with_candidate(3).to_bytes(), headers=MSGPACK)
            return ok, not_pow2, too_many, chosen

    ok, not_pow2, too_many, chosen = run(main())
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/msgpack"
    message = msgpack.unpackb(ok.content)
    assert message["indices"] == [1, 2, 3, 4] and message["format"] == "png"
    colours = [Image.open(io.BytesIO(im)).getpixel((0, 0)) for im in message["images"]]
    assert colours == [seed_colour(derive_seed(parse(data), k)) for k in (1, 2, 3, 4)]
    assert len(fake.batches[0]) == 4  # one batch, larger than max_batch_size: a group is never split
    assert not_pow2.status_code == 422 and too_many.status_code == 422
    # the payload later sent with candidate=3 decodes to candidate 3
    assert Image.open(io.BytesIO(chosen.content)).getpixel((0, 0)) == colours[2]


def test_health_reflects_loading_ready_and_draining(tmp_path):
    app, fake = make_app(tmp_path)
    fake.load_delay_s = 0.5

    async def main():
        async with serving(app, wait_ready=False) as client:
            loading_ready = await client.get("/health/ready")
            loading_live = await client.get("/health/live")
            loading_decode = await client.post("/decode", content=pic_payload(), headers=MSGPACK)
            await app.state.runtime.wait_ready(10)
            ready = await client.get("/health/ready")
            app.state.runtime.begin_drain()
            draining_ready = await client.get("/health/ready")
            draining_decode = await client.post("/decode", content=pic_payload(), headers=MSGPACK)
            return loading_ready, loading_live, loading_decode, ready, draining_ready, draining_decode

    loading_ready, loading_live, loading_decode, ready, draining_ready, draining_decode = run(main())
    assert loading_ready.status_code == 503 and loading_ready.json()["status"] == "loading"
    assert loading_live.status_code == 200
    assert loading_decode.status_code == 503 and loading_decode.json()["error"] == "not_ready"
    assert "Retry-After" in loading_decode.headers
    assert ready.status_code == 200 and ready.json()["profile"] == "tiny"
    assert draining_ready.status_code == 503 and draining_ready.json()["status"] == "draining"
    assert draining_decode.status_code == 503 and draining_decode.json()["error"] == "draining"


def test_failed_load_makes_liveness_fail(tmp_path):
    app, fake = make_app(tmp_path)

    def broken() -> None:
        raise OSError("weights not found")

    fake.load = broken

    async def main():
        async with serving(app, wait_ready=False) as client:
            with pytest.raises(RuntimeError):
                await app.state.runtime.wait_ready(10)
            return await client.get("/health/live"), await client.post("/decode", content=pic_payload(), headers=MSGPACK)

    live, decode = run(main())
    assert live.status_code == 503 and "weights not found" in live.json()["detail"]
    assert decode.status_code == 503


def test_bearer_token_guards_work_routes_but_not_health(tmp_path):
    app, _ = make_app(tmp_path, auth_token="s3cret")

    async def main():
        async with serving(app) as client:
            return (
                await client.post("/decode", content=pic_payload(), headers=MSGPACK),
                await client.post("/decode", content=pic_payload(), headers={**MSGPACK, "Authorization": "Bearer s3cret"}),
                await client.get("/health/ready"),
            )

    denied, allowed, health = run(main())
    assert denied.status_code == 401 and denied.headers["WWW-Authenticate"] == "Bearer"
    assert allowed.status_code == 200 and health.status_code == 200


def test_openapi_documents_msgpack_bodies_and_image_responses(tmp_path):
    app, _ = make_app(tmp_path)
    schema = app.openapi()
    decode = schema["paths"]["/decode"]["post"]
    assert "application/msgpack" in decode["requestBody"]["content"]
    assert {"image/png", "image/webp", "image/jpeg"} <= set(decode["responses"]["200"]["content"])
    assert {"409", "422", "429", "503", "504"} <= set(decode["responses"])
    candidates = schema["paths"]["/candidates"]["post"]
    assert "application/msgpack" in candidates["responses"]["200"]["content"]


def test_out_of_memory_maps_to_503_with_retry_after():
    from services.errors import DecodeOutOfMemoryError
    from services.serving.http import status_for

    assert status_for(DecodeOutOfMemoryError("one job does not fit")) == (503, "out_of_memory")
