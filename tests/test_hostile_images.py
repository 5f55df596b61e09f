"""Hostile image uploads: bombs, truncated files, wrong types, odd modes: a clear 4xx or a correct encode, fast.

In-process (ASGI transport) against the real encoder app (tiny profile, given prompt, real sketch stage).
Peak memory of ``load_image`` is measured with tracemalloc; the server-process RSS figures come
from ``bench/hostile_images.py``.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from encoder_service.app import create_app
from encoder_service.settings import EncoderSettings
from services.bitstream.container import parse
from services.errors import ImageInputError
from services.imaging import load_image
from services.settings import CodecSettings
from services.testing.hostile import hostile_images
from services.testing.servers import serving

LIMIT_BYTES = 2 * 1024 * 1024
LIMIT_PIXELS = 40_000_000
ITEMS = hostile_images(LIMIT_BYTES)
REFUSED = [item for item in ITEMS if 200 not in item.expected and item.content_type.startswith("image/")]


@pytest.mark.parametrize("item", REFUSED, ids=[item.name for item in REFUSED])
def test_load_image_refuses_hostile_files_fast_within_bounded_memory(item):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageInputError) as caught:
            load_image(item.data, max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value)  # a message that says what is wrong
    assert elapsed < 1.0
    # 2,500 Mpx declared (~7.5 GB as RGB) costs at most a few MB: nothing is decoded
    assert peak < 16 * 1024 * 1024, f"{item.name}: peak {peak} bytes"


def test_every_hostile_upload_gets_its_4xx_or_a_correct_encode(tmp_path):
    app = create_app(EncoderSettings(codec=CodecSettings(profile="tiny", cache_dir=tmp_path / "cache"),
                                     max_upload_bytes=LIMIT_BYTES, max_image_pixels=LIMIT_PIXELS))

    async def main():
        results = []
        async with serving(app) as client:
            for item in ITEMS:
                headers = {"Content-Type": item.content_type} if item.content_type else {}
                start = time.perf_counter()
                response = await client.post("/encode", params={"prompt_source": "given", "text": "a house"},
                                             content=item.data, headers=headers)
                results.append((item, response, time.perf_counter() - start))
            ready = (await client.get("/health/ready")).status_code
        return results, ready

    results, ready = asyncio.run(asyncio.wait_for(main(), 120))
    for item, response, seconds in results:
        assert response.status_code in item.expected, (item.name, response.status_code, response.text[:200])
        if response.status_code == 200:
            payload = parse(response.content)
            assert (payload.width, payload.height) in ((96, 64), (1, 1))
        else:
            body = response.json()
            assert body["error"] in ("image_too_large", "unsupported_media", "invalid_image"), body
            assert len(body["detail"]) > 10
            assert seconds < 1.0, (item.name, seconds)
    assert ready == 200
