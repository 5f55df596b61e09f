"""Hostile inputs for the reliability tests and benchmarks: payloads and image files.

* ``hostile_payloads(n, seed)``: hand-made msgpack traps (huge declared lengths,
  deep nesting, wrong types, extreme sizes), then mutations of valid payloads
  (the golden files when a source checkout has them, and tiny-profile PIC/PICS
  payloads) and random bytes.
* ``hostile_images(max_upload_bytes)``: decompression bombs, lying headers,
  truncated files, wrong types, animated / 16-bit / CMYK / palette images, each
  with the HTTP statuses it may get.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
from PIL import Image

from services.testing.payloads import pic_payload, tiny_pics_payload

GOLDEN = Path(__file__).resolve().parents[2] / "tests" / "golden"  # present in a source checkout

# msgpack type bytes worth planting: nil, never-used, bins/strs/arrays/maps of every width, ext, floats.
_INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0x8F, 0x90, 0x98, 0x9F, 0xC0, 0xC1, 0xC2, 0xC4, 0xC5, 0xC6, 0xC7,
                0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD4, 0xD9, 0xDA, 0xDB, 0xDC, 0xDD, 0xDE, 0xDF,
                0xE0, 0xFF)



def seed_payloads() -> list[bytes]:
    """Real, valid payloads to mutate: the golden files (sd21-hed) and tiny-profile PIC/PICS payloads."""
    seeds = [p.read_bytes() for p in sorted(GOLDEN.glob("payload_v*.bin"))]
    seeds.append(pic_payload())
    seeds.append(pic_payload(token_ids=tuple(range(400, 475)), width=768, height=512))
    seeds.append(tiny_pics_payload())
    return seeds


def mutate(data: bytes, rng: random.Random, seeds: Sequence[bytes]) -> bytes:
    """One to four random mutations: flips, planted type bytes, inserts, deletes, truncation, splices."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:
            i = min(pos, len(out) - 1)
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op == 2 and out:
            out[min(pos, len(out) - 1)] = rng.choice(_INTERESTING)
        elif op == 3:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 4:
            del out[pos:pos + rng.randint(1, 16)]
        elif op == 5:
            del out[pos:]
        elif op == 6:  # a big-endian length or integer field set to an extreme
            out[pos:pos + 4] = struct.pack(">I", rng.choice((0, 1, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF)))
        elif op == 7:
            other = rng.choice(seeds)
            cut = rng.randrange(len(other) + 1)
            out[pos:] = other[cut:]
        else:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    return bytes(out)


def msgpack_traps() -> list[bytes]:
    """Hand-made bodies aimed at the unpacker: huge declared lengths, deep nesting, wrong types."""
    head = bytes([0x98, 0x61])
    traps = [
        b"", b"\x98", head, head + b"\x07",
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00\xc6\xff\xff\xff\xff",  # bin32 declaring 4 GiB
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00\xdb\xff\xff\xff\xff",  # str32 declaring 4 GiB
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00\xdd\xff\xff\xff\xff",  # array32 of 4 G items
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00\xdf\xff\xff\xff\xff",  # map32 of 4 G pairs
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00\xc7\xff\x01",  # ext8
        head + b"\x07\xcd\x03\x00\xcd\x02\x00\x00" + b"\x91" * 5000 + b"\x00\xc0\x00",  # 5000-deep nesting
        msgpack.packb([0x61, 7, 768, 512, 0, {"a": 1}, None, 0]),
        msgpack.packb([0x61, 7, 768, 512, 0, "text not bin", None, 0]),
        msgpack.packb([0x61, 7, 768.0, 512, 0, b"\x01", None, 0], use_bin_type=True),
        msgpack.packb([0x61, 7, -768, 512, 0, b"\x01", None, 0], use_bin_type=True),
        msgpack.packb([0x61, 7, True, 512, 0, b"\x01", None, 0], use_bin_type=True),
        msgpack.packb([0x61, 7, 2**64 - 1, 512, 0, b"\x01", None, 0], use_bin_type=True),
        msgpack.packb([0x61, 7, 16384, 1, 0, b"\x01", None, 0], use_bin_type=True),  # 8388608x512 working size
        msgpack.packb([0x61, 7, 768, 512, 1, b"\x01", b"", 0], use_bin_type=True),
        msgpack.packb([0x61, 7, 768, 512, 0, b"\x01", None, 65], use_bin_type=True),
        msgpack.packb([0x61, 200, 768, 512, 0, b"\x01", None, 0], use_bin_type=True),
        msgpack.packb([0x62, 7, 768, 512, 0, b"\x01", None, 0], use_bin_type=True),  # version 2
        msgpack.packb([0x61, 7, 768, 512, 0, b"\x01", None, 0, 0], use_bin_type=True),  # 9 fields
        msgpack.packb(list(range(8)), use_bin_type=True),
        *_v2_traps(),
        b"\x80", b"\xc0", b"\xc1" * 64, b"\x00" * 1024, b"\xff" * 70000,
        b"GET / HTTP/1.1\r\n\r\n", b"\x89PNG\r\n\x1a\n",
    ]
    return traps


