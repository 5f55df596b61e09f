"""The payload an encoder emits and a decoder consumes: one msgpack document.

Version 2 (written now) is an array of three fields, or four when a candidate was
chosen; every field uses msgpack's smallest encoding. The full field table, sizes
and ranges are in ``docs/bitstream.md``; in short:

====  =========  ============================  =========================================
 #    field      msgpack type                  range / meaning
====  =========  ============================  =========================================
 –    array      fixarray ``0x93`` / ``0x94``  3 fields, 4 with a candidate
 0    tag        positive fixint ``0x62``      marker nibble ``0x6``, version 2
 1    header     uint32 (uint64 for            ``profile << 29 | mode << 28 |
                 profile ids >= 8)             (width - 1) << 14 | (height - 1)``
 2    body       bin8 / bin16                  PIC: the prompt body; PICS: the prompt
                                               length (1 byte) + prompt + sketch body
 3    candidate  positive fixint               1..``MAX_CANDIDATE``; absent = none
====  =========  ============================  =========================================

Container overhead (everything but the prompt and sketch bodies) for a real
profile (ids 1..7): PIC 9 bytes (1 array + 1 tag + 5 header + 2 bin8 header), PICS
11 bytes once the body passes 255 bytes (bin16 header, plus the prompt length
byte), one more with a candidate. Version 1 (an array of eight positional fields,
tag ``0x61``, 14-16 bytes of overhead) is still parsed, so payloads written before
keep decoding to the same image; ``Payload.version`` says which one a payload is.

There is no seed: ``derive_seed`` hashes the canonical payload bytes with the
candidate cleared, plus the candidate index, so every decoder draws the same noise
and candidate ``k`` rendered for selection equals the payload later sent with
``candidate=k``. Because the seed depends on the bytes, the parser accepts only
the canonical (smallest) encoding of each payload.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

import msgpack

from services.errors import BitstreamError
from services.profiles import ProfileId

FORMAT_MARKER = 0x60
VERSION = 2
TAG_V1 = FORMAT_MARKER | 1
TAG_V2 = FORMAT_MARKER | 2
READ_VERSIONS = (1, 2)
N_FIELDS_V1 = 8
N_FIELDS_V2 = (3, 4)  # without / with a candidate

MAX_SIDE = 16384  # width and height are 1..MAX_SIDE (14 bits after -1)
MAX_PIXELS = 16384 * 16384 // 4  # 67 Mpx: larger originals are refused
MAX_PROMPT_BYTES = 255  # v2: one length byte (75 CLIP tokens cost at most ~175 bytes under the prior)
MAX_PROMPT_BYTES_V1 = 1024
MAX_SKETCH_BYTES = 65535
MAX_BODY_BYTES = 65535  # v2: the body is at most a bin16
MAX_CANDIDATE = 64
MAX_PAYLOAD_BYTES = 16 + MAX_PROMPT_BYTES_V1 + MAX_SKETCH_BYTES  # the larger of the two versions

_SIDE_BITS = 14
_SIDE_MASK = (1 << _SIDE_BITS) - 1
_MODE_SHIFT = 2 * _SIDE_BITS
_PROFILE_SHIFT = _MODE_SHIFT + 1


class Mode(enum.IntEnum):
    """Wire ids of the coding modes. Never renumber."""

    PIC = 0  # prompt only
    PICS = 1  # prompt + sketch


@dataclass(frozen=True)
class Payload:
    """One coded image: what travels between encoder and decoder."""

    profile: int
    width: int
    height: int
    mode: Mode
    prompt: bytes
    sketch: bytes | None = None
    candidate: int = 0
    version: int = VERSION  # container version it is packed as (the encoder writes the newest)

    def __post_init__(self) -> None:
        _validate_fields(self.profile, self.width, self.height, self.mode, self.prompt, self.sketch, self.candidate,
                         self.version)
        object.__setattr__(self, "mode", Mode(self.mode))

    def to_bytes(self) -> bytes:
        """Pack into the canonical byte string of ``self.version``."""
        if self.version == 1:
            fields = [TAG_V1, int(self.profile), self.width, self.height, int(self.mode), self.prompt, self.sketch,
                      self.candidate]
        else:
            header = ((int(self.profile) << _PROFILE_SHIFT) | (int(self.mode) << _MODE_SHIFT)
                      | ((self.width - 1) << _SIDE_BITS) | (self.height - 1))
            body = self.prompt if self.mode == Mode.PIC else bytes([len(self.prompt)]) + self.prompt + self.sketch
            fields = [TAG_V2, header, body] + ([self.candidate] if self.candidate else [])
        return msgpack.packb(fields, use_bin_type=True)

    def with_candidate(self, candidate: int) -> Payload:
        return replace(self, candidate=candidate)

    @property
    def overhead_bytes(self) -> int:
        """Container bytes beyond the prompt and sketch bodies."""
        return len(self.to_bytes()) - len(self.prompt) - len(self.sketch or b"")

    def bpp(self, n_bytes: int | None = None) -> float:
        """Bits per pixel of the original image."""
        size = len(self.to_bytes()) if n_bytes is None else n_bytes
        return size * 8 / (self.width * self.height)


def _fail(message: str) -> BitstreamError:
    return BitstreamError(f"invalid payload: {message}")


def _validate_fields(profile, width, height, mode, prompt, sketch, candidate, version) -> None:
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if version not in READ_VERSIONS:
        raise _fail(f"unsupported bitstream version {version!r} (known: {', '.join(map(str, READ_VERSIONS))})")
    if not is_int(profile) or profile not in ProfileId._value2member_map_:
        known = ", ".join(str(int(p)) for p in ProfileId)
        raise _fail(f"unknown model profile id {profile!r} (known: {known})")
    for name, side in (("width", width), ("height", height)):
        if not is_int(side) or not 1 <= side <= MAX_SIDE:
            raise _fail(f"{name} must be an integer in 1..{MAX_SIDE}, got {side!r}")
    if width * height > MAX_PIXELS:
        raise _fail(f"{width}x{height} exceeds the {MAX_PIXELS}-pixel limit")
    if not is_int(mode) or mode not in Mode._value2member_map_:
        raise _fail(f"mode must be 0 (PIC) or 1 (PICS), got {mode!r}")
    max_prompt = MAX_PROMPT_BYTES_V1 if version == 1 else MAX_PROMPT_BYTES
    if not isinstance(prompt, bytes) or not 1 <= len(prompt) <= max_prompt:
        raise _fail(f"prompt must be 1..{max_prompt} bytes of binary data")
    if mode == Mode.PIC and sketch is not None:
        raise _fail("a PIC payload carries no sketch")
    if mode == Mode.PICS:
        if not isinstance(sketch, bytes) or not 1 <= len(sketch) <= MAX_SKETCH_BYTES:
            raise _fail(f"a PICS payload needs a sketch of 1..{MAX_SKETCH_BYTES} bytes of binary data")
        if version == 2 and 1 + len(prompt) + len(sketch) > MAX_BODY_BYTES:
            raise _fail(f"prompt and sketch together exceed the {MAX_BODY_BYTES}-byte body limit")
    if not is_int(candidate) or not 0 <= candidate <= MAX_CANDIDATE:
        raise _fail(f"candidate must be an integer in 0..{MAX_CANDIDATE}, got {candidate!r}")


def parse(data: bytes) -> Payload:
    """Parse and validate a payload (version 2 or 1); raise ``BitstreamError`` on anything else.

    Sizes are checked before anything is allocated: the total length first, then
    the leading bytes (array size, marker, version), then msgpack's own limits (one
    short array, bins no longer than the body limit, no maps, strings or extension
    types), then every field, then canonical encoding.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _fail(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise _fail("empty body; send the msgpack bytes returned by /encode")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise _fail(f"{len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    if len(data) < 2 or data[0] & 0xF0 != 0x90 or data[1] & 0xF0 != FORMAT_MARKER:
        raise _fail("not a text+sketch payload (expected a msgpack array starting with the format marker)")
    version = data[1] & 0x0F
    if version not in READ_VERSIONS:
        raise _fail(f"unsupported bitstream version {version}; this decoder reads versions "
                    f"{', '.join(map(str, READ_VERSIONS))}")
    lengths = (N_FIELDS_V1,) if version == 1 else N_FIELDS_V2
    if data[0] & 0x0F not in lengths:
        raise _fail(f"a version {version} payload is a msgpack array of {' or '.join(map(str, lengths))} fields")
    fields = _unpack(data)
    payload = _payload_v1(fields) if version == 1 else _payload_v2(fields)
    if payload.to_bytes() != data:
        raise _fail("non-canonical msgpack encoding (each field must use its smallest encoding)")
    return payload


def _unpack(data: bytes) -> list:
    try:
        fields = msgpack.unpackb(
            data,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_SKETCH_BYTES,
            max_str_len=0,
            max_array_len=N_FIELDS_V1,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise _fail("trailing bytes after the payload") from None
    except Exception as exc:  # msgpack raises several types for bad data
        raise _fail(f"truncated or corrupt msgpack ({type(exc).__name__})") from None
    if not isinstance(fields, list):
        raise _fail("expected a msgpack array")
    return fields


def _payload_v1(fields: list) -> Payload:
    _, profile, width, height, mode, prompt, sketch, candidate = fields
    return Payload(profile, width, height, mode, prompt, sketch, candidate, version=1)  # validates every field


def _payload_v2(fields: list) -> Payload:
    _, header, body = fields[:3]
    candidate = fields[3] if len(fields) == 4 else 0
    if not isinstance(header, int) or isinstance(header, bool) or not 0 <= header < 1 << 64:
        raise _fail(f"header must be an unsigned integer, got {header!r}")
    if not isinstance(body, bytes) or not body:
        raise _fail("body must be non-empty binary data")
    if len(fields) == 4 and (not isinstance(candidate, int) or isinstance(candidate, bool) or candidate < 1):
        raise _fail(f"candidate, when present, must be an integer in 1..{MAX_CANDIDATE}, got {candidate!r}")
    profile, mode = header >> _PROFILE_SHIFT, (header >> _MODE_SHIFT) & 1
    width, height = ((header >> _SIDE_BITS) & _SIDE_MASK) + 1, (header & _SIDE_MASK) + 1
    if mode == Mode.PIC:
        prompt, sketch = body, None
    else:
        length = body[0]
        if length == 0 or len(body) < 2 + length:
            raise _fail(f"a PICS body holds a prompt length (1..{MAX_PROMPT_BYTES}), the prompt and a sketch; "
                        f"got {len(body)} bytes declaring a {length}-byte prompt")
        prompt, sketch = body[1 : 1 + length], body[1 + length :]
    return Payload(profile, width, height, mode, prompt, sketch, candidate, version=2)  # validates every field


def derive_seed(payload: Payload, candidate: int | None = None) -> int:
    """Sampling seed of a payload: a hash of its bytes (candidate cleared) and the candidate index."""
    index = payload.candidate if candidate is None else candidate
    core = payload.with_candidate(0).to_bytes()
    digest = hashlib.sha256(core + bytes([index])).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
