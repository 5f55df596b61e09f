"""Hostile payloads: the parser and the decoder's body decoding raise only typed errors; a running decoder answers 4xx.

The large runs (100,000 parser cases, 5,000 over HTTP) are ``bench/fuzz_bench.py``; these are the small versions.
"""

from __future__ import annotations

import asyncio
import collections
import time
import tracemalloc

import httpx
import pytest

from services.bitstream.container import Mode, Payload, parse
from services.bitstream.text_coder import encode_token_ids
from services.codec import check_working_size, payload_to_job
from services.errors import BitstreamError, ProfileMismatchError
from services.limits import DEFAULT_MAX_WORKING_PIXELS
from services.profiles import PROFILES_BY_ID, get_profile
from services.testing.fakes import FAKE_DECODER
from services.testing.hostile import hostile_payloads, msgpack_traps
from services.testing.load import post_all
from services.testing.payloads import locally_valid
from services.testing.servers import start_process

MAX_WORKING_PIXELS = DEFAULT_MAX_WORKING_PIXELS  # CodecSettings.max_working_pixels default


def decode_like_the_decoder(body: bytes) -> str:
    """What the decoder does with a body before the model, reduced to an outcome name."""
    try:
        payload = parse(body)
    except BitstreamError:
        return "parse_error"
    profile = PROFILES_BY_ID[payload.profile]
    try:
        check_working_size(payload, profile, MAX_WORKING_PIXELS)
        payload_to_job(payload, profile)
    except BitstreamError:
        return "body_error"
    return "valid"


def test_2000_hostile_payloads_give_only_bitstream_errors():
    outcomes = collections.Counter(decode_like_the_decoder(body) for body in hostile_payloads(2000, seed=7))
    assert sum(outcomes.values()) == 2000
    # every class is exercised: the mutations reach the prompt/sketch decoders and some stay valid
    assert outcomes["parse_error"] > 1000 and outcomes["body_error"] > 0 and outcomes["valid"] > 0


@pytest.mark.parametrize("index", range(len(msgpack_traps())))
def test_msgpack_traps_fail_fast_without_allocating(index):
    body = msgpack_traps()[index]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(BitstreamError, match="invalid payload"):
            parse(body)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 4 * len(body) + 1_000_000  # declared 4 GiB lengths are never allocated


def test_extreme_aspect_ratio_is_refused_before_a_working_size_allocation():
    profile = get_profile("tiny")
    payload = parse(Payload(int(profile.id), 16384, 1, Mode.PIC, encode_token_ids([320])).to_bytes())
    assert profile.working_size(16384, 1) == (8388608, 512)  # 4.3 Gpx if nothing stopped it
    with pytest.raises(BitstreamError, match="working size"):
        check_working_size(payload, profile, MAX_WORKING_PIXELS)
    check_working_size(parse(Payload(int(profile.id), 768, 512, Mode.PIC, encode_token_ids([320])).to_bytes()),
                       profile, MAX_WORKING_PIXELS)


def test_another_profiles_payload_is_a_profile_mismatch_not_a_crash():
    golden_like = Payload(1, 768, 512, Mode.PIC, encode_token_ids([320])).to_bytes()
    with pytest.raises(ProfileMismatchError):
        payload_to_job(parse(golden_like), get_profile("tiny"))


def test_200_hostile_payloads_against_a_running_decoder_all_get_4xx(tmp_path):
    bodies = list(hostile_payloads(200, seed=11))
    service = start_process(FAKE_DECODER, {"TEXTSKETCH_CACHE_DIR": str(tmp_path / "cache"),
                                           "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
                                           "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "256"}, tmp_path)
    try:
        service.wait_ready(60)
        answers = asyncio.run(post_all(f"{service.url}/decode", bodies, concurrency=8, timeout_s=30))
        ready = httpx.get(f"{service.url}/health/ready", timeout=5).status_code
    finally:
        service.stop()
    statuses = collections.Counter(a.status for a in answers)
    assert len(answers) == 200 and 0 not in statuses  # every body answered
    assert not [s for s in statuses if s >= 500], statuses
    for answer in answers:
        if answer.status == 200:  # a mutation that is still a valid tiny payload decodes, as it should
            assert locally_valid(bodies[answer.index], MAX_WORKING_PIXELS)
        else:
            assert 400 <= answer.status < 500 and answer.error and answer.detail, answer
    assert statuses[422] > 150  # most are malformed payloads, each with the bitstream's message
    assert max(a.seconds for a in answers) < 10
    assert ready == 200
    assert "Traceback" not in service.log()


def test_the_decoder_answers_an_extreme_aspect_ratio_with_422(tmp_path):
    from decoder_service.app import create_app
    from decoder_service.settings import DecoderSettings
    from services.settings import CodecSettings
    from services.testing.fakes import FakeReconstructor
    from services.testing.servers import serving

    settings = DecoderSettings(handle_sigterm=False, warmup_batch_sizes=[1],
                               codec=CodecSettings(profile="tiny", cache_dir=tmp_path))
    fakes: list[FakeReconstructor] = []
    app = create_app(settings, reconstructor_factory=lambda p, c: fakes.append(FakeReconstructor(p, c)) or fakes[-1])
    body = Payload(int(get_profile("tiny").id), 16384, 1, Mode.PIC, encode_token_ids([320, 1929])).to_bytes()

    async def main():
        async with serving(app) as client:
            return await client.post("/decode", content=body, headers={"Content-Type": "application/msgpack"})

    response = asyncio.run(main())
    assert response.status_code == 422 and response.json()["error"] == "invalid_payload"
    assert "8388608x512 working size" in response.json()["detail"]
    assert fakes[0].batches == []  # nothing reached the model