def _v2_traps() -> list[bytes]:
    """Version 2 bodies with lying headers, lengths and types (array of 3 or 4: tag, header, body, candidate)."""
    def header(profile=1, mode=0, width=768, height=512):
        return profile << 29 | mode << 28 | (width - 1) << 14 | (height - 1)

    head = bytes([0x93, 0x62])
    return [
        head, head + b"\xce", head + b"\xce\x30\x00\x00\x00",
        head + b"\xce\x30\x00\x00\x00\xc6\xff\xff\xff\xff",  # bin32 declaring 4 GiB
        head + b"\xce\x30\x00\x00\x00\xdd\xff\xff\xff\xff",  # array32 of 4 G items
        head + b"\xce\x30\x00\x00\x00" + b"\x91" * 5000 + b"\x00",  # deep nesting
        msgpack.packb([0x62, header(), b"\x01", 0], use_bin_type=True),  # candidate 0 written out
        msgpack.packb([0x62, header(width=16384, height=16384), b"\x01"], use_bin_type=True),
        msgpack.packb([0x62, header(mode=1), bytes([200]) + b"\x01" * 10], use_bin_type=True),  # prompt past the end
        msgpack.packb([0x62, header(mode=1), bytes([1, 1])], use_bin_type=True),  # no sketch
        msgpack.packb([0x62, header(profile=0), b"\x01"], use_bin_type=True),
        msgpack.packb([0x62, 2**64 - 1, b"\x01"], use_bin_type=True),
        msgpack.packb([0x62, -5, b"\x01"], use_bin_type=True),
        msgpack.packb([0x62, header(), "text not bin"], use_bin_type=True),
        msgpack.packb([0x63, header(), b"\x01"], use_bin_type=True),  # version 3
        msgpack.packb([0x62, header(), b"\x01", 65], use_bin_type=True),
        msgpack.packb([0x62, header(), b"\x01", 1, 1], use_bin_type=True),  # 5 fields
    ]


def hostile_payloads(n: int, seed: int = 0) -> Iterator[bytes]:
    """``n`` hostile bodies: the traps first, then a mix of mutated seeds (80%) and random bytes."""
    rng = random.Random(seed)  # nosec B311 - reproducible fuzzing, not cryptography
    seeds = seed_payloads()
    traps = msgpack_traps()
    for i in range(n):
        if i < len(traps):
            yield traps[i]
        elif rng.random() < 0.8:
            yield mutate(rng.choice(seeds), rng, seeds)
        else:
            yield bytes(rng.randrange(256) for _ in range(rng.choice((1, 2, 8, 16, 64, 300, 2000))))


# -- hostile images ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HostileImage:
    name: str
    data: bytes
    content_type: str
    expected: tuple[int, ...]  # acceptable HTTP statuses (200 = a correct encode)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` x ``height`` (the pixel data is one short row)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def png_zero_bomb(side: int = 8000) -> bytes:
    """A real, fully valid grey PNG of side x side zeros: ~64 Mpx decompressed from a few tens of KiB."""
    rows = (b"\x00" + b"\x00" * side) * side
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows, 9))
            + _png_chunk(b"IEND", b""))


