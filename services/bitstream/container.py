"""Bitstream v1: the payload an encoder emits and a decoder consumes.

A payload is one msgpack array of eight positional fields, packed with the
smallest msgpack encodings (``use_bin_type``), no string keys. The full field
table, sizes and ranges are in ``docs/bitstream.md``; in short:

====  ===========  ==================  ===========================================
 #    field        msgpack type        range / meaning
====  ===========  ==================  ===========================================
 0    tag          positive fixint     ``0x61``: high nibble ``0x6`` marks the
                                       format, low nibble is the version (1)
 1    profile      positive fixint     ``ProfileId`` (1..127)
 2    width        uint                original width, 1..``MAX_SIDE``
 3    height       uint                original height, 1..``MAX_SIDE``;
                                       width*height <= ``MAX_PIXELS``
 4    mode         positive fixint     ``Mode``: 0 = PIC, 1 = PICS
 5    prompt       bin                 coded token ids, 1..``MAX_PROMPT_BYTES``
 6    sketch       bin | nil           coded sketch (PICS), 1..``MAX_SKETCH_BYTES``;
                                       nil for PIC
 7    candidate    positive fixint     0 = none, else 1..``MAX_CANDIDATE``
====  ===========  ==================  ===========================================

Container overhead (everything but the prompt and sketch bodies) is at most
16 bytes: 1 array header + 1 tag + 1 profile + 3 + 3 width/height + 1 mode +
2 prompt header (bin8) + 3 sketch header (bin16) + 1 candidate. PIC payloads
carry 14 bytes of overhead (nil sketch).

There is no seed: ``derive_seed`` hashes the canonical payload bytes with the
candidate field cleared, plus the candidate index, so every decoder draws the
same noise and candidate ``k`` rendered for selection equals the payload later
sent with ``candidate=k``. Because the seed depends on the bytes, the parser
accepts only the canonical (smallest) encoding of each payload.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace

import msgpack

from services.errors import BitstreamError
from services.profiles import ProfileId

FORMAT_MARKER = 0x60
VERSION = 1
TAG_V1 = FORMAT_MARKER | VERSION
N_FIELDS = 8

MAX_SIDE = 16384
MAX_PIXELS = 16384 * 16384 // 4  # 67 Mpx: larger originals are refused
MAX_PROMPT_BYTES = 1024
MAX_SKETCH_BYTES = 65535
MAX_CANDIDATE = 64
MAX_PAYLOAD_BYTES = 16 + MAX_PROMPT_BYTES + MAX_SKETCH_BYTES


class Mode(enum.IntEnum):
    """Wire ids of the coding modes (field ``mode``). Never renumber."""

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

    def __post_init__(self) -> None:
        _validate_fields(self.profile, self.width, self.height, self.mode, self.prompt, self.sketch, self.candidate)
        object.__setattr__(self, "mode", Mode(self.mode))

    def to_bytes(self) -> bytes:
        """Pack into the canonical v1 byte string."""
        return msgpack.packb(
            [TAG_V1, int(self.profile), self.width, self.height, int(self.mode), self.prompt, self.sketch, self.candidate],
            use_bin_type=True,
        )

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


def _validate_fields(profile, width, height, mode, prompt, sketch, candidate) -> None:
    def is_int(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

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
    if not isinstance(prompt, bytes) or not 1 <= len(prompt) <= MAX_PROMPT_BYTES:
        raise _fail(f"prompt must be 1..{MAX_PROMPT_BYTES} bytes of binary data")
    if mode == Mode.PIC and sketch is not None:
        raise _fail("a PIC payload must not carry a sketch (field 6 must be nil)")
    if mode == Mode.PICS and (not isinstance(sketch, bytes) or not 1 <= len(sketch) <= MAX_SKETCH_BYTES):
        raise _fail(f"a PICS payload needs a sketch of 1..{MAX_SKETCH_BYTES} bytes of binary data")
    if not is_int(candidate) or not 0 <= candidate <= MAX_CANDIDATE:
        raise _fail(f"candidate must be an integer in 0..{MAX_CANDIDATE}, got {candidate!r}")


def parse(data: bytes) -> Payload:
    """Parse and validate a v1 payload; raise ``BitstreamError`` on anything else.

    Sizes are checked before anything is allocated: the total length first,
    then msgpack's own limits (one array of ``N_FIELDS``, bins no longer than
    the body limits, no maps, strings or extension types).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _fail(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise _fail("empty body; send the msgpack bytes returned by /encode")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise _fail(f"{len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    if data[0] != 0x90 | N_FIELDS:
        raise _fail("not a text+sketch payload (expected a msgpack array of 8 fields)")
    if len(data) < 2 or data[1] & 0xF0 != FORMAT_MARKER:
        raise _fail("missing format marker; this is not a text+sketch payload")
    if data[1] != TAG_V1:
        raise _fail(f"unsupported bitstream version {data[1] & 0x0F}; this decoder reads version {VERSION}")
    try:
        fields = msgpack.unpackb(
            data,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_SKETCH_BYTES,
            max_str_len=0,
            max_array_len=N_FIELDS,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise _fail("trailing bytes after the payload") from None
    except Exception as exc:  # msgpack raises several types for bad data
        raise _fail(f"truncated or corrupt msgpack ({type(exc).__name__})") from None
    if not isinstance(fields, list) or len(fields) != N_FIELDS:
        raise _fail("expected a msgpack array of 8 fields")
    _, profile, width, height, mode, prompt, sketch, candidate = fields
    _validate_fields(profile, width, height, mode, prompt, sketch, candidate)
    payload = Payload(profile, width, height, Mode(mode), prompt, sketch, candidate)
    if payload.to_bytes() != data:
        raise _fail("non-canonical msgpack encoding (each field must use its smallest encoding)")
    return payload


def derive_seed(payload: Payload, candidate: int | None = None) -> int:
    """Sampling seed of a payload: a hash of its bytes (candidate cleared) and the candidate index."""
    index = payload.candidate if candidate is None else candidate
    core = payload.with_candidate(0).to_bytes()
    digest = hashlib.sha256(core + bytes([index])).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
