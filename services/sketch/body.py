"""Sketch body, the wire format of a coded sketch (the bitstream's ``sketch`` field).

======  =======  ==========================================================
offset  size     field
======  =======  ==========================================================
0       1        header: bits 7..5 version (3), bits 4..0 quality level
1       2        check: CRC-32 of (header, packed bitmap) & 0xFFFF, big-endian
3       0..n     the chain coder's bytes (integer range coder, canonical:
                 trailing zero bytes removed, nothing else accepted)
======  =======  ==========================================================

Versions: 3 (written now) codes with the integer range coder; 2 (bitstream v1
payloads from before) with constriction's float-quantised categorical, and is
still read (``services.sketch.legacy``) so old payloads keep decoding.

The working size comes from the payload, so it is not stored; the quality level
fixes the low-resolution grid (``services.sketch.lossy.LEVELS``) whose bilevel map
``services.sketch.chain_coder`` codes. Full description: ``docs/sketch.md``.
"""

from __future__ import annotations

import zlib

import numpy as np

from services.errors import BitstreamError, ImageInputError
from services.limits import DEFAULT_MAX_WORKING_PIXELS
from services.sketch.chain_coder import decode_bitmap, encode_bitmap, path_pixel_budget
from services.sketch.lossy import LEVELS, QUALITY_LEVELS, low_res_size

VERSION = 3  # 3: integer range coder; 2: constriction (read only); 1: never decoded
READ_VERSIONS = (2, 3)
HEADER_BYTES = 3


def _check(header: int, bits: np.ndarray) -> bytes:
    crc = zlib.crc32(np.packbits(bits.reshape(-1)).tobytes(), zlib.crc32(bytes([header])))
    return (crc & 0xFFFF).to_bytes(2, "big")


def encode_bitmap_body(bits: np.ndarray, quality: int, version: int = VERSION) -> tuple[bytes, list[list[int]]]:
    """Body for an already-lossy low-resolution map (the lossless stage plus header and check).

    ``version=2`` writes the legacy constriction coding (comparisons and tests only)."""
    if version not in READ_VERSIONS:
        raise ValueError(f"sketch body version must be one of {READ_VERSIONS}, got {version}")
    header = (version << 5) | quality
    data, paths = _lossless(version)[0](bits)
    if sum(len(path) for path in paths) > path_pixel_budget(len(data)):  # never seen on photos or line art
        raise ImageInputError(
            "this image's sketch has more line pixels than its coded size allows a decoder to draw "
            f"(path_pixel_budget); use a lower sketch quality than {quality}")
    return bytes([header]) + _check(header, bits) + data, paths


def _lossless(version: int):
    """(encode, decode) of a body version's lossless stage; the legacy coder is imported only when needed."""
    if version == 2:
        from services.sketch.legacy import decode_bitmap_v2, encode_bitmap_v2

        return encode_bitmap_v2, decode_bitmap_v2
    return encode_bitmap, decode_bitmap


def parse_header(body: bytes) -> int:
    """Validate a body's header; return its quality level."""
    if not isinstance(body, (bytes, bytearray, memoryview)) or len(body) < HEADER_BYTES:
        raise BitstreamError(f"sketch body too short: it needs at least {HEADER_BYTES} bytes; re-encode the image")
    header = body[0]
    if header >> 5 not in READ_VERSIONS:
        raise BitstreamError(
            f"unsupported sketch version {header >> 5}; this decoder reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}: re-encode the image with this version of textsketch"
        )
    quality = header & 0x1F
    if quality not in QUALITY_LEVELS:
        raise BitstreamError(f"unknown sketch quality level {quality} (known: 0..{len(LEVELS) - 1})")
    return quality


def decode_bitmap_body(body: bytes, width: int, height: int,
                       max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS) -> tuple[int, np.ndarray, list[list[int]]]:
    """Quality level, low-resolution map and chains of a body at the working size ``width`` x ``height``."""
    quality = parse_header(body)
    if not all(isinstance(side, (int, np.integer)) and side >= 1 for side in (width, height)):
        raise ValueError(f"working size must be positive integers, got {width!r} x {height!r}")
    width, height = int(width), int(height)
    if width * height > max_working_pixels:
        raise BitstreamError(f"working size {width}x{height} exceeds the {max_working_pixels}-pixel sketch limit")
    w, h = low_res_size(width, height, quality)
    bits, paths = _lossless(body[0] >> 5)[1](bytes(body[HEADER_BYTES:]), w, h)
    if _check(body[0], bits) != bytes(body[1:HEADER_BYTES]):
        raise BitstreamError("corrupt or truncated sketch body (check mismatch); re-send the payload unmodified")
    return quality, bits, paths
