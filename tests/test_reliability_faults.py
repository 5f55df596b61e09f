"""Faults and overload with real uvicorn processes (fake model, real HTTP + scheduler + bitstream).

Small versions of ``bench/fault_bench.py`` and ``bench/overload_bench.py``.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time

import httpx
import pytest

from decoder_service.app import create_app
from decoder_service.settings import DecoderSettings
from services.settings import CodecSettings
from services.testing.fakes import FAKE_DECODER, POISON_TOKEN, PoisonReconstructor
from services.testing.load import post_all
from services.testing.payloads import pic_payload
from services.testing.servers import serving, start_process

MSGPACK = {"Content-Type": "application/msgpack"}


def fake_env(tmp_path, **decoder) -> dict[str, str]:
    env = {"TEXTSKETCH_CACHE_DIR": str(tmp_path / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]"}
    env.update({f"TEXTSKETCH_DECODER_{k.upper()}": str(v) for k, v in decoder.items()})
    return env


def test_decoder_killed_mid_load_gives_clear_errors_and_a_restart_serves(tmp_path):
    env = {**fake_env(tmp_path), "TEXTSKETCH_FAKE_LOAD_DELAY_S": "30"}
    first = start_process(FAKE_DECODER, env, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # wait until it listens (liveness) while still loading
            try:
                if httpx.get(f"{first.url}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                assert first.process.poll() is None, first.log()
                time.sleep(0.05)
        loading_ready = httpx.get(f"{first.url}/health/ready", timeout=5)
        loading_decode = httpx.post(f"{first.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=5)
        first.process.send_signal(signal.SIGKILL)
        assert first.process.wait(10) == -signal.SIGKILL
        with pytest.raises(httpx.ConnectError):
            httpx.post(f"{first.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=5)
    finally:
        first.stop()
    assert loading_ready.status_code == 503 and loading_ready.json()["status"] == "loading"
    assert loading_decode.status_code == 503 and loading_decode.json()["error"] == "not_ready"
    assert loading_decode.headers["retry-after"] == "5"

    second = start_process(FAKE_DECODER, {**env, "TEXTSKETCH_FAKE_LOAD_DELAY_S": "0.5"}, tmp_path, port=first.port)
    try:
        second.wait_ready(60)
        served = httpx.post(f"{second.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=30)
    finally:
        second.stop()
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"


def test_sigterm_with_queued_requests_completes_every_accepted_one(tmp_path):
    env = {**fake_env(tmp_path, max_batch_size=2, max_queue_size=64, max_queue_delay_ms=5),
           "TEXTSKETCH_FAKE_DELAY_S": "0.15"}
    service = start_process(FAKE_DECODER, env, tmp_path)
    try:
        service.wait_ready(60)

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                # one measured batch first: until then the decoder queues only one batch (cold start)
                assert (await client.post(f"{service.url}/decode", content=pic_payload(),
                                          headers=MSGPACK)).status_code == 200
                queued = [asyncio.ensure_future(client.post(f"{service.url}/decode", headers=MSGPACK,
                                                            content=pic_payload(token_ids=(500 + i,))))
                          for i in range(16)]
                previous = 0
                for _ in range(100):  # until the decoder holds them all (queue + running batch of 2) or stops taking
                    await asyncio.sleep(0.05)
                    state = (await client.get(f"{service.url}/health/ready")).json()
                    if state["queued_jobs"] + 2 >= 16 or 0 < state["queued_jobs"] < previous:
                        break
                    previous = state["queued_jobs"]
                service.terminate()
                await asyncio.sleep(0.2)
                try:
                    late = (await client.post(f"{service.url}/decode", content=pic_payload(), headers=MSGPACK)).status_code
                except httpx.HTTPError:
                    late = "refused"
                return await asyncio.gather(*queued), state["queued_jobs"], late

        responses, queued_at_sigterm, late = asyncio.run(main())
        exit_code = service.process.wait(60)
    finally:
        service.stop()
    assert queued_at_sigterm >= 8
    outcomes = [r.status_code if r.status_code == 200 else (r.status_code, r.json()["error"]) for r in responses]
    # Every request the decoder held completed; one still in transit at SIGTERM may be refused as draining.
    assert set(outcomes) <= {200, (503, "draining")}, outcomes
    assert outcomes.count(200) >= queued_at_sigterm
    assert late in (503, "refused")
    assert exit_code in (0, -signal.SIGTERM)


def test_a_failing_pipeline_call_fails_only_its_own_batch(tmp_path):
    made: list[PoisonReconstructor] = []

    def factory(profile, codec):
        made.append(PoisonReconstructor(profile, codec, delay_s=0.05))
        return made[-1]

    settings = DecoderSettings(handle_sigterm=False, max_batch_size=4, max_queue_delay_ms=30, warmup_batch_sizes=[1],
                               codec=CodecSettings(profile="tiny", cache_dir=tmp_path))
    app = create_app(settings, reconstructor_factory=factory)
    tokens = [(POISON_TOKEN,) if i % 7 == 3 else (600 + i,) for i in range(24)]

    async def main():
        async with serving(app) as client:
            # one measured batch first: until then the decoder queues one batch's worth (cold start)
            assert (await client.post("/decode", content=pic_payload(), headers=MSGPACK)).status_code == 200
            responses = []
            for start in range(0, 24, 6):  # waves, so batches form with and without the poison
                responses += await asyncio.gather(*(client.post("/decode", content=pic_payload(token_ids=t),
                                                                headers=MSGPACK) for t in tokens[start:start + 6]))
            return responses, (await client.get("/health/ready")).status_code

    responses, ready = asyncio.run(asyncio.wait_for(main(), 60))
    fake = made[0]
    fake.batches.pop(0)  # the warm-up decode
    poisoned = {job.token_ids for batch in fake.batches if any(POISON_TOKEN in j.token_ids for j in batch)
                for job in batch}
    for token_ids, response in zip(tokens, responses):
        expected = 500 if token_ids in poisoned else 200
        assert response.status_code == expected, (token_ids, response.status_code)
    assert collections.Counter(r.status_code for r in responses)[200] >= 8  # clean batches were served
    assert len(poisoned) < 24 and ready == 200


def test_small_overload_run_answers_every_request_with_200_or_429(tmp_path):
    env = {**fake_env(tmp_path, max_batch_size=4, max_queue_size=8, max_queue_delay_ms=5, retry_after_s=1),
           "TEXTSKETCH_FAKE_DELAY_S": "0.2"}  # ~20 jobs/s: well below the HTTP rate, so the queue fills
    service = start_process(FAKE_DECODER, env, tmp_path)
    try:
        service.wait_ready(60)
        bodies = [pic_payload(token_ids=(1000 + i,)) for i in range(300)]
        answers = asyncio.run(post_all(f"{service.url}/decode", bodies, concurrency=60, timeout_s=60))
        ready = httpx.get(f"{service.url}/health/ready", timeout=5).status_code
    finally:
        service.stop()
    statuses = collections.Counter(a.status for a in answers)
    assert sum(statuses.values()) == 300 and set(statuses) <= {200, 429, 503}, statuses
    assert statuses[200] > 0 and statuses[429] > 0
    assert all(int(a.retry_after) >= 1 for a in answers if a.status == 429)  # computed from the throughput
    assert ready == 200
