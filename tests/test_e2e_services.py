"""Both services as real uvicorn processes on 127.0.0.1 with the tiny profile.

Every tiny decode runs at the profile's real working size (short side 512),
a few seconds each on this CPU, so one decoder is shared by the tests below
and kept at ``max_batch_size=2``; the drain test starts its own.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time

import httpx
import pytest
from PIL import Image

from services.bitstream.container import Mode, parse
from services.serving.client import ServiceClientError, TextSketchClient
from services.testing.load import parse_histogram_counts
from services.testing.payloads import pic_payload
from services.testing.servers import start_service
from services.tiny.encoders import build_tiny_clip
from tests.paths import EXAMPLES

pytestmark = pytest.mark.e2e

MSGPACK = {"Content-Type": "application/msgpack"}


def decoder_env(cache_dir, **overrides) -> dict[str, str]:
    env = {
        "TEXTSKETCH_PROFILE": "tiny",
        "TEXTSKETCH_CACHE_DIR": str(cache_dir),
        "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "2",
        "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "1000",
        "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "2",
        "TEXTSKETCH_DECODER_MAX_CANDIDATES": "4",
        # Work-based admission: room for a 4-candidate 1536x512 group (4 x 1.6 units) beside the 2 queued jobs.
        "TEXTSKETCH_DECODER_MAX_QUEUE_COST": "20",
        # One warm-up size keeps start-up short here; production warms every size.
        "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
    }
    env.update({f"TEXTSKETCH_DECODER_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("e2e-cache")


@pytest.fixture(scope="module")
def decoder(cache_dir, tmp_path_factory):
    service = start_service("decoder_service", decoder_env(cache_dir), tmp_path_factory.mktemp("logs"))
    try:
        service.wait_ready(300)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def encoder(cache_dir, tmp_path_factory, decoder):
    clip = build_tiny_clip(tmp_path_factory.mktemp("selection-clip"))
    env = {"TEXTSKETCH_PROFILE": "tiny", "TEXTSKETCH_CACHE_DIR": str(cache_dir), "TEXTSKETCH_PROMPT_SOURCE": "given",
           "TEXTSKETCH_ENCODER_DECODER_URL": decoder.url, "TEXTSKETCH_ENCODER_SELECTION_CLIP_MODEL": str(clip)}
    service = start_service("encoder_service", env, tmp_path_factory.mktemp("logs"))
    try:
        service.wait_ready(120)
        yield service
    finally:
        service.stop()


def metrics_text(service) -> str:
    return httpx.get(f"{service.url}/metrics", timeout=10).text


def metric_value(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def test_encode_a_kodak_image_over_http_and_decode_it(encoder, decoder):
    path = EXAMPLES / "kodim01.png"  # 384x256: generated at the working size 768x512, returned at 384x256
    with TextSketchClient(encoder_url=encoder.url, decoder_url=decoder.url) as client:
        data = client.encode(path, mode="pics", prompt_source="given", text="a brick house with a red door")
        png = client.decode(data)
        assert client.health("decoder")["status"] == "ready"
    payload = parse(data)
    assert (payload.width, payload.height, payload.mode) == (384, 256, Mode.PICS)
    assert len(data) < 2000
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.size == (384, 256) and image.mode == "RGB"
    assert len(set(image.convert("L").getdata())) > 1  # an actual rendering, not a flat fill


def test_candidate_selection_goes_through_the_decoder(encoder, decoder):
    image = Image.new("RGB", (96, 64), (200, 120, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    response = httpx.post(f"{encoder.url}/encode", content=buffer.getvalue(), headers={"Content-Type": "image/png"},
                          params={"mode": "pic", "prompt_source": "given", "text": "an orange wall",
                                  "candidates": 2}, timeout=300)
    assert response.status_code == 200, response.text
    assert parse(response.content).candidate in (1, 2)
    assert response.headers["X-Candidate-Selection"] == f"selected {parse(response.content).candidate} of 2"
    assert 'route="/candidates",service="decoder",status="200"' in metrics_text(decoder)


def test_concurrent_requests_form_batches_larger_than_one(decoder):
    before = parse_histogram_counts(metrics_text(decoder), "textsketch_batch_size")

    async def main():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(f"{decoder.url}/decode", content=pic_payload(token_ids=(320 + i,)), headers=MSGPACK)
                for i in range(2)))

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200, 200]
    after = parse_histogram_counts(metrics_text(decoder), "textsketch_batch_size")
    larger_than_one = (after[float("inf")] - after[1.0]) - (before[float("inf")] - before[1.0])
    assert larger_than_one >= 1


def test_overload_deadline_and_disconnect_while_the_worker_is_busy(decoder):
    """A 4-candidate group keeps the worker busy; meanwhile: a deadline the estimated wait cannot meet is
    refused at once (429, computed Retry-After), a disconnect is dropped, then a full queue answers 429."""
    with TextSketchClient(decoder_url=decoder.url) as client:
        client.decode(pic_payload(token_ids=(499,)))  # the decoder has measured its throughput at least once
    start_metrics = metrics_text(decoder)
    cancelled_before = metric_value(start_metrics, 'textsketch_rejections_total{reason="cancelled"')
    overloaded_before = metric_value(start_metrics, 'textsketch_rejections_total{reason="overloaded"')
    jobs_before = metric_value(start_metrics, "textsketch_batch_size_sum")

    async def main():
        async with httpx.AsyncClient(timeout=300) as client:
            url = decoder.url
            started_before = metric_value((await client.get(f"{url}/metrics")).text, "textsketch_queue_wait_seconds_count")
            # 4 candidates at a 1536x512 working size: seconds of work, so the worker is still busy
            # after the deadline and disconnect steps below (at 768x512 it sometimes finished first).
            busy = asyncio.ensure_future(client.post(
                f"{url}/candidates", params={"n": 4}, content=pic_payload(width=192, height=64), headers=MSGPACK))
            await wait_until_running(client, url, started_before)
            late = await client.post(f"{url}/decode", content=pic_payload(token_ids=(500,)),
                                     headers={**MSGPACK, "X-Request-Timeout": "0.3"})
            with pytest.raises(httpx.ReadTimeout):  # this client gives up and closes its connection
                await client.post(f"{url}/decode", content=pic_payload(token_ids=(501,)), headers=MSGPACK,
                                  timeout=0.5)
            # the server notices the disconnect within disconnect_poll_s and drops the request
            await wait_for_metric(client, url, 'textsketch_rejections_total{reason="cancelled"', cancelled_before + 1)
            crowd = await asyncio.gather(*(
                client.post(f"{url}/decode", content=pic_payload(token_ids=(600 + i,)), headers=MSGPACK)
                for i in range(3)))
            return await busy, late, crowd

    busy, late, crowd = asyncio.run(main())
    assert busy.status_code == 200
    # 0.3 s is less than the rest of the running batch: refused before queueing, not left to time out
    assert late.status_code == 429 and "estimated wait" in late.json()["detail"]
    assert int(late.headers["Retry-After"]) >= 1
    statuses = sorted(r.status_code for r in crowd)
    assert statuses == [200, 200, 429]
    rejected = next(r for r in crowd if r.status_code == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    end_metrics = metrics_text(decoder)
    assert metric_value(end_metrics, 'textsketch_rejections_total{reason="cancelled"') == cancelled_before + 1
    assert metric_value(end_metrics, 'textsketch_rejections_total{reason="overloaded"') == overloaded_before + 1
    # only the 4 candidates and the 2 admitted crowd requests ever reached the model
    assert metric_value(end_metrics, "textsketch_batch_size_sum") == jobs_before + 6


async def wait_for_metric(client: httpx.AsyncClient, url: str, prefix: str, value: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if metric_value((await client.get(f"{url}/metrics")).text, prefix) >= value:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{prefix} never reached {value}")


async def wait_until_running(client: httpx.AsyncClient, url: str, started_before: float, timeout_s: float = 30) -> None:
    """Until one more request left the queue for the worker (its queue wait was recorded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = (await client.get(f"{url}/metrics")).text
        if metric_value(text, "textsketch_queue_wait_seconds_count") > started_before:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("the batch never started")


def test_bad_payload_and_wrong_profile_over_http(decoder):
    with TextSketchClient(decoder_url=decoder.url) as client:
        with pytest.raises(ServiceClientError) as bad:
            client.decode(b"\x93\x01\x02\x03")
        with pytest.raises(ServiceClientError) as other:
            client.decode(pic_payload(profile=1))
    assert bad.value.status == 422 and "payload" in bad.value.detail
    assert other.value.status == 409 and other.value.code == "profile_mismatch"


def test_sigterm_drains_every_accepted_request(cache_dir, tmp_path_factory):
    service = start_service("decoder_service", decoder_env(cache_dir, max_queue_size=8),
                            tmp_path_factory.mktemp("logs"))
    try:
        service.wait_ready(300)

        async def main():
            async with httpx.AsyncClient(timeout=300) as client:
                # one measured batch first: until then the decoder queues one batch's worth (cold start)
                warm = await client.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK)
                assert warm.status_code == 200
                accepted = [asyncio.ensure_future(client.post(
                    f"{service.url}/decode", content=pic_payload(token_ids=(700 + i,)), headers=MSGPACK))
                    for i in range(3)]
                await asyncio.sleep(1.0)  # all three are in: one batch running, one request queued
                service.terminate()
                await asyncio.sleep(0.3)
                try:
                    after = (await client.get(f"{service.url}/health/ready", timeout=5)).status_code
                except httpx.HTTPError:
                    after = "refused"
                return await asyncio.gather(*accepted), after

        responses, after = asyncio.run(main())
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert all(Image.open(io.BytesIO(r.content)).size == (96, 64) for r in responses)
        assert after in (503, "refused")  # not taking new work once SIGTERM arrived
        # uvicorn re-raises the captured SIGTERM after its graceful shutdown
        assert service.process.wait(120) in (0, -signal.SIGTERM)
        assert "timeout graceful shutdown exceeded" not in service.log()
    finally:
        service.stop()
