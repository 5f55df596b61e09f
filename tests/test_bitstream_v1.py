"""Bitstream v1 (eight positional fields, tag 0x61): payloads written before v2 keep parsing, unchanged."""

from __future__ import annotations

import json

import msgpack
import pytest

from services.bitstream.container import (
    MAX_CANDIDATE,
    MAX_PROMPT_BYTES_V1,
    MAX_SKETCH_BYTES,
    TAG_V1,
    Mode,
    Payload,
    derive_seed,
    parse,
)
from services.errors import BitstreamError
from services.profiles import ProfileId
from tests.paths import GOLDEN

# Frozen: written by the v1 encoder, never regenerated.
V1_GOLDEN = {
    "payload_v1_pics": Payload(ProfileId.SD21_HED, 768, 512, Mode.PICS, bytes(range(1, 25)),
                               bytes(range(256)) + bytes(44), candidate=3, version=1),
    "payload_v1_pic": Payload(ProfileId.TINY, 100, 600, Mode.PIC, b"\x07" * 20, version=1),
}


@pytest.mark.parametrize("name", sorted(V1_GOLDEN))
def test_v1_golden_payloads_parse_to_the_same_fields_and_seed(name):
    data = (GOLDEN / f"{name}.bin").read_bytes()
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    payload = parse(data)
    assert payload == V1_GOLDEN[name] and payload.version == 1
    assert payload.to_bytes() == data  # re-packed as v1, byte for byte
    assert derive_seed(payload) == expected["seed"]  # so a v1 payload still draws the same image
    fields = {"profile": payload.profile, "width": payload.width, "height": payload.height,
              "mode": int(payload.mode), "prompt": payload.prompt.hex(),
              "sketch": payload.sketch.hex() if payload.sketch is not None else None, "candidate": payload.candidate}
    assert fields == {k: v for k, v in expected.items() if k != "seed"}


def test_v1_overhead_as_it_was():
    assert V1_GOLDEN["payload_v1_pics"].overhead_bytes == 16
    assert Payload(ProfileId.SD21_HED, 768, 512, Mode.PIC, b"p" * 30, version=1).overhead_bytes == 14


GOOD = [TAG_V1, 1, 768, 512, 1, b"prompt", b"sketch", 0]


@pytest.mark.parametrize("fields, message", [
    (GOOD[:7], "array of 8 fields"),
    ([*GOOD[:1], 99, *GOOD[2:]], "unknown model profile id 99"),
    ([*GOOD[:5], b"x" * (MAX_PROMPT_BYTES_V1 + 1), *GOOD[6:]], f"prompt must be 1..{MAX_PROMPT_BYTES_V1} bytes"),
    ([*GOOD[:4], 0, *GOOD[5:]], "a PIC payload carries no sketch"),
    ([*GOOD[:6], None, 0], "a PICS payload needs a sketch"),
    ([*GOOD[:7], MAX_CANDIDATE + 1], "candidate must be an integer in 0..64"),
    ([*GOOD[:6], b"s" * (MAX_SKETCH_BYTES + 1), 0], "truncated or corrupt"),
])
def test_v1_invalid_fields_are_named(fields, message):
    with pytest.raises(BitstreamError) as info:
        parse(msgpack.packb(fields, use_bin_type=True))
    assert message in str(info.value)


def test_v1_non_canonical_is_refused():
    canonical = msgpack.packb(GOOD, use_bin_type=True)
    padded_width = canonical.replace(b"\xcd\x03\x00", b"\xce\x00\x00\x03\x00", 1)
    with pytest.raises(BitstreamError, match="non-canonical"):
        parse(padded_width)
