"""Sketch coder: edge map -> a few hundred bytes -> the ControlNet's control image.

Encoder (lossy, then lossless):

1. binarise the edge map (HED: probability >= the level's threshold; Canny: its edges);
2. downsample by the level's factor ``f`` with a block OR (an edge anywhere in an
   ``f x f`` block marks the block);
3. thin to a 1-pixel skeleton (Zhang-Suen), remove redundant staircase corners,
   and drop 8-connected pieces shorter than the level's minimum length;
4. code that bilevel map losslessly with ``services.chain_coding`` (chains of
   8-connected moves, adaptive integer models, constriction's range coder).

Body layout (the working size comes from the payload, so it is not stored):

======  =======  ==========================================================
offset  size     field
======  =======  ==========================================================
0       1        header: bits 7..5 version (2), bits 4..0 quality level
1       2        check: CRC-32 of (header, packed bitmap) & 0xFFFF, big-endian
3       0..n     range-coder words, big-endian, trailing zero bytes removed
======  =======  ==========================================================

Decoder: decode the bitmap, check the CRC, and draw every chain as a polyline
through the block centres at the working size (integer line drawing), giving a
thin-line map; ``control_image`` turns it into soft HED-like edges or thin
Canny-like edges. Full description and measurements: ``docs/sketch.md``.

The lossy stage lives in ``services.sketch_lossy`` (re-exported here: ``LEVELS``,
``QUALITY_LEVELS``, ``lossy_bitmap``).
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np
from PIL import Image

from services.chain_coding import DIRECTIONS, decode_bitmap, encode_bitmap
from services.errors import BitstreamError
from services.profiles import SketchKind
from services.sketch_lossy import LEVELS, QUALITY_LEVELS, QualityLevel, lossy_bitmap, low_res_size

VERSION = 2  # 2: typed path starts and fitted initial counts (version 1 bodies are not decoded)
HEADER_BYTES = 3
MAX_WORKING_PIXELS = 16 * 1024 * 1024
PRUNE_STEPS = 5  # byte-budget search: codings tried when dropping the weakest chains

__all__ = [
    "HEADER_BYTES",
    "LEVELS",
    "QUALITY_LEVELS",
    "QualityLevel",
    "control_image",
    "decode_bitmap_body",
    "decode_sketch",
    "encode_bitmap_body",
    "encode_sketch",
    "lossy_bitmap",
    "low_res_size",
    "render",
]


# ---------------------------------------------------------------- body format


def _check(header: int, bits: np.ndarray) -> bytes:
    crc = zlib.crc32(np.packbits(bits.reshape(-1)).tobytes(), zlib.crc32(bytes([header])))
    return (crc & 0xFFFF).to_bytes(2, "big")


def encode_bitmap_body(bits: np.ndarray, quality: int) -> tuple[bytes, list[list[int]]]:
    """Body for an already-lossy low-resolution map (the lossless stage plus header and check)."""
    header = (VERSION << 5) | quality
    data, paths = encode_bitmap(bits)
    return bytes([header]) + _check(header, bits) + data, paths


def parse_header(body: bytes) -> int:
    """Validate a body's header; return its quality level."""
    if not isinstance(body, (bytes, bytearray, memoryview)) or len(body) < HEADER_BYTES:
        raise BitstreamError(f"sketch body too short: it needs at least {HEADER_BYTES} bytes; re-encode the image")
    header = body[0]
    if header >> 5 != VERSION:
        raise BitstreamError(
            f"unsupported sketch version {header >> 5}; this decoder reads version {VERSION}: "
            "re-encode the image with this version of textsketch"
        )
    quality = header & 0x1F
    if quality not in QUALITY_LEVELS:
        raise BitstreamError(f"unknown sketch quality level {quality} (known: 0..{len(LEVELS) - 1})")
    return quality


def decode_bitmap_body(body: bytes, width: int, height: int) -> tuple[int, np.ndarray, list[list[int]]]:
    """Quality level, low-resolution map and chains of a body at the working size ``width`` x ``height``."""
    quality = parse_header(body)
    if not all(isinstance(side, (int, np.integer)) and side >= 1 for side in (width, height)):
        raise ValueError(f"working size must be positive integers, got {width!r} x {height!r}")
    width, height = int(width), int(height)
    if width * height > MAX_WORKING_PIXELS:
        raise BitstreamError(f"working size {width}x{height} exceeds the {MAX_WORKING_PIXELS}-pixel sketch limit")
    w, h = low_res_size(width, height, quality)
    bits, paths = decode_bitmap(bytes(body[HEADER_BYTES:]), w, h)
    if _check(body[0], bits) != bytes(body[1:HEADER_BYTES]):
        raise BitstreamError("corrupt or truncated sketch body (check mismatch); re-send the payload unmodified")
    return quality, bits, paths


# ---------------------------------------------------------------- decoder side: drawing


