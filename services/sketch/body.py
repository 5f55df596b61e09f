"""Sketch body, the wire format of a coded sketch (the bitstream's ``sketch`` field).

======  =======  ==========================================================
offset  size     field
======  =======  ==========================================================
0       1        header: bits 7..5 version (2), bits 4..0 quality level
1       2        check: CRC-32 of (header, packed bitmap) & 0xFFFF, big-endian
3       0..n     range-coder words, big-endian, trailing zero bytes removed
======  =======  ==========================================================

The working size comes from the payload, so it is not stored; the quality level
fixes the low-resolution grid (``services.sketch.lossy.LEVELS``) whose bilevel map
``services.sketch.chain_coder`` codes. Full description: ``docs/sketch.md``.
"""

from __future__ import annotations

import zlib

import numpy as np

from services.errors import BitstreamError
from services.sketch.chain_coder import decode_bitmap, encode_bitmap
from services.sketch.lossy import LEVELS, QUALITY_LEVELS, low_res_size

VERSION = 2  # 2: typed path starts and fitted initial counts (version 1 bodies are not decoded)
HEADER_BYTES = 3
MAX_WORKING_PIXELS = 16 * 1024 * 1024


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
