"""The clients retry 429/503 honouring Retry-After, a bounded number of times, and nothing else.

Against a real uvicorn process on 127.0.0.1 serving ``flaky_app`` (below): its ``/decode``
answers each distinct body according to a script in the body itself (``429x2``: two 429s
with ``Retry-After: 1``, then 200), so every test sees exact call counts.
"""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import time
from collections import Counter

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from services.eval.run import ServiceCodec
from services.serving.client import AsyncTextSketchClient, ServiceClientError, TextSketchClient
from services.testing.servers import REPO, ServiceProcess, free_port

pytestmark = pytest.mark.e2e


def flaky_app():
    """uvicorn factory: ``POST /decode`` with body ``<status>x<n>[:<retry-after>]`` answers ``status`` n times
    (with that Retry-After, default 1 s; ``n`` = ``all`` for always), then a small PNG; ``GET /calls`` counts."""
    app = FastAPI()
    calls: Counter[str] = Counter()

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        script = (await request.body()).decode()
        calls[script] += 1
        answer, _, retry_after = script.partition(":")
        status, _, times = answer.partition("x")
        if times == "all" or calls[script] <= int(times):
            headers = {"Retry-After": retry_after or "1"} if status in ("429", "503") else {}
            return JSONResponse({"error": "scripted", "detail": f"answer {calls[script]} of {script}"},
                                status_code=int(status), headers=headers)
        buffer = io.BytesIO()
        Image.new("RGB", (4, 3), (10, 20, 30)).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get("/calls")
    async def count() -> dict:
        return dict(calls)

    @app.get("/health/ready")
    async def ready() -> dict:
        return {"status": "ready"}

    return app


@pytest.fixture(scope="module")
def flaky(tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("logs") / "flaky.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "tests.test_client_retries:flaky_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    service = ServiceProcess("flaky", port, process, log_path)
    try:
        service.wait_ready(60)
        yield service
    finally:
        service.stop()


def calls(service, script: str) -> int:
    return httpx.get(f"{service.url}/calls", timeout=5).json().get(script, 0)


def test_429_with_retry_after_is_retried_until_it_succeeds(flaky):
    start = time.monotonic()
    with TextSketchClient(decoder_url=flaky.url) as client:
        png = client.decode(b"429x2")
    elapsed = time.monotonic() - start
    assert Image.open(io.BytesIO(png)).size == (4, 3)
    assert calls(flaky, "429x2") == 3
    assert 2.0 <= elapsed < 2.0 + 2 * 0.5 + 2.0  # two Retry-After: 1 waits, each plus at most 0.5 s jitter


def test_retries_are_bounded_then_the_last_error_is_raised(flaky):
    with TextSketchClient(decoder_url=flaky.url, retries=2) as client:
        with pytest.raises(ServiceClientError) as busy:
            client.decode(b"429xall")
    assert busy.value.status == 429 and busy.value.code == "scripted" and busy.value.retry_after_s == 1
    assert calls(flaky, "429xall") == 3  # one try and two retries


def test_other_statuses_are_never_retried(flaky):
    with TextSketchClient(decoder_url=flaky.url) as client:
        for script in ("422xall", "500xall", "413xall"):
            with pytest.raises(ServiceClientError) as error:
                client.decode(script.encode())
            assert error.value.status == int(script[:3])
            assert calls(flaky, script) == 1, script


def test_retry_after_is_capped_and_the_async_client_retries_503(flaky):
    async def main():
        async with AsyncTextSketchClient(decoder_url=flaky.url, max_retry_wait_s=0.2) as client:
            return await client.decode(b"503x1:30")  # Retry-After: 30, capped at 0.2 s

    start = time.monotonic()
    png = asyncio.run(main())
    assert Image.open(io.BytesIO(png)).size == (4, 3)
    assert calls(flaky, "503x1:30") == 2
    assert time.monotonic() - start < 5


def test_a_refused_connection_is_retried_then_reported_as_unreachable():
    start = time.monotonic()
    with TextSketchClient(decoder_url=f"http://127.0.0.1:{free_port()}", retries=1) as client:
        with pytest.raises(ServiceClientError) as down:
            client.decode(b"anything")
    assert down.value.status == 0 and down.value.code == "unreachable"
    assert time.monotonic() - start >= 1.0  # one retry after CONNECT_RETRY_WAIT_S


def test_the_eval_harness_through_services_retries(flaky):
    codec = ServiceCodec(flaky.url, flaky.url)
    try:
        image = codec.decode(b"429x1")
    finally:
        codec.close()
    assert image.size == (4, 3) and calls(flaky, "429x1") == 2
