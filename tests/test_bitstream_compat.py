"""Payloads written by the previous encoder (bitstream v1, sketch body v2) decode as they did.

``tests/golden/payload_v1_encoded.json`` holds PICS payloads that the v1 encoder wrote
for a small picture made in code (tiny and tiny-hed profiles, given prompt), with what
that encoder's decoder made of them: token ids, seeds and the sha256 of the decoded
sketch map. Frozen: never regenerated. The current decoder must find exactly the same,
and the current encoder must carry the same ids and draw the same sketch in v2.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from services.bitstream.container import Mode, derive_seed, parse
from services.bitstream.text_coder import decode_token_ids
from services.codec import EncodeOptions, encode_image, payload_to_job
from services.profiles import get_profile
from services.settings import CodecSettings
from services.sketch.coder import decode_sketch
from tests.paths import GOLDEN

RECORDS = json.loads((GOLDEN / "payload_v1_encoded.json").read_text())


def picture() -> Image.Image:
    """The picture the v1 payloads were encoded from."""
    y, x = np.mgrid[0:96, 0:128]
    disc = ((x - 64) ** 2 + (y - 48) ** 2 < 900) * 200
    return Image.fromarray(np.stack([x * 2 % 256, y * 2 % 256, disc], axis=-1).astype(np.uint8), "RGB")


def sketch_digest(sketch: bytes, width: int, height: int) -> str:
    return hashlib.sha256(decode_sketch(sketch, width, height).tobytes()).hexdigest()


@pytest.mark.parametrize("profile", sorted(RECORDS))
def test_v1_payloads_decode_to_the_same_job(profile):
    record = RECORDS[profile]
    payload = parse(bytes.fromhex(record["payload_hex"]))
    assert payload.version == 1 and payload.mode == Mode.PICS and payload.sketch[0] >> 5 == 2
    job = payload_to_job(payload, get_profile(profile))
    assert list(job.token_ids) == record["token_ids"]
    assert job.seed == record["seed"] == derive_seed(payload)
    assert derive_seed(payload, 2) == record["seed_candidate_2"]
    assert [job.working_width, job.working_height] == record["working_size"]
    assert sketch_digest(payload.sketch, *record["working_size"]) == record["sketch_map_sha256"]


@pytest.mark.parametrize("profile", sorted(RECORDS))
def test_the_v2_encoder_carries_the_same_prompt_and_sketch(profile, tmp_path):
    record = RECORDS[profile]
    settings = CodecSettings(profile=profile, device="cpu", cache_dir=tmp_path)
    result = encode_image(picture(), settings,
                          EncodeOptions(mode=Mode.PICS, prompt_source="given", text="a red disc on a gradient"))
    payload = parse(result.data)
    assert payload.version == 2 and payload.sketch[0] >> 5 == 3
    assert decode_token_ids(payload.prompt) == record["token_ids"]
    assert sketch_digest(payload.sketch, *record["working_size"]) == record["sketch_map_sha256"]
