"""Text coder: exact round trips, golden body, limits and corrupt bodies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.bitstream.text_coder import (
    LENGTH_FREQS,
    cost_bits,
    decode_token_ids,
    encode_token_ids,
    load_prior,
    max_body_bytes,
    rate_capped_vocabulary,
)
from services.bitstream.vocabulary import BOS_ID, EOS_ID, MAX_PROMPT_TOKENS, VOCAB_SIZE
from services.errors import BitstreamError

GOLDEN = Path(__file__).parent / "golden"
token_ids = st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=MAX_PROMPT_TOKENS)


@given(token_ids)
@settings(max_examples=300, deadline=None)
def test_round_trip_of_arbitrary_ids(ids):
    body = encode_token_ids(ids)
    assert decode_token_ids(body) == ids
    # The body is the information content rounded up to whole bytes (at most 1 byte of slack + 1 bit).
    assert len(body) * 8 <= max(8, cost_bits(ids) + 9)


def test_empty_prompt_is_one_byte():
    body = encode_token_ids([])
    assert len(body) == 1
    assert decode_token_ids(body) == []


@pytest.mark.parametrize("ids", [[0] * 75, [VOCAB_SIZE - 1] * 75, [BOS_ID, EOS_ID] * 37 + [1], list(range(1000, 1075))])
def test_maximum_length_prompts(ids):
    body = encode_token_ids(ids)
    assert len(body) <= 200  # far below the bitstream's 1024-byte prompt limit
    assert decode_token_ids(body) == ids


def test_natural_prompt_is_small():
    ids = [320, 1125, 539, 320, 2368]  # "a photo of a cat"
    assert len(encode_token_ids(ids)) <= 8
    assert cost_bits(ids) / len(ids) < 12


@pytest.mark.parametrize(
    "ids, message",
    [([0] * (MAX_PROMPT_TOKENS + 1), "at most"), ([VOCAB_SIZE], "0..49407"), ([-1], "0..49407"), ([1.5], "integers")],
)
def test_invalid_ids_are_refused(ids, message):
    with pytest.raises(ValueError, match=message):
        encode_token_ids(ids)


def test_prior_is_complete_and_integer():
    prior = load_prior()
    for table in (*prior.ids, prior.length):
        assert all(b > a for a, b in zip(table.cum, table.cum[1:]))  # every symbol codable
    assert prior.ids[0].total == prior.ids[1].total == 2**24
    assert len(prior.length.cum) == len(LENGTH_FREQS) + 1 == MAX_PROMPT_TOKENS + 2


@pytest.mark.parametrize("body", [b"", bytearray(), memoryview(b"")])
def test_empty_body_raises(body):
    with pytest.raises(BitstreamError, match="empty"):
        decode_token_ids(body)


def test_wrong_type_raises():
    with pytest.raises(BitstreamError):
        decode_token_ids("abc")  # type: ignore[arg-type]


@pytest.mark.parametrize("ids", [[320, 1125, 539, 320, 2368], list(range(5000, 5016)), [49000] * 75])
def test_padded_bodies_raise(ids):
    body = encode_token_ids(ids)
    for bad in (body + b"\x00", body + b"\x80", body + body):
        with pytest.raises(BitstreamError, match="corrupt"):
            decode_token_ids(bad)


def test_truncated_bodies_raise_nearly_always():
    """Truncation is caught by the end check (4 bits) plus canonicity; an undetected one must still be canonical."""
    import random

    rng = random.Random(1)
    raised = total = 0
    for _ in range(300):
        ids = [rng.randrange(VOCAB_SIZE) for _ in range(rng.randrange(1, MAX_PROMPT_TOKENS + 1))]
        body = encode_token_ids(ids)
        if len(body) < 2:
            continue
        total += 1
        try:
            decoded = decode_token_ids(body[:-1])
        except BitstreamError:
            raised += 1
        else:
            assert decoded != ids and encode_token_ids(decoded) == body[:-1]
    assert raised / total >= 0.85


@given(st.binary(min_size=1, max_size=64))
@settings(max_examples=300, deadline=None)
def test_random_bytes_raise_typed_error_or_are_canonical(data):
    try:
        ids = decode_token_ids(data)
    except BitstreamError:
        return
    assert len(ids) <= MAX_PROMPT_TOKENS and all(0 <= i < VOCAB_SIZE for i in ids)
    assert encode_token_ids(ids) == data


@given(token_ids.filter(bool), st.data())
@settings(max_examples=200, deadline=None)
def test_mutated_bodies_never_decode_silently_to_other_bytes(ids, data):
    body = bytearray(encode_token_ids(ids))
    position = data.draw(st.integers(0, len(body) - 1))
    body[position] ^= data.draw(st.integers(1, 255))
    try:
        decoded = decode_token_ids(bytes(body))
    except BitstreamError:
        return
    assert decoded != ids and encode_token_ids(decoded) == bytes(body)


def test_golden_coded_prompt():
    """Pins the wire format: regenerate only on purpose with TEXTSKETCH_REGEN_GOLDEN=1."""
    expected_path, body_path = GOLDEN / "prompt_v1.json", GOLDEN / "prompt_v1.bin"
    cases = {
        "caption": [320, 786, 6765, 320, 11652, 1943, 320, 2012, 4462, 1611, 2473],
        "pez16": [
            48177,
            21225,
            33251,
            43768,
            2368,
            24398,
            21052,
            16850,
            269,
            10846,
            31159,
            29276,
            37704,
            539,
            320,
            1125,
        ],
        "empty": [],
    }
    bodies = {name: encode_token_ids(ids) for name, ids in cases.items()}
    if os.environ.get("TEXTSKETCH_REGEN_GOLDEN") == "1":
        expected_path.write_text(
            json.dumps({n: {"ids": i, "bytes": len(bodies[n])} for n, i in cases.items()}, indent=1)
        )
        body_path.write_bytes(b"".join(bodies[n] for n in cases))
    expected = json.loads(expected_path.read_text())
    golden = body_path.read_bytes()
    offset = 0
    for name in cases:
        n = expected[name]["bytes"]
        body, offset = golden[offset : offset + n], offset + n
        assert decode_token_ids(body) == expected[name]["ids"], name
        assert encode_token_ids(expected[name]["ids"]) == body, name
    assert offset == len(golden)


@given(st.data())
@settings(max_examples=100, deadline=None)
def test_rate_capped_vocabulary_bounds_the_body(data):
    vocab = rate_capped_vocabulary(14.0)
    assert len(vocab) > 1000 and all(0 <= i < BOS_ID for i in vocab)
    ids = data.draw(st.lists(st.sampled_from(vocab), min_size=16, max_size=16))
    assert len(encode_token_ids(ids)) <= max_body_bytes(16, 14.0) <= 30
