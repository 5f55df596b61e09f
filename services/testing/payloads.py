"""Valid payloads built in code, and the check a tiny-profile decoder applies before its model.

``pic_payload`` and ``tiny_pics_payload`` use the real text and sketch coders;
``locally_valid`` says whether the decoder should accept a body (parse, profile,
working-size limit, prompt and sketch bodies).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.bitstream.container import Mode, Payload
from services.profiles import ProfileId


def pic_payload(token_ids: Sequence[int] = (320, 1929, 530, 518, 2390), width: int = 96, height: int = 64,
                profile: int = int(ProfileId.TINY), candidate: int = 0) -> bytes:
    """A real PIC payload (real text coder) for the given token ids."""
    from services.bitstream.text_coder import encode_token_ids

    return Payload(profile, width, height, Mode.PIC, encode_token_ids(list(token_ids)), None, candidate).to_bytes()


def tiny_pics_payload() -> bytes:
    """A real 96x64 PICS payload of the tiny profile: a cross of two lines as its sketch."""
    from services.bitstream.text_coder import encode_token_ids
    from services.profiles import get_profile
    from services.sketch.coder import encode_sketch

    profile = get_profile("tiny")
    w, h = profile.working_size(96, 64)
    edges = np.zeros((h, w), np.uint8)
    edges[h // 2, 10:w - 10] = 255
    edges[10:h - 10, w // 3] = 255
    sketch = encode_sketch(edges, profile.sketch_kind, quality=2)
    return Payload(int(ProfileId.TINY), 96, 64, Mode.PICS, encode_token_ids([320, 1929, 530]), sketch).to_bytes()


def locally_valid(body: bytes, max_working_pixels: int) -> bool:
    """Whether a tiny-profile decoder should accept ``body`` (parse, size limit, prompt and sketch bodies)."""
    from services.bitstream.container import parse
    from services.codec import check_working_size, payload_to_job
    from services.errors import CodecError
    from services.profiles import get_profile

    profile = get_profile("tiny")
    try:
        payload = parse(body)
        if payload.profile != int(profile.id):
            return False
        check_working_size(payload, profile, max_working_pixels)
        payload_to_job(payload, profile)
    except CodecError:
        return False
    return True
