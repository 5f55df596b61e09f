"""Sketch coder: bit-exact round trips, golden body, rate knob, typed errors on bad bodies."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from services.errors import BitstreamError
from services.profiles import SketchKind
from services.sketch.body import HEADER_BYTES, decode_bitmap_body, encode_bitmap_body
from services.sketch.chain_coder import BRANCH, END, NEW, decode_bitmap, encode_bitmap
from services.sketch.coder import decode_sketch, encode_sketch
from services.sketch.contexts import LIMIT, PRIORS
from services.sketch.lossy import LEVELS, QUALITY_LEVELS, lossy_bitmap
from services.sketch.render import control_image, render

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("TEXTSKETCH_REGEN_GOLDEN") == "1"
W, H = 256, 192


def synthetic_edges(width: int = W, height: int = H) -> np.ndarray:
    """An HED-like soft edge map drawn with integer-only OpenCV calls (the same on every machine)."""
    edges = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(edges, (width // 3, height // 2), height // 4, 230, 3)
    cv2.rectangle(edges, (width // 2, height // 5), (width - 20, height - 30), 200, 2)
    cv2.line(edges, (5, height - 10), (width - 5, height // 3), 170, 4)
    cv2.ellipse(edges, (width // 2, height // 2), (width // 3, height // 6), 20, 0, 300, 140, 2)
    cv2.line(edges, (30, 10), (34, 14), 250, 1)  # a short stroke that low levels drop
    return edges


def test_round_trip_every_level_both_kinds():
    edges = synthetic_edges()
    for kind in SketchKind:
        for quality in QUALITY_LEVELS:
            bits, _ = lossy_bitmap(edges, kind, quality)
            body, paths = encode_bitmap_body(bits, quality)
            got_quality, got_bits, got_paths = decode_bitmap_body(body, W, H)
            assert got_quality == quality
            assert np.array_equal(got_bits, bits)
            assert got_paths == paths
            expected = render(paths, bits, LEVELS[quality].factor, W, H)
            decoded = decode_sketch(body, W, H)
            assert decoded.shape == (H, W) and decoded.dtype == np.uint8
            assert np.array_equal(decoded, expected)
            assert set(np.unique(decoded)) <= {0, 255}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 40),
    width=st.integers(1, 40),
    density=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_lossless_stage_round_trips_random_maps(height, width, density, seed):
    bits = np.random.default_rng(seed).random((height, width)) < density
    data, paths = encode_bitmap(bits)
    decoded, decoded_paths = decode_bitmap(data, width, height)
    assert np.array_equal(decoded, bits)
    assert decoded_paths == paths
    assert sorted(i for path in paths for i in path) == np.flatnonzero(bits).tolist()


@settings(max_examples=25, deadline=None)
@given(
    quality=st.sampled_from(list(QUALITY_LEVELS)),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(list(SketchKind)),
)
def test_sketch_round_trips_random_edge_maps(quality, seed, kind):
    rng = np.random.default_rng(seed)
    edges = (rng.random((72, 88)) < 0.05).astype(np.uint8) * rng.integers(0, 256, (72, 88), dtype=np.uint8)
    body = encode_sketch(edges, kind, quality=quality)
    bits, _ = lossy_bitmap(edges, kind, quality)
    assert np.array_equal(decode_bitmap_body(body, 88, 72)[1], bits)
    assert decode_sketch(body, 88, 72).shape == (72, 88)


def test_initial_counts_are_small_positive_integers():
    """The fitted tables are small positive integers below the halving limit."""
    sizes = {"kind": 3, "length_new": 41, "length_branch": 41, "first0": 9, "first1": 9}
    sizes.update({f"turn{i}": 8 for i in range(16)})
    assert {name: len(table) for name, table in PRIORS.items()} == sizes
    assert all(type(c) is int and 1 <= c < LIMIT for table in PRIORS.values() for c in table)


def test_path_starts_are_typed_new_or_branch():
    """A cross: the vertical bar and the left arm start away from visited pixels (NEW; raster order
    meets the left arm's far end first), the right arm starts next to the bar (BRANCH)."""
    bits = np.zeros((9, 9), dtype=bool)
    bits[1:8, 4] = True
    bits[4, 1:8] = True
    record: list = []
    data, paths = encode_bitmap(bits, record=record)
    kinds = [symbol for name, symbol in record if name == "kind"]
    assert kinds == [NEW, NEW, BRANCH, END]
    assert np.array_equal(decode_bitmap(data, 9, 9)[0], bits)
    assert sum(len(p) for p in paths) == int(bits.sum())


GOLDEN_SKETCHES = [(SketchKind.HED, 0), (SketchKind.HED, 2), (SketchKind.HED, 7), (SketchKind.CANNY, 2)]


@pytest.mark.parametrize(("kind", "quality"), GOLDEN_SKETCHES)
def test_golden_coded_sketch(kind, quality):
    """Pins the wire format: the stored body decodes to the stored map and low-resolution bitmap,
    and the encoder still emits it byte for byte."""
    edges = synthetic_edges()
    stem = f"sketch_v3_{kind.value}_q{quality}"
    body_path, map_path, bits_path = (GOLDEN / f"{stem}.bin", GOLDEN / f"{stem}.png", GOLDEN / f"{stem}.bits.png")
    if REGEN:
        body = encode_sketch(edges, kind, quality=quality)
        body_path.write_bytes(body)
        Image.fromarray(decode_sketch(body, W, H)).save(map_path)
        Image.fromarray(decode_bitmap_body(body, W, H)[1]).save(bits_path)
    golden_body = body_path.read_bytes()
    golden_map = np.asarray(Image.open(map_path))
    golden_bits = np.asarray(Image.open(bits_path)).astype(bool)
    assert golden_body[0] >> 5 == 3
    assert np.array_equal(decode_sketch(golden_body, W, H), golden_map)
    assert np.array_equal(decode_bitmap_body(golden_body, W, H)[1], golden_bits)
    assert np.array_equal(lossy_bitmap(edges, kind, quality)[0], golden_bits)
    assert encode_sketch(edges, kind, quality=quality) == golden_body
    assert golden_map.any()


def test_legacy_version_2_body_still_decodes_and_re_encodes():
    """Payloads written before the integer coder (sketch body version 2, constriction) keep decoding
    to the same map; the pinned constriction still writes the same bytes."""
    edges = synthetic_edges()
    golden_body = (GOLDEN / "sketch_v2_q2.bin").read_bytes()  # frozen: never regenerated
    golden_map = np.asarray(Image.open(GOLDEN / "sketch_v2_q2.png"))
    assert golden_body[0] >> 5 == 2
    assert np.array_equal(decode_sketch(golden_body, W, H), golden_map)
    bits, _ = lossy_bitmap(edges, SketchKind.HED, 2)
    assert encode_bitmap_body(bits, 2, version=2)[0] == golden_body
    # Both versions carry the same bitmap and draw the same map.
    current = encode_sketch(edges, SketchKind.HED, quality=2)
    assert np.array_equal(decode_bitmap_body(current, W, H)[1], decode_bitmap_body(golden_body, W, H)[1])
    assert np.array_equal(decode_sketch(current, W, H), golden_map)


@settings(max_examples=40, deadline=None)
@given(height=st.integers(1, 30), width=st.integers(1, 30), density=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_both_body_versions_code_the_same_bitmap(height, width, density, seed):
    bits = np.random.default_rng(seed).random((height, width)) < density
    quality = 0
    low_w, low_h = width, height
    for version in (2, 3):
        body, paths = encode_bitmap_body(bits, quality, version=version)
        got_quality, got_bits, got_paths = decode_bitmap_body(body, low_w * 8, low_h * 8)
        assert got_quality == quality and np.array_equal(got_bits, bits) and got_paths == paths


def test_higher_quality_costs_more_and_keeps_more():
    edges = synthetic_edges(512, 384)
    sizes = [len(encode_sketch(edges, SketchKind.HED, quality=q)) for q in QUALITY_LEVELS]
    assert sizes[0] < sizes[-1]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("budget", [3, 4, 10, 25, 40, 60, 90, 150, 400, 5000])
def test_target_bytes_is_never_exceeded(budget):
    edges = synthetic_edges(512, 384)
    body = encode_sketch(edges, SketchKind.HED, target_bytes=budget)
    assert HEADER_BYTES <= len(body) <= budget
    decode_sketch(body, 512, 384)  # and it is a valid body


def test_target_bytes_uses_the_budget():
    edges = synthetic_edges(512, 384)
    for quality in QUALITY_LEVELS:
        level_size = len(encode_sketch(edges, SketchKind.HED, quality=quality))
        fitted = encode_sketch(edges, SketchKind.HED, target_bytes=level_size)
        assert level_size <= len(fitted) <= level_size  # exactly the level (or better) when its size is the budget


def test_a_prefix_of_the_chains_codes_to_exactly_those_chains():
    """Later chains never change earlier ones (a property of the raster-order walk)."""
    bits, _ = lossy_bitmap(synthetic_edges(512, 384), SketchKind.HED, 7)
    _, paths = encode_bitmap(bits)
    assert len(paths) > 4
    for j in (1, len(paths) // 2, len(paths) - 1):
        subset = np.zeros(bits.size, dtype=bool)
        for path in paths[:j]:
            subset[path] = True
        assert encode_bitmap(subset.reshape(bits.shape))[1] == paths[:j]


def test_budget_smaller_than_one_huge_connected_piece_still_keeps_part_of_it():
    grid = np.zeros((384, 512), dtype=np.uint8)
    grid[::16, :] = 255
    grid[:, ::16] = 255  # one connected mesh: no piece can be dropped on its own
    body = encode_sketch(grid, SketchKind.CANNY, target_bytes=60)
    assert 20 < len(body) <= 60
    assert decode_sketch(body, 512, 384).any()


def test_budget_below_the_smallest_body_is_refused():
    with pytest.raises(ValueError, match="smallest sketch body"):
        encode_sketch(synthetic_edges(), SketchKind.HED, target_bytes=HEADER_BYTES - 1)
    empty = encode_sketch(synthetic_edges(), SketchKind.HED, target_bytes=HEADER_BYTES)
    assert len(empty) == HEADER_BYTES
    assert not decode_sketch(empty, W, H).any()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="quality"):
        encode_sketch(synthetic_edges(), SketchKind.HED, quality=len(LEVELS))
    with pytest.raises(ValueError, match="H x W"):
        encode_sketch(np.zeros((2, 3, 3), np.uint8), SketchKind.HED)


def _golden_like_body() -> bytes:
    return encode_sketch(synthetic_edges(), SketchKind.HED, quality=3)


def test_every_truncation_raises_bitstream_error():
    body = _golden_like_body()
    for cut in range(len(body)):
        with pytest.raises(BitstreamError):
            decode_sketch(body[:cut], W, H)


def test_every_single_byte_corruption_raises_bitstream_error():
    """A body is canonical (the decoder replays what it decoded and compares), so any changed
    byte is caught: by the range decoder, the canonical-coding check or the 16-bit check."""
    body = _golden_like_body()
    for index in range(len(body)):
        for flip in (0x01, 0x80, 0xFF):
            corrupted = bytearray(body)
            corrupted[index] ^= flip
            with pytest.raises(BitstreamError):
                decode_sketch(bytes(corrupted), W, H)


def test_padded_or_extended_bodies_are_refused():
    body = _golden_like_body()
    for tail in (b"\0", b"\x01", b"\x00\x07"):
        with pytest.raises(BitstreamError):
            decode_sketch(body + tail, W, H)


def test_header_errors_say_what_is_wrong():
    body = bytearray(_golden_like_body())
    for version in (1, 4, 7):  # 1: the retired format (untyped starts, flat initial counts)
        body[0] = (version << 5) | 2
        with pytest.raises(BitstreamError, match=f"unsupported sketch version {version}.*versions 2, 3.*re-encode"):
            decode_sketch(bytes(body), W, H)
    body[0] = (3 << 5) | 31
    with pytest.raises(BitstreamError, match="unknown sketch quality level 31"):
        decode_sketch(bytes(body), W, H)
    with pytest.raises(BitstreamError, match="too short"):
        decode_sketch(b"", W, H)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=0, max_size=64))
