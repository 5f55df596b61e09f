"""Hostile image uploads: bombs, truncated files, wrong types, odd modes: a clear 4xx or a correct encode, fast.

In-process (ASGI transport) against the real encoder app (tiny profile, given prompt, real sketch stage).
Peak memory of ``load_image`` is measured with tracemalloc; the server-process RSS figures come
from ``bench/hostile_images.py``.
"""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from encoder_service.app import create_app
from encoder_service.settings import EncoderSettings
from services.bitstream.container import Mode, parse
from services.codec import EncodeOptions, encode_image, image_working_size
from services.errors import ImageInputError, ImageTooLargeError
from services.imaging import load_image, load_image_for_coding, resize
from services.settings import CodecSettings
from services.testing.hostile import hostile_images, jpeg_declaring, png_1bit
from services.testing.servers import serving

LIMIT_BYTES = 2 * 1024 * 1024
LIMIT_PIXELS = 40_000_000
ITEMS = hostile_images(LIMIT_BYTES)
REFUSED = [item for item in ITEMS if 200 not in item.expected and item.content_type.startswith("image/")]
WORKING_SIZE = image_working_size(CodecSettings(profile="tiny"))  # the encoder's check: 2 Mpx working size


@pytest.mark.parametrize("item", REFUSED, ids=[item.name for item in REFUSED])
def test_load_image_refuses_hostile_files_fast_within_bounded_memory(item):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageInputError) as caught:
            load_image(item.data, max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, working_size=WORKING_SIZE)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value)  # a message that says what is wrong
    assert elapsed < 1.0
    # 2,500 Mpx declared (~7.5 GB as RGB) costs at most a few MB: nothing is decoded
    assert peak < 16 * 1024 * 1024, f"{item.name}: peak {peak} bytes"


def test_every_hostile_upload_gets_its_4xx_or_a_correct_encode(tmp_path):
    app = create_app(EncoderSettings(codec=CodecSettings(profile="tiny", cache_dir=tmp_path / "cache",
                                                         prompt_source="given"),
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
            # the declared size; 6000x6000 declared is coded at 4096x4096, the 16 Mpx output limit
            assert (payload.width, payload.height) in ((96, 64), (1, 1), (4096, 4096))
        else:
            body = response.json()
            assert body["error"] in ("image_too_large", "unsupported_media", "invalid_image"), body
            assert len(body["detail"]) > 10
            assert seconds < 1.0, (item.name, seconds)
    assert ready == 200


def test_a_1bit_png_whose_working_size_is_over_the_limit_is_refused_from_its_header():
    # 40000x1000 is within the 40 Mpx limit; its working size (20480x512) is not. Decoded it would be
    # 40 MB as 1-bit and 120 MB as RGB.
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError) as caught:
            load_image(png_1bit(40000, 1000), max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, working_size=WORKING_SIZE)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "40000x1000" in str(caught.value) and "20480x512" in str(caught.value)
    assert time.perf_counter() - start < 1.0 and peak < 16 * 1024 * 1024


def test_a_jpeg_is_decoded_at_the_smallest_dct_scale_that_covers_its_working_size():
    # A 16x16 JPEG whose header says 6000x6000: decoded at 1/8 (750x750 >= the 512x512 working size).
    loaded = load_image_for_coding(jpeg_declaring(6000, 6000), max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS,
                                   working_size=WORKING_SIZE)
    assert loaded.size == (6000, 6000) and loaded.image.size == (750, 750) and loaded.image.mode == "RGB"
    # 1/4 would be 1500x1500; 2400x1200 (working 1024x512) is only halved, 1000x700 not reduced at all.
    for stored, decoded in (((2400, 1200), (1200, 600)), ((1000, 700), (1000, 700))):
        data = jpeg_bytes(asymmetric_image(stored))
        loaded = load_image_for_coding(data, max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, working_size=WORKING_SIZE)
        assert (loaded.size, loaded.image.size) == (stored, decoded)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_reduced_jpeg_decode_applies_exif_orientation_like_a_full_one(orientation, tmp_path):
    data = jpeg_bytes(asymmetric_image((2400, 1200)), orientation=orientation)
    full = load_image(data, max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS)
    loaded = load_image_for_coding(data, max_bytes=LIMIT_BYTES, max_pixels=LIMIT_PIXELS, working_size=WORKING_SIZE)
    assert loaded.size == full.size == ((1200, 2400) if orientation in (6, 8) else (2400, 1200))
    assert loaded.image.size == (loaded.size[0] // 2, loaded.size[1] // 2)
    working = CodecSettings(profile="tiny").model_profile().working_size(*full.size)
    difference = np.abs(np.asarray(resize(full, *working), np.int16) - np.asarray(resize(loaded.image, *working),
                                                                                      np.int16))
    assert difference.mean() < 3, difference.mean()  # same picture, same way up; only DCT-scaling noise
    # The payload declares the original's size, whatever scale the pixels were decoded at.
    settings = CodecSettings(profile="tiny", cache_dir=tmp_path / "cache", prompt_source="given")
    payload = encode_image(loaded.image, settings, EncodeOptions(mode=Mode.PIC, text="a house"), loaded.size).payload
    assert (payload.width, payload.height) == full.size


def asymmetric_image(size: tuple[int, int]) -> Image.Image:
    """Red left half, blue right half, a green band across the top: every flip and rotation looks different."""
    width, height = size
    array = np.zeros((height, width, 3), np.uint8)
    array[:, : width // 2] = (220, 30, 30)
    array[:, width // 2:] = (30, 30, 220)
    array[: height // 5] = (30, 200, 30)
    return Image.fromarray(array, "RGB")


def jpeg_bytes(image: Image.Image, orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()
