"""Bitstream v1: round trips, golden file, limits, and fuzzing for the typed error."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bitstream.container import (
    MAX_CANDIDATE,
    MAX_PIXELS,
    MAX_PROMPT_BYTES,
    MAX_SIDE,
    MAX_SKETCH_BYTES,
    TAG_V1,
    Mode,
    Payload,
    derive_seed,
    parse,
)
from services.errors import BitstreamError
from services.profiles import ProfileId

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("TEXTSKETCH_REGEN_GOLDEN") == "1"


def golden_payloads() -> dict[str, Payload]:
    """Fixed payloads pinned on disk: regenerate only with TEXTSKETCH_REGEN_GOLDEN=1."""
    return {
        "payload_v1_pics": Payload(
            profile=ProfileId.SD21_HED, width=768, height=512, mode=Mode.PICS,
            prompt=bytes(range(1, 25)), sketch=bytes(range(256)) + bytes(44), candidate=3,
        ),
        "payload_v1_pic": Payload(
            profile=ProfileId.TINY, width=100, height=60000 // 100, mode=Mode.PIC, prompt=b"\x07" * 20,
        ),
    }


def field_dict(payload: Payload) -> dict:
    return {
        "profile": payload.profile, "width": payload.width, "height": payload.height,
        "mode": int(payload.mode), "prompt": payload.prompt.hex(),
        "sketch": payload.sketch.hex() if payload.sketch is not None else None,
        "candidate": payload.candidate, "seed": derive_seed(payload),
    }


@pytest.mark.parametrize("name", sorted(golden_payloads()))
def test_golden_payload_is_pinned(name):
    payload = golden_payloads()[name]
    bin_path, json_path = GOLDEN / f"{name}.bin", GOLDEN / f"{name}.json"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        bin_path.write_bytes(payload.to_bytes())
        json_path.write_text(json.dumps(field_dict(payload), indent=1) + "\n")
    data = bin_path.read_bytes()
    assert data == payload.to_bytes(), "wire format changed: bump the version or regenerate on purpose"
    parsed = parse(data)
    assert parsed == payload
    assert field_dict(parsed) == json.loads(json_path.read_text())


def test_overhead_is_at_most_16_bytes():
    pics = golden_payloads()["payload_v1_pics"]
    assert pics.overhead_bytes == 16  # 300-byte sketch: bin16 header, 3-byte width/height
    largest = Payload(ProfileId.SD21_HED, MAX_SIDE, MAX_SIDE // 4, Mode.PICS,
                      b"p" * MAX_PROMPT_BYTES, b"s" * MAX_SKETCH_BYTES, MAX_CANDIDATE)
    assert largest.overhead_bytes == 17  # only when the prompt body passes 255 bytes (> 75 tokens can't)
    pic = Payload(ProfileId.SD21_HED, 768, 512, Mode.PIC, b"p" * 30)
    assert pic.overhead_bytes == 14


def test_prompt_of_75_tokens_keeps_overhead_at_16():
    # A 75-token prompt at the uniform worst case (15.6 bits/token) is < 150 bytes: bin8.
    payload = Payload(ProfileId.SD21_HED, 16384, 4096, Mode.PICS, b"p" * 255, b"s" * MAX_SKETCH_BYTES, MAX_CANDIDATE)
    assert payload.overhead_bytes == 16


payload_strategy = st.builds(
    Payload,
    profile=st.sampled_from(list(ProfileId)),
    width=st.integers(1, MAX_SIDE),
    height=st.integers(1, 4096),
    mode=st.just(Mode.PIC),
    prompt=st.binary(min_size=1, max_size=300),
    sketch=st.none(),
    candidate=st.integers(0, MAX_CANDIDATE),
) | st.builds(
    Payload,
    profile=st.sampled_from(list(ProfileId)),
    width=st.integers(1, 4096),
    height=st.integers(1, MAX_SIDE),
    mode=st.just(Mode.PICS),
    prompt=st.binary(min_size=1, max_size=300),
    sketch=st.binary(min_size=1, max_size=2000),
    candidate=st.integers(0, MAX_CANDIDATE),
)


@given(payload_strategy)
def test_round_trip_every_field(payload):
    data = payload.to_bytes()
    assert parse(data) == payload
    assert len(data) - len(payload.prompt) - len(payload.sketch or b"") <= 17


def test_seed_depends_on_bytes_and_candidate_only():
    payload = golden_payloads()["payload_v1_pics"]
    assert derive_seed(payload) == derive_seed(parse(payload.to_bytes()))
    assert derive_seed(payload) == derive_seed(payload.with_candidate(0), candidate=3)
    seeds = {derive_seed(payload, candidate=k) for k in range(0, 9)}
    assert len(seeds) == 9
    assert 0 <= derive_seed(payload) < 2**63


def pack(fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


GOOD = [TAG_V1, 1, 768, 512, 1, b"prompt", b"sketch", 0]


@pytest.mark.parametrize(
    "fields, message",
    [
        ([TAG_V1 + 1, *GOOD[1:]], "unsupported bitstream version 2"),
        ([0x11, *GOOD[1:]], "missing format marker"),
        (GOOD[:7], "expected a msgpack array of 8 fields"),
        ([*GOOD[:1], 99, *GOOD[2:]], "unknown model profile id 99"),
        ([*GOOD[:2], 0, *GOOD[3:]], "width must be an integer in 1..16384"),
        ([*GOOD[:3], MAX_SIDE + 1, *GOOD[4:]], "height must be an integer"),
        ([*GOOD[:2], MAX_SIDE, MAX_SIDE, *GOOD[4:]], f"exceeds the {MAX_PIXELS}-pixel limit"),
        ([*GOOD[:4], 2, *GOOD[5:]], "mode must be 0 (PIC) or 1 (PICS)"),
        ([*GOOD[:5], b"", *GOOD[6:]], "prompt must be 1..1024 bytes"),
        ([*GOOD[:5], b"x" * (MAX_PROMPT_BYTES + 1), *GOOD[6:]], "prompt must be 1..1024 bytes"),
        ([*GOOD[:4], 0, *GOOD[5:]], "a PIC payload must not carry a sketch"),
        ([*GOOD[:6], None, 0], "a PICS payload needs a sketch"),
        ([*GOOD[:7], MAX_CANDIDATE + 1], "candidate must be an integer in 0..64"),
        ([*GOOD[:7], True], "candidate must be an integer"),
        ([*GOOD[:2], 768.0, *GOOD[3:]], "width must be an integer"),
    ],
)
def test_invalid_fields_are_named(fields, message):
    with pytest.raises(BitstreamError) as info:
        parse(pack(fields))
    assert message in str(info.value)


def test_strings_maps_and_non_canonical_encodings_are_refused():
    with pytest.raises(BitstreamError, match="truncated or corrupt"):
        parse(pack([*GOOD[:5], "text", *GOOD[6:]]))  # str instead of bin
    with pytest.raises(BitstreamError):
        parse(pack([*GOOD[:7], {"a": 1}]))
    canonical = pack(GOOD)
    padded_width = canonical.replace(b"\xcd\x03\x00", b"\xce\x00\x00\x03\x00", 1)  # uint32 for 768
    assert padded_width != canonical
    with pytest.raises(BitstreamError, match="non-canonical"):
        parse(padded_width)


@pytest.mark.parametrize("data, message", [
    (b"", "empty body"),
    (pack(GOOD) + b"\x00", "trailing bytes"),
    (b"\x89PNG\r\n\x1a\n", "not a text\\+sketch payload"),
    (b"x" * 100_000, "exceeds the"),
])
def test_whole_body_errors(data, message):
    with pytest.raises(BitstreamError, match=message):
        parse(data)


def test_every_truncation_is_a_typed_error():
    data = golden_payloads()["payload_v1_pics"].to_bytes()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            parse(data[:cut])


def test_declared_huge_bin_is_refused_before_allocation():
    # A bin32 header declaring 4 GiB inside a tiny body must fail fast, without allocating it.
    data = bytes([0x98, TAG_V1, 1, 1, 1, 1, 0xC6, 0xFF, 0xFF, 0xFF, 0xFF]) + b"x" * 10
    with pytest.raises(BitstreamError):
        parse(data)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_bitstream_error(data):
    try:
        parse(data)
    except BitstreamError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_mutated_golden_bytes_only_raise_bitstream_error(data):
    base = bytearray(golden_payloads()["payload_v1_pics"].to_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(base) - 1))
        base[position] = data.draw(st.integers(0, 255))
    try:
        payload = parse(bytes(base))
    except BitstreamError:
        return
    assert payload.to_bytes() == bytes(base)


def test_mutation_sweep_quick():
    """Deterministic sweep: every single-byte value at every header position."""
    base = golden_payloads()["payload_v1_pics"].to_bytes()
    rng = random.Random(0)
    for position in range(14):
        for value in range(256):
            mutated = bytearray(base)
            mutated[position] = value
            try:
                parse(bytes(mutated))
            except BitstreamError:
                pass
    for _ in range(2000):
        mutated = bytearray(base)
        del mutated[rng.randrange(len(mutated))]
        mutated.insert(rng.randrange(len(mutated)), rng.randrange(256))
        try:
            parse(bytes(mutated))
        except BitstreamError:
            pass


def test_payload_constructor_validates():
    with pytest.raises(BitstreamError):
        Payload(ProfileId.SD21_HED, 768, 512, Mode.PICS, b"p", None)
    with pytest.raises(BitstreamError):
        Payload(ProfileId.SD21_HED, 768, 512, Mode.PIC, b"", None)