def test_random_bodies_raise_only_bitstream_error(data):
    try:
        decoded = decode_sketch(data, 64, 48)
    except BitstreamError:
        return
    assert decoded.shape == (48, 64)  # a (rare) valid body must still decode to a map


def test_control_images():
    decoded = decode_sketch(encode_sketch(synthetic_edges(), SketchKind.HED, quality=4), W, H)
    hed = control_image(decoded, SketchKind.HED)
    canny = control_image(decoded, SketchKind.CANNY)
    for image in (hed, canny):
        assert image.mode == "RGB" and image.size == (W, H)
    hed_values = np.unique(np.asarray(hed))
    assert len(hed_values) > 10  # soft, HED-like
    assert set(np.unique(np.asarray(canny))) == {0, 255}  # thin binary lines
    assert (np.asarray(hed)[..., 0] > 0).sum() > 2 * (np.asarray(canny)[..., 0] > 0).sum()  # thicker


def test_a_tiny_body_cannot_make_the_decoder_walk_a_whole_grid():
    """7 bytes that would fill a 1024x256 grid (a second of Python) stop at the path-pixel budget."""
    from services.sketch.body import _check, decode_bitmap_body
    from services.sketch.chain_coder import encode_bitmap, path_pixel_budget
    from services.sketch.lossy import low_res_size

    width, height = low_res_size(2048, 512, 7)
    bits = np.ones((height, width), bool)
    data, paths = encode_bitmap(bits)
    header = (3 << 5) | 7
    body = bytes([header]) + _check(header, bits) + data
    assert sum(map(len, paths)) == width * height > path_pixel_budget(len(data))
    with pytest.raises(BitstreamError, match="path pixels"):
        decode_bitmap_body(body, 2048, 512)
