"""Bitstream v2: golden payloads cross-checked through the coders, overhead, limits, and fuzzing for the typed error."""

from __future__ import annotations

import hashlib
import json
import os
import random

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bitstream.container import (
    MAX_BODY_BYTES,
    MAX_CANDIDATE,
    MAX_PIXELS,
    MAX_PROMPT_BYTES,
    MAX_SIDE,
    TAG_V2,
    Mode,
    Payload,
    derive_seed,
    parse,
)
from services.bitstream.text_coder import decode_token_ids, encode_token_ids
from services.errors import BitstreamError
from services.profiles import ProfileId, get_profile
from services.sketch.body import decode_bitmap_body
from services.sketch.coder import decode_sketch, encode_sketch
from tests.paths import GOLDEN
from tests.test_sketch_coding import synthetic_edges

REGEN = os.environ.get("TEXTSKETCH_REGEN_GOLDEN") == "1"
TOKENS = (320, 736, 1212, 638, 518, 2102, 267, 25602)  # CLIP ids of "a red house by the sea, cinematic"


def golden_payloads() -> dict[str, Payload]:
    """Real payloads (real text and sketch bodies) pinned on disk: regenerate only with TEXTSKETCH_REGEN_GOLDEN=1."""
    profile = get_profile("sd21-hed")
    working = profile.working_size(768, 512)
    sketch = encode_sketch(synthetic_edges(*working), profile.sketch_kind, quality=2)
    prompt = encode_token_ids(TOKENS)
    return {
        "payload_v2_pic": Payload(ProfileId.SD21_HED, 768, 512, Mode.PIC, prompt),
        "payload_v2_pics": Payload(ProfileId.SD21_HED, 768, 512, Mode.PICS, prompt, sketch),
        "payload_v2_pics_candidate": Payload(ProfileId.SD21_HED, 768, 512, Mode.PICS, prompt, sketch, candidate=3),
        "payload_v2_tiny_pic": Payload(ProfileId.TINY, 100, 600, Mode.PIC, encode_token_ids([49120] * 75)),
    }


def decoded_fields(payload: Payload) -> dict:
    """What a decoder makes of a payload: its fields, the seed, the token ids and the sketch it draws."""
    fields = {
        "version": payload.version, "profile": payload.profile, "width": payload.width, "height": payload.height,
        "mode": int(payload.mode), "candidate": payload.candidate, "seed": derive_seed(payload),
        "prompt_bytes": len(payload.prompt), "sketch_bytes": len(payload.sketch or b""),
        "overhead_bytes": payload.overhead_bytes, "token_ids": decode_token_ids(payload.prompt),
    }
    if payload.mode == Mode.PICS:
        working = get_profile(payload.profile).working_size(payload.width, payload.height)
        _, bits, _ = decode_bitmap_body(payload.sketch, *working)
        fields["sketch_bitmap_sha256"] = hashlib.sha256(np.packbits(bits).tobytes()).hexdigest()
        fields["sketch_map_sha256"] = hashlib.sha256(decode_sketch(payload.sketch, *working).tobytes()).hexdigest()
    return fields


@pytest.mark.parametrize("name", sorted(golden_payloads()))
def test_golden_payload_is_pinned_and_decodes_to_the_same_ids_and_sketch(name):
    payload = golden_payloads()[name]
    bin_path, json_path = GOLDEN / f"{name}.bin", GOLDEN / f"{name}.json"
    if REGEN:
        bin_path.write_bytes(payload.to_bytes())
        json_path.write_text(json.dumps(decoded_fields(payload), indent=1) + "\n")
    data = bin_path.read_bytes()
    assert data == payload.to_bytes(), "wire format changed: bump the version or regenerate on purpose"
    parsed = parse(data)
    assert parsed == payload and parsed.version == 2
    expected = json.loads(json_path.read_text())
    assert decoded_fields(parsed) == expected
    assert expected["token_ids"] == list(TOKENS) or name == "payload_v2_tiny_pic"


def test_overhead_meets_the_v2_budget():
    golden = golden_payloads()
    assert golden["payload_v2_pic"].overhead_bytes == 9  # 1 array + 1 tag + 5 header + 2 bin8 header
    assert golden["payload_v2_pics"].overhead_bytes == 10  # + prompt length byte (body under 256 bytes: bin8)
    assert golden["payload_v2_pics_candidate"].overhead_bytes == 11  # + candidate
    kodak_like = Payload(ProfileId.SD21_HED, 768, 512, Mode.PICS, b"p" * 20, b"s" * 300)
    assert kodak_like.overhead_bytes == 11  # a few-hundred-byte sketch: bin16 header
    # Test profiles (ids >= 8) need a uint64 header: 4 bytes more.
    assert golden["payload_v2_tiny_pic"].overhead_bytes == 13
    largest = Payload(ProfileId.SD15_CANNY, MAX_SIDE, MAX_SIDE // 4, Mode.PICS, b"p" * MAX_PROMPT_BYTES,
                      b"s" * (MAX_BODY_BYTES - 1 - MAX_PROMPT_BYTES), MAX_CANDIDATE)
    assert largest.overhead_bytes == 12


