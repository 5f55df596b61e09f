"""Edge maps of the sketch stage (encoder side): Canny and HED through ``edge_map``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.profiles import SketchKind
from services.settings import CodecSettings
from services.sketch.edges import edge_map
from services.sketch.hed_weights import find_weights


def _picture(width: int = 96, height: int = 64) -> Image.Image:
    rgb = np.full((height, width, 3), 40, dtype=np.uint8)
    rgb[16:48, 24:72] = (230, 200, 60)  # one bright rectangle
    return Image.fromarray(rgb)


def test_canny_map_is_binary_at_image_size_and_on_the_outline():
    edges = edge_map(_picture(), SketchKind.CANNY, CodecSettings())
    assert edges.shape == (64, 96) and edges.dtype == np.uint8
    assert set(np.unique(edges)) == {0, 255}
    assert edges[16:48, 22:27].any() and edges[14:19, 24:72].any()  # left and top sides
    assert not edges[:10].any() and not edges[26:38, 36:60].any()  # flat areas stay empty


def test_kind_accepts_its_string_value():
    assert np.array_equal(
        edge_map(_picture(), "canny", CodecSettings()), edge_map(_picture(), SketchKind.CANNY, CodecSettings())
    )


@pytest.mark.skipif(find_weights(CodecSettings()) is None, reason="HED weights not set up: textsketch fetch-weights --env")
def test_hed_map_is_uint8_at_image_size_and_strongest_on_the_outline():
    edges = edge_map(_picture(), SketchKind.HED, CodecSettings())
    assert edges.shape == (64, 96) and edges.dtype == np.uint8
    assert edges[14:19, 30:66].mean() > 3 * edges[26:38, 36:60].mean()
