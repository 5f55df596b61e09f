"""Decoder capacity against real uvicorn processes on 127.0.0.1: work-based admission, bounds on what
a payload may ask, drain without loss, stopping work for gone clients, liveness of the model thread.

The fake model (``services.testing.fakes``: real app, scheduler, bitstream and sketch decoding; flat
images, a fixed delay per batch in ten "steps") keeps these fast; ``bench/capacity_bench.py`` runs
the same probes at full size against the real tiny diffusion decoder.
"""

from __future__ import annotations

import asyncio
import collections
import time

import httpx
import pytest

from services.testing.fakes import FAKE_DECODER, HANG_TOKEN
from services.testing.load import metric_sum, post_all
from services.testing.payloads import pic_payload
from services.testing.servers import start_process

MSGPACK = {"Content-Type": "application/msgpack"}
# The 20-byte amplification probe: a valid v1 tiny PIC payload declaring an 8192x8192 output.
AMPLIFIER = bytes.fromhex("986164cd2000cd200000c40601a4d24d5559c000")


def fake_env(tmp_path, *, delay_s: float = 0.02, hang_s: float = 0.0, **decoder) -> dict[str, str]:
    env = {"TEXTSKETCH_CACHE_DIR": str(tmp_path / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
           "TEXTSKETCH_FAKE_DELAY_S": str(delay_s), "TEXTSKETCH_FAKE_HANG_S": str(hang_s)}
    env.update({f"TEXTSKETCH_DECODER_{k.upper()}": str(v) for k, v in decoder.items()})
    return env


@pytest.fixture
def fake_decoder(tmp_path):
    started = []

    def start(**settings):
        service = start_process(FAKE_DECODER, fake_env(tmp_path, **settings), tmp_path)
        started.append(service)
        service.wait_ready(60)
        return service

    yield start
    for service in started:
        service.stop()


def metrics(service) -> str:
    return httpx.get(f"{service.url}/metrics", timeout=10).text


def test_payloads_asking_for_huge_outputs_or_working_sizes_are_refused_before_any_work(fake_decoder):
    service = fake_decoder()
    started = time.monotonic()
    huge_output = httpx.post(f"{service.url}/decode", content=AMPLIFIER, headers=MSGPACK, timeout=10)
    wide = httpx.post(f"{service.url}/decode", content=pic_payload(width=8192, height=512), headers=MSGPACK,
                      timeout=10)
    elapsed = time.monotonic() - started
    assert len(AMPLIFIER) == 20
    assert huge_output.status_code == 422 and "max_output_pixels" in huge_output.json()["detail"]
    assert wide.status_code == 422 and "max_working_pixels" in wide.json()["detail"]
    assert elapsed < 5  # no diffusion, no 45 MB PNG
    assert metric_sum(metrics(service), "textsketch_batch_size_count") == 0


def test_a_request_over_the_cost_ceiling_is_413_and_not_retryable(fake_decoder):
    # A 96x64 PIC job of the tiny profile costs 0.39 x 2 + 0.006 = 0.79 units: 4 candidates cost 3.2.
    service = fake_decoder(max_request_cost=2.0)
    one = httpx.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=30)
    many = httpx.post(f"{service.url}/candidates", params={"n": 4}, content=pic_payload(), headers=MSGPACK,
                      timeout=30)
    assert one.status_code == 200
    assert many.status_code == 413 and many.json()["error"] == "request_too_costly"
    assert "max_request_cost" in many.json()["detail"] and "retry-after" not in many.headers
    assert metric_sum(metrics(service), 'textsketch_rejections_total{reason="too_costly"') == 1


def test_overload_admits_only_work_that_can_finish_before_its_deadline(fake_decoder):
    """150 requests at concurrency 50 against a worker that does ~20 jobs/s and a 2 s deadline."""
    service = fake_decoder(delay_s=0.2, max_batch_size=4, max_queue_delay_ms=5, max_queue_size=64,
                           request_timeout_s=2)
    bodies = [pic_payload(token_ids=(1000 + i,)) for i in range(150)]
    answers = asyncio.run(post_all(f"{service.url}/decode", bodies, concurrency=50, timeout_s=60))
    statuses = collections.Counter(a.status for a in answers)
    assert sum(statuses.values()) == 150 and set(statuses) <= {200, 429}, statuses  # no 504, none lost
    admitted = statuses[200]
    refused = [a for a in answers if a.status == 429]
    assert admitted >= 20 and refused
    retry_after = {int(a.retry_after) for a in refused}
    assert min(retry_after) >= 1
    text = metrics(service)
    assert metric_sum(text, "textsketch_batch_size_sum") == admitted  # every admitted job ran once
    assert metric_sum(text, 'textsketch_rejections_total{reason="overloaded"') >= 1