def render(paths: list[list[int]], bits: np.ndarray, factor: int, width: int, height: int) -> np.ndarray:
    """Draw decoded chains at the working size: uint8 H x W, 255 on the 1-pixel lines.

    Block centres are at ``x * f + (f - 1) / 2``; coordinates carry one fractional
    bit (OpenCV ``shift=1``), and OpenCV draws them with integer arithmetic only.
    Chain ends are also joined to every set 8-neighbour that is not their chain
    neighbour (branches and closed loops).
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    h, w = bits.shape

    def centre(index: int) -> tuple[int, int]:
        x, y = index % w, index // w
        return min(2 * x * factor + factor - 1, 2 * (width - 1)), min(2 * y * factor + factor - 1, 2 * (height - 1))

    for path in paths:
        points = np.array([centre(i) for i in path], dtype=np.int32)
        if len(points) == 1:
            cv2.line(canvas, tuple(points[0]), tuple(points[0]), 255, 1, cv2.LINE_8, 1)
        else:
            cv2.polylines(canvas, [points], False, 255, 1, cv2.LINE_8, 1)
        ends = {path[0]: path[1:2], path[-1]: path[-2:-1]}
        for end, chain_neighbours in ends.items():
            x, y = end % w, end // w
            for dx, dy in DIRECTIONS:
                nx, ny = x + dx, y + dy
                q = ny * w + nx
                if 0 <= nx < w and 0 <= ny < h and bits[ny, nx] and q not in chain_neighbours:
                    cv2.line(canvas, centre(end), centre(q), 255, 1, cv2.LINE_8, 1)
    return canvas


# ---------------------------------------------------------------- public API


def encode_sketch(
    edges: np.ndarray, kind: SketchKind | str, *, quality: int = 2, target_bytes: int | None = None
) -> bytes:
    """Code an edge map (uint8 H x W at the working size) as a sketch body.

    With ``target_bytes`` the body is never over the budget (``quality`` is then
    ignored); see ``_fit_budget``; ``ValueError`` if the budget is
    below the smallest possible body (``HEADER_BYTES``).
    """
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.size == 0:
        raise ValueError(f"edges must be a non-empty H x W array, got shape {edges.shape}")
    if target_bytes is None:
        if quality not in QUALITY_LEVELS:
            raise ValueError(f"quality must be in 0..{len(LEVELS) - 1}, got {quality!r}")
        bits, _ = lossy_bitmap(edges, kind, quality)
        return encode_bitmap_body(bits, quality)[0]
    return _fit_budget(edges, kind, target_bytes)


def _fit_budget(edges: np.ndarray, kind: SketchKind | str, target_bytes: int) -> bytes:
    """A body within ``target_bytes``: the finest level that fits (levels grow in size, so they
    are tried from the coarsest up), or the next finer level with its weakest chains dropped
    when that comes out larger."""
    if not isinstance(target_bytes, int) or target_bytes < HEADER_BYTES:
        raise ValueError(
            f"target_bytes={target_bytes!r} is below the smallest sketch body ({HEADER_BYTES} bytes); "
            "raise the budget or use the PIC mode (no sketch)"
        )
    best = b""
    for quality in QUALITY_LEVELS:
        bits, strength = lossy_bitmap(edges, kind, quality)
        body, paths = encode_bitmap_body(bits, quality)
        if len(body) > target_bytes:
            pruned = _prune_to_budget(bits.shape, paths, strength, quality, target_bytes, len(body))
            return pruned if len(pruned) > len(best) else best
        best = body
    return best


def _prune_to_budget(shape, paths, strength, quality: int, target_bytes: int, full_bytes: int) -> bytes:
    """Keep the ``k`` strongest chains (sum of block maxima along them), ``k`` as large as fits:
    a first guess from the byte share of the kept pixels, then bisection (at most
    ``PRUNE_STEPS`` codings). ``k = 0``, the empty sketch, always fits."""
    flat_strength = strength.reshape(-1)
    scores = np.array([int(flat_strength[path].sum()) for path in paths], dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    cumulative = np.cumsum([len(paths[i]) for i in order])
    fraction = (target_bytes - HEADER_BYTES) / max(full_bytes - HEADER_BYTES, 1)
    low, high = 0, len(paths)  # chains known to fit / known not to fit
    best = encode_bitmap_body(np.zeros(shape, dtype=bool), quality)[0]
    k = int(np.searchsorted(cumulative, fraction * cumulative[-1], side="right")) if len(paths) else 0
    for _ in range(PRUNE_STEPS):
        k = min(max(k, low + 1), high - 1)
        if k <= low:
            break
        flat = np.zeros(shape[0] * shape[1], dtype=bool)
        for i in order[:k]:
            flat[paths[i]] = True
        body = encode_bitmap_body(flat.reshape(shape), quality)[0]
        if len(body) <= target_bytes:
            best, low = body, k
        else:
            high = k
        k = (low + high) // 2
    return best


def decode_sketch(body: bytes, width: int, height: int) -> np.ndarray:
    """Decode a sketch body to its line map (uint8 H x W, 0/255) at the working size; ``BitstreamError`` if malformed."""
    quality, bits, paths = decode_bitmap_body(body, width, height)
    return render(paths, bits, LEVELS[quality].factor, width, height)


def control_image(sketch: np.ndarray, kind: SketchKind | str) -> Image.Image:
    """RGB control image for the profile's ControlNet from a decoded line map.

    HED: lines dilated to 3 pixels and blurred (soft, HED-like edges, white on black);
    Canny: the thin lines as they are.
    """
    lines = np.asarray(sketch, dtype=np.uint8)
    if SketchKind(kind) is SketchKind.HED:
        thick = cv2.dilate(lines, np.ones((3, 3), np.uint8))
        soft = cv2.GaussianBlur(thick.astype(np.float32), (0, 0), sigmaX=1.5)
        lines = np.clip(soft * 1.4, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([lines] * 3, axis=-1), "RGB")