def png_1bit(width: int = 40000, height: int = 1000) -> bytes:
    """A real, valid 1-bit black PNG: 40 Mpx (as RGB 120 MB) in about 5 kB; its working size is 20480x512."""
    rows = (b"\x00" + b"\x00" * ((width + 7) // 8)) * height
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows, 9))
            + _png_chunk(b"IEND", b""))


def png_ztxt_bomb(megabytes: int = 64) -> bytes:
    """A valid 8x8 PNG carrying a zTXt chunk that inflates to ``megabytes`` MB of text."""
    base = _save(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    ztxt = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"a" * (megabytes * 1_000_000), 9))
    return base[:33] + ztxt + base[33:]  # after the signature and IHDR


def gif_declaring(width: int, height: int) -> bytes:
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + image + b"\x3b"


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small real JPEG with the SOF0 frame size rewritten."""
    data = bytearray(_save(Image.new("RGB", (16, 16), (200, 30, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _save(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """A small colourful image with some structure (gradients and a disc), made in code."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (min(size) / 3) ** 2) * 120
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), 255 - disc], axis=-1)
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "RGB")


def hostile_images(max_upload_bytes: int, *, include_zero_bomb: bool = True) -> list[HostileImage]:
    """The hostile image set; ``max_upload_bytes`` is the limit the receiver enforces (for the over-limit case)."""
    photo = _photo()
    png = _save(photo, "PNG")
    jpeg = _save(photo, "JPEG", quality=90)
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.rotate(180)]
    animated = _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257)  # mode I;16
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    items = [
        HostileImage("png_declares_50000x50000", png_declaring(50000, 50000), "image/png", (413,)),
        HostileImage("gif_declares_65535x65535", gif_declaring(65535, 65535), "image/gif", (413,)),
        HostileImage("jpeg_declares_60000x60000", jpeg_declaring(60000, 60000), "image/jpeg", (413,)),
        HostileImage("png_declares_0x0", png_declaring(0, 0), "image/png", (413, 415, 422)),
        # Within the 40 Mpx limit, but its working size is 10 Mpx: refused from the header, never decoded.
        HostileImage("png_1bit_40000x1000", png_1bit(), "image/png", (413,)),
        # A 16x16 JPEG whose header says 6000x6000 (36 Mpx, legal): Pillow fills the missing data, so it is
        # encoded; decoded at 1/8 scale (750x750), not at 6000x6000.
        HostileImage("jpeg_declares_6000x6000", jpeg_declaring(6000, 6000), "image/jpeg", (200,)),
        HostileImage("png_ztxt_bomb_64MB_text", png_ztxt_bomb(), "image/png", (200, 413, 422)),
        HostileImage("truncated_png", png[: len(png) // 2], "image/png", (422,)),
        HostileImage("truncated_jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", (422,)),
        HostileImage("png_header_only", png[:16], "image/png", (415, 422)),
        HostileImage("empty_body", b"", "image/png", (422,)),
        HostileImage("text_sent_as_png", b"this is not an image\n" * 20, "image/png", (415,)),
        HostileImage("svg_script", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
                     "image/svg+xml", (415,)),
        HostileImage("png_sent_as_text_plain", png, "text/plain", (415,)),
        HostileImage("png_without_content_type", png, "", (415,)),
        HostileImage("ico_format", _save(photo.resize((32, 32)), "ICO"), "image/x-icon", (415,)),
        HostileImage("over_size_limit", png + b"\x00" * (max_upload_bytes + 1 - len(png)), "image/png", (413,)),
        HostileImage("animated_gif_3_frames", animated, "image/gif", (200,)),
        HostileImage("grey_16bit_png", _save(grey16, "PNG"), "image/png", (200,)),
        HostileImage("cmyk_jpeg", _save(photo.convert("CMYK"), "JPEG"), "image/jpeg", (200,)),
        HostileImage("palette_png_transparency", _save(palette, "PNG"), "image/png", (200,)),
        HostileImage("rgba_webp", _save(photo.convert("RGBA"), "WEBP"), "image/webp", (200,)),
        HostileImage("one_pixel_png", _save(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "image/png", (200,)),
    ]
    if include_zero_bomb:
        items.insert(1, HostileImage("png_zero_bomb_8000x8000", png_zero_bomb(), "image/png", (413,)))
    return items
