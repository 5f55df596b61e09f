"""The encoder as a real uvicorn process on 127.0.0.1 (tiny profile): upload limits while streaming,
declared image sizes checked before decoding, readiness after loading, and candidate selection
against a real tiny decoder (scorer `tiny`, a scorer that cannot load, with and without fallback).
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from PIL import Image

from services.bitstream.container import parse
from services.testing.hostile import jpeg_declaring, png_1bit
from services.testing.load import proc_kib, reset_peak_rss
from services.testing.servers import start_service

pytestmark = pytest.mark.e2e

UPLOAD_LIMIT = 256 * 1024
GIVEN = {"prompt_source": "given", "text": "a red house"}


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """An encoder with a 256 KiB upload limit (given prompts: its warm-up needs no caption model)."""
    env = {"TEXTSKETCH_PROMPT_SOURCE": "given", "TEXTSKETCH_ENCODER_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}
    service = start_service("encoder_service", env, tmp_path_factory.mktemp("logs"))
    try:
        service.wait_ready(120)
        yield service
    finally:
        service.stop()


def png(size=(96, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 120, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def chunks(head: bytes, total: int, tail: bytes = b"", chunk: int = 64 * 1024):
    """A body of ``total`` bytes sent chunked (an iterator: no Content-Length)."""
    yield head
    for _ in range(total // chunk):
        yield b"\0" * chunk
    yield tail


def test_chunked_uploads_over_the_limit_are_refused_at_the_limit(limited):
    boundary = "textsketch-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png()
    total = 64 * 1024 * 1024  # 256 times the limit
    pid = limited.process.pid
    answers = {}
    for name, body, content_type in (
            ("multipart", chunks(head, total, f"\r\n--{boundary}--\r\n".encode()),
             f"multipart/form-data; boundary={boundary}"),
            ("raw", chunks(png(), total), "image/png")):
        rss_before = reset_peak_rss(pid)
        start = time.monotonic()
        response = httpx.post(f"{limited.url}/encode", params=GIVEN, content=body,
                              headers={"Content-Type": content_type}, timeout=60)
        answers[name] = (response, time.monotonic() - start, (proc_kib(pid, "VmHWM") - rss_before) / 1024)
    for name, (response, seconds, growth_mb) in answers.items():
        assert "content-length" not in response.request.headers  # really chunked
        assert response.status_code == 413, (name, response.status_code, response.text[:200])
        assert response.json()["error"] == "image_too_large" and "limit" in response.json()["detail"]
        assert seconds < 10, (name, seconds)
        # the app stopped buffering at the limit (uvicorn reads the rest of the 64 MB and drops it)
        assert growth_mb < 16, (name, growth_mb)
    # a multipart upload within the limit still encodes, and the encoder is still ready
    ok = httpx.post(f"{limited.url}/encode", params=GIVEN, files={"image": ("a.png", png(), "image/png")}, timeout=60)
    assert ok.status_code == 200 and parse(ok.content).width == 96
    assert httpx.get(f"{limited.url}/health/ready", timeout=5).status_code == 200


def test_declared_image_sizes_are_checked_before_pixels_are_decoded(limited):
    pid = limited.process.pid
    start = time.monotonic()
    refused = httpx.post(f"{limited.url}/encode", params=GIVEN, content=png_1bit(40000, 1000),
                         headers={"Content-Type": "image/png"}, timeout=60)
    refused_s = time.monotonic() - start
    rss_before = reset_peak_rss(pid)
    lying = httpx.post(f"{limited.url}/encode", params=GIVEN, content=jpeg_declaring(6000, 6000),
                       headers={"Content-Type": "image/jpeg"}, timeout=60)
    growth_mb = (proc_kib(pid, "VmHWM") - rss_before) / 1024
    # 40000x1000 (4.9 kB, 40 Mpx: within max_image_pixels) needs a 20480x512 working size: refused from the header
    assert refused.status_code == 413 and refused.json()["error"] == "image_too_large", refused.text
    assert "20480x512" in refused.json()["detail"] and "max_working_pixels" in refused.json()["detail"]
    assert refused_s < 2
    # a 16x16 JPEG whose header says 6000x6000: coded (as 4096x4096, the output limit) from a 750x750 decode;
    # a full decode costs ~400 MB here
    assert lying.status_code == 200, lying.text
    assert (parse(lying.content).width, parse(lying.content).height) == (4096, 4096)
    assert growth_mb < 100, growth_mb


def test_the_encoder_is_ready_only_once_its_models_are_loaded(tmp_path):
    # Caption prompts with the tiny captioner: the warm-up imports torch and transformers and loads it (seconds).
    env = {"TEXTSKETCH_PROMPT_SOURCE": "caption", "TEXTSKETCH_CAPTION_MODEL": "tiny"}
    service = start_service("encoder_service", env, tmp_path)
    try:
        service.wait_listening(120)
        loading = httpx.get(f"{service.url}/health/ready", timeout=5)
        early = httpx.post(f"{service.url}/encode", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
        live = httpx.get(f"{service.url}/health/live", timeout=5)
        service.wait_ready(120)
        encoded = httpx.post(f"{service.url}/encode", content=png(), headers={"Content-Type": "image/png"},
                             timeout=60)
    finally:
        service.stop()
    assert loading.status_code == 503 and loading.json()["status"] == "loading" and "Retry-After" in loading.headers
    assert early.status_code == 503 and early.json()["error"] == "not_ready" and "Retry-After" in early.headers
    assert live.status_code == 200
    assert encoded.status_code == 200 and len(parse(encoded.content).prompt) > 0


def test_a_model_that_cannot_load_shows_in_readiness_and_liveness(tmp_path):
    env = {"TEXTSKETCH_PROMPT_SOURCE": "caption", "TEXTSKETCH_CAPTION_MODEL": str(tmp_path / "no-such-model")}
    service = start_service("encoder_service", env, tmp_path)
    try:
        service.wait_listening(120)
        deadline = time.monotonic() + 60
        while (live := httpx.get(f"{service.url}/health/live", timeout=5)).status_code == 200:
            assert time.monotonic() < deadline, "the load failure never showed in /health/live"
            time.sleep(0.1)
        ready = httpx.get(f"{service.url}/health/ready", timeout=5)
        encode = httpx.post(f"{service.url}/encode", content=png(), headers={"Content-Type": "image/png"}, timeout=30)
    finally:
        service.stop()
    assert live.status_code == 503 and live.json()["status"] == "failed" and "no-such-model" in live.json()["detail"]
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "caption model" in ready.json()["detail"]
    assert encode.status_code == 503 and encode.json()["error"] == "not_ready" and "failed" in encode.json()["detail"]


# -- candidate selection against a real tiny decoder ---------------------------------------------------
@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    env = {"TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "2", "TEXTSKETCH_DECODER_MAX_CANDIDATES": "4",
           "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]"}
    service = start_service("decoder_service", env, tmp_path_factory.mktemp("logs"))
    try:
        service.wait_ready(300)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def selecting(decoder, tmp_path_factory):
    """Two encoders on the decoder: the codec's CLIP `tiny` for selection (as scripts/serve.sh sets it),
    and one whose selection CLIP is a folder that does not exist."""
    logs = tmp_path_factory.mktemp("logs")
    base = {"TEXTSKETCH_PROMPT_SOURCE": "given", "TEXTSKETCH_ENCODER_DECODER_URL": decoder.url}
    tiny = start_service("encoder_service", {**base, "TEXTSKETCH_CLIP_MODEL": "tiny"}, logs)
    broken = start_service("encoder_service", {**base, "TEXTSKETCH_ENCODER_SELECTION_CLIP_MODEL": str(logs / "none")},
                           logs)
    try:
        tiny.wait_ready(120)
        broken.wait_ready(120)
        yield tiny, broken
    finally:
        tiny.stop()
        broken.stop()


def candidates_rendered(decoder) -> float:
    text = httpx.get(f"{decoder.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("textsketch_requests_total") and 'route="/candidates"' in line)


def test_selection_with_the_tiny_clip_of_the_codec_settings(selecting, decoder):
    tiny, _ = selecting
    response = httpx.post(f"{tiny.url}/encode", params={**GIVEN, "mode": "pic", "candidates": 2}, content=png(),
                          headers={"Content-Type": "image/png"}, timeout=300)
    assert response.status_code == 200, response.text
    chosen = parse(response.content).candidate
    assert chosen in (1, 2) and response.headers["X-Candidate-Selection"] == f"selected {chosen} of 2"


def test_a_scorer_that_cannot_load_falls_back_or_fails_clearly_before_the_decoder_renders(selecting, decoder):
    _, broken = selecting
    before = candidates_rendered(decoder)
    post = {"content": png(), "headers": {"Content-Type": "image/png"}, "timeout": 60}
    fallback = httpx.post(f"{broken.url}/encode", params={**GIVEN, "candidates": 2, "candidate_fallback": "true"},
                          **post)
    refused = httpx.post(f"{broken.url}/encode", params={**GIVEN, "candidates": 2}, **post)
    assert fallback.status_code == 200 and parse(fallback.content).candidate == 0
    assert fallback.headers["X-Candidate-Selection"] == "fallback"
    assert refused.status_code == 503 and refused.json()["error"] == "model_unavailable"
    assert "SELECTION_CLIP_MODEL" in refused.json()["detail"]
    assert candidates_rendered(decoder) == before  # no rendering was wasted on a selection that could not run


def test_sigterm_lets_encodes_in_flight_finish_and_answers_new_ones_503(tmp_path):
    """PEZ with the tiny CLIP for 400 steps: each encode runs for a while, so SIGTERM lands mid-encode."""
    import asyncio
    import signal

    env = {"TEXTSKETCH_PROMPT_SOURCE": "pez", "TEXTSKETCH_CLIP_MODEL": "tiny", "TEXTSKETCH_PEZ_STEPS": "400",
           "TEXTSKETCH_ENCODER_DRAIN_TIMEOUT_S": "60"}
    service = start_service("encoder_service", env, tmp_path)
    try:
        service.wait_ready(120)
        body = png()

        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                started = time.monotonic()
                first = await client.post(f"{service.url}/encode", content=body, headers={"Content-Type": "image/png"})
                one_encode_s = time.monotonic() - started
                accepted = [asyncio.ensure_future(client.post(
                    f"{service.url}/encode", content=body, headers={"Content-Type": "image/png"})) for _ in range(2)]
                await asyncio.sleep(min(0.5, one_encode_s / 3))
                service.terminate()
                await asyncio.sleep(0.2)
                during = await client.post(f"{service.url}/encode", content=body, headers={"Content-Type": "image/png"})
                return first, await asyncio.gather(*accepted), during

        first, accepted, during = asyncio.run(main())
        exit_code = service.process.wait(60)
    finally:
        service.stop()
    assert first.status_code == 200
    assert [r.status_code for r in accepted] == [200, 200]
    assert parse(accepted[0].content) == parse(first.content)  # the same image codes to the same payload
    # the listener stayed open while draining: a typed 503, not "connection refused"
    assert during.status_code == 503 and during.json()["error"] == "draining" and during.headers["retry-after"]
    assert exit_code in (0, -signal.SIGTERM)


def test_a_pez_encode_stops_when_its_client_leaves(tmp_path):
    """50,000 PEZ steps would run for minutes; the client leaves after 1.5 s and the encode stops."""
    import asyncio

    env = {"TEXTSKETCH_PROMPT_SOURCE": "pez", "TEXTSKETCH_CLIP_MODEL": "tiny", "TEXTSKETCH_PEZ_STEPS": "50000",
           "TEXTSKETCH_ENCODER_MAX_CONCURRENT_ENCODES": "1"}
    service = start_service("encoder_service", env, tmp_path)
    try:
        service.wait_ready(120)

        async def main():
            async with httpx.AsyncClient(timeout=60) as client:
                with pytest.raises(httpx.ReadTimeout):
                    await client.post(f"{service.url}/encode", content=png(), timeout=1.5,
                                      headers={"Content-Type": "image/png"})
                started = time.monotonic()
                # the one encode slot frees once PEZ noticed: a given-text encode then runs at once
                after = await client.post(f"{service.url}/encode", params=GIVEN, content=png(),
                                          headers={"Content-Type": "image/png"})
                return after, time.monotonic() - started

        after, seconds = asyncio.run(main())
        metrics = httpx.get(f"{service.url}/metrics", timeout=10).text
    finally:
        service.stop()
    assert after.status_code == 200
    assert seconds < 10  # not the minutes the abandoned PEZ run would have taken
    assert 'textsketch_rejections_total{reason="cancelled",service="encoder"} 1.0' in metrics