payload_strategy = st.builds(
    Payload,
    profile=st.sampled_from(list(ProfileId)),
    width=st.integers(1, MAX_SIDE),
    height=st.integers(1, 4096),
    mode=st.just(Mode.PIC),
    prompt=st.binary(min_size=1, max_size=MAX_PROMPT_BYTES),
    sketch=st.none(),
    candidate=st.integers(0, MAX_CANDIDATE),
) | st.builds(
    Payload,
    profile=st.sampled_from(list(ProfileId)),
    width=st.integers(1, 4096),
    height=st.integers(1, MAX_SIDE),
    mode=st.just(Mode.PICS),
    prompt=st.binary(min_size=1, max_size=MAX_PROMPT_BYTES),
    sketch=st.binary(min_size=1, max_size=2000),
    candidate=st.integers(0, MAX_CANDIDATE),
)


@given(payload_strategy)
def test_round_trip_every_field(payload):
    data = payload.to_bytes()
    assert parse(data) == payload
    assert payload.overhead_bytes <= 16


def test_seed_depends_on_bytes_and_candidate_only():
    payload = golden_payloads()["payload_v2_pics_candidate"]
    assert derive_seed(payload) == derive_seed(parse(payload.to_bytes()))
    assert derive_seed(payload) == derive_seed(payload.with_candidate(0), candidate=3)
    assert len({derive_seed(payload, candidate=k) for k in range(0, 9)}) == 9
    assert 0 <= derive_seed(payload) < 2**63


def pack(fields) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def header(profile=1, mode=1, width=768, height=512) -> int:
    return profile << 29 | mode << 28 | (width - 1) << 14 | (height - 1)


GOOD = [TAG_V2, header(), bytes([6]) + b"prompt" + b"sketch"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ([0x63, *GOOD[1:]], "unsupported bitstream version 3"),
        ([0x11, *GOOD[1:]], "not a text+sketch payload"),
        (GOOD[:2], "array of 3 or 4 fields"),
        ([TAG_V2, header(profile=5), GOOD[2]], "unknown model profile id 5"),
        ([TAG_V2, header(width=MAX_SIDE, height=MAX_SIDE), GOOD[2]], f"exceeds the {MAX_PIXELS}-pixel limit"),
        ([TAG_V2, -1, GOOD[2]], "header must be an unsigned integer"),
        ([TAG_V2, 2.5, GOOD[2]], "header must be an unsigned integer"),
        ([TAG_V2, header(), b""], "body must be non-empty"),
        ([TAG_V2, header(), bytes([0]) + b"xyz"], "declaring a 0-byte prompt"),
        ([TAG_V2, header(), bytes([9]) + b"prompt"], "declaring a 9-byte prompt"),
        ([TAG_V2, header(), bytes([6]) + b"prompt"], "declaring a 6-byte prompt"),  # no sketch left
        ([TAG_V2, header(mode=0), b"x" * (MAX_PROMPT_BYTES + 1)], f"prompt must be 1..{MAX_PROMPT_BYTES} bytes"),
        ([*GOOD, 0], "candidate, when present, must be an integer in 1..64"),
        ([*GOOD, True], "candidate, when present"),
        ([*GOOD, MAX_CANDIDATE + 1], "candidate must be an integer in 0..64"),
        ([TAG_V2, header(), "text"], "truncated or corrupt"),
    ],
)
def test_invalid_fields_are_named(fields, message):
    with pytest.raises(BitstreamError) as info:
        parse(pack(fields))
    assert message in str(info.value)


def test_non_canonical_encodings_are_refused():
    canonical = pack(GOOD)
    assert parse(canonical).sketch == b"sketch"
    as_uint64 = canonical.replace(b"\xce", b"\xcf\x00\x00\x00\x00", 1)  # the header as uint64
    bin16_body = canonical.replace(bytes([0xC4, len(GOOD[2])]), bytes([0xC5, 0, len(GOOD[2])]), 1)
    for data in (as_uint64, bin16_body):
        assert data != canonical
        with pytest.raises(BitstreamError, match="non-canonical"):
            parse(data)


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
    data = golden_payloads()["payload_v2_pics_candidate"].to_bytes()
    for cut in range(len(data)):
        with pytest.raises(BitstreamError):
            parse(data[:cut])


def test_declared_huge_bin_is_refused_before_allocation():
    # A bin32 header declaring 4 GiB inside a tiny body must fail fast, without allocating it.
    data = bytes([0x93, TAG_V2, 0xCE, 0x30, 0, 0, 0, 0xC6, 0xFF, 0xFF, 0xFF, 0xFF]) + b"x" * 10
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
    name = data.draw(st.sampled_from(sorted(golden_payloads())))
    base = bytearray((GOLDEN / f"{name}.bin").read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(base) - 1))
        base[position] = data.draw(st.integers(0, 255))
    try:
        payload = parse(bytes(base))
    except BitstreamError:
        return
    assert payload.to_bytes() == bytes(base)


def test_mutation_sweep_quick():
    """Deterministic sweep: every single-byte value at every header position, then random edits."""
    base = golden_payloads()["payload_v2_pics_candidate"].to_bytes()
    rng = random.Random(0)
    for position in range(12):
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
    with pytest.raises(BitstreamError, match="unsupported bitstream version 3"):
        Payload(ProfileId.SD21_HED, 768, 512, Mode.PIC, b"p", None, version=3)