def test_sigterm_with_a_queue_longer_than_the_drain_timeout_answers_every_request(fake_decoder):
    """1 s per batch, batch size 1, a 2.5 s drain: some finish, the rest get a typed 503; never a 500."""
    service = fake_decoder(delay_s=1.0, max_batch_size=1, max_queue_size=16, drain_timeout_s=2.5,
                           request_timeout_s=60)

    async def main():
        async with httpx.AsyncClient(timeout=60) as client:
            # one measured batch first: until then admission holds one batch's worth (cold start)
            assert (await client.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK)).status_code == 200
            accepted = [asyncio.ensure_future(client.post(
                f"{service.url}/decode", content=pic_payload(token_ids=(700 + i,)), headers=MSGPACK))
                for i in range(6)]
            await asyncio.sleep(0.8)
            service.terminate()
            await asyncio.sleep(0.5)
            during = await client.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK)
            return await asyncio.gather(*accepted), during

    responses, during = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2, statuses
    for response in responses:
        if response.status_code == 503:
            assert response.json()["error"] == "draining" and int(response.headers["retry-after"]) >= 1
    # the listener stayed open during the drain: a new request got a typed 503, not "connection refused"
    assert during.status_code == 503 and during.json()["error"] == "draining"
    assert service.process.wait(30) is not None
    assert "timeout graceful shutdown exceeded" not in service.log().lower()


def test_a_running_batch_stops_when_its_client_is_gone(fake_decoder):
    service = fake_decoder(delay_s=4.0, max_batch_size=1)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{service.url}/decode", content=pic_payload(token_ids=(801,)), headers=MSGPACK,
                                  timeout=1.0)  # running by then; this client leaves
            started = time.monotonic()
            after = await client.post(f"{service.url}/decode", content=pic_payload(token_ids=(802,)),
                                      headers=MSGPACK)
            return after, time.monotonic() - started

    after, seconds = asyncio.run(main())
    assert after.status_code == 200
    # without the stop the next request waits for the rest of the abandoned 4 s batch first
    assert seconds < 6.0
    text = metrics(service)
    assert metric_sum(text, 'textsketch_inference_duration_seconds_count{outcome="error"') == 1


def test_liveness_fails_while_the_model_thread_is_stuck_and_recovers(fake_decoder):
    service = fake_decoder(hang_s=4.0, liveness_stall_s=1.0)

    async def main():
        async with httpx.AsyncClient(timeout=30) as client:
            stuck = asyncio.ensure_future(client.post(
                f"{service.url}/decode", content=pic_payload(token_ids=(HANG_TOKEN,)), headers=MSGPACK))
            seen = []
            deadline = time.monotonic() + 8
            while not stuck.done() and time.monotonic() < deadline:
                live = await client.get(f"{service.url}/health/live")
                seen.append((live.status_code, live.json()["status"]))
                await asyncio.sleep(0.2)
            await stuck
            return seen, (await client.get(f"{service.url}/health/live")).status_code

    seen, after = asyncio.run(main())
    assert (503, "stalled") in seen and (200, "alive") in seen
    assert after == 200


def test_metrics_report_cost_wait_and_build(fake_decoder):
    service = fake_decoder(request_timeout_s=240)
    httpx.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=30)
    text = metrics(service)
    for name in ("textsketch_queue_cost", "textsketch_in_flight_requests", "textsketch_estimated_wait_seconds",
                 "textsketch_oom_splits_total", 'textsketch_build_info{'):
        assert name in text, name
    assert 'textsketch_request_duration_seconds_bucket{le="240.0"' in text
    ready = httpx.get(f"{service.url}/health/ready", timeout=10).json()
    assert ready["max_queue_cost"] > 0 and "estimated_wait_s" in ready
