"""Classical baseline at the same bytes: fits the budget, says when nothing fits."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.eval.baselines import GREY, baselines_at, decode_classical, encode_classical, fit_to_budget


def photo(size=(300, 200), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(size[1] // 10, size[0] // 10, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


@pytest.mark.parametrize("codec", ["webp", "jpeg"])
@pytest.mark.parametrize("budget", [400, 1200, 5000])
def test_fits_the_budget_and_returns_the_original_size(codec, budget):
    image = photo()
    result = fit_to_budget(image, budget, codec)
    assert result.fits
    assert 0 < result.n_bytes <= budget
    assert result.image.size == image.size
    assert 1 <= result.coded_width <= image.width
    # The coded file is real: it decodes to the coded size.
    assert decode_classical(result.data).size == (result.coded_width, result.coded_height)
    assert result.coded_height == max(1, round(image.height * result.coded_width / image.width))


def test_a_bigger_budget_buys_a_bigger_image():
    image = photo()
    small, large = fit_to_budget(image, 300, "webp"), fit_to_budget(image, 3000, "webp")
    assert large.coded_width > small.coded_width
    assert large.n_bytes > small.n_bytes


def test_whole_image_when_it_fits_at_full_size():
    image = photo((40, 30))
    result = fit_to_budget(image, 100_000, "webp")
    assert result.coded_width == 40 and result.fits


def test_nothing_fits_below_the_container_overhead():
    image = photo()
    result = fit_to_budget(image, 30, "webp")
    assert not result.fits and result.n_bytes == 0 and result.data == b""
    assert result.min_bytes == len(encode_classical(Image.new("RGB", (1, 1)), "webp", result.quality))
    assert result.min_bytes > 30
    assert "fits nothing" in result.note
    assert result.image.size == image.size
    assert np.all(np.asarray(result.image) == np.array(GREY, dtype=np.uint8))
    jpeg = fit_to_budget(image, 200, "jpeg")  # JPEG headers and tables alone are larger
    assert not jpeg.fits and jpeg.min_bytes > 200


def test_baselines_at_runs_every_codec_and_rejects_unknown_ones():
    results = baselines_at(photo(), 800)
    assert set(results) == {"webp", "jpeg"}
    assert all(r.n_bytes <= 800 and r.budget == 800 for r in results.values())
    with pytest.raises(ValueError, match="unknown classical codec"):
        encode_classical(photo(), "gif", 10)
    with pytest.raises(ValueError, match="budget"):
        fit_to_budget(photo(), -1)
