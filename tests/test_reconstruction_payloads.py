"""Payload -> pixels with the tiny profile: real text and sketch coders, codec wiring, reconstructor."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.bitstream.container import Mode, Payload, derive_seed, parse
from services.bitstream.text_coder import encode_token_ids
from services.codec import candidate_jobs, decode_payload, payload_to_job
from services.errors import ProfileMismatchError
from services.profiles import ProfileId, get_profile
from services.reconstruction.reconstructor import Reconstructor
from services.sketch.coder import encode_sketch
from tests.reconstruction_fixtures import pixels, shared_reconstructor, shared_settings

SIZE = (90, 60)  # original size
# The tiny profile with a 64 px working short side (128x64 here) keeps these CPU tests fast.
PROFILE = replace(get_profile("tiny"), working_short_side=64)


@pytest.fixture(scope="module")
def reconstructor():
    pipeline = shared_reconstructor()._pipelines[Mode.PICS]  # the saved tiny models, already loaded
    small = Reconstructor(PROFILE, shared_settings())
    small.load_components({name: getattr(pipeline, name) for name in
                           ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "controlnet")})
    return small


def payload(mode: Mode, ids=(320, 1929, 530, 518, 2390), candidate: int = 0) -> Payload:
    sketch = None
    if mode == Mode.PICS:
        working = PROFILE.working_size(*SIZE)
        edges = np.zeros((working[1], working[0]), np.uint8)
        edges[100:110, :] = 255
        edges[:, 300:306] = 255
        sketch = encode_sketch(edges, get_profile("tiny").sketch_kind)
    return Payload(int(ProfileId.TINY), SIZE[0], SIZE[1], mode, encode_token_ids(list(ids)), sketch, candidate)


@pytest.mark.parametrize("mode", [Mode.PIC, Mode.PICS])
def test_payload_decodes_to_the_original_size_and_repeats_exactly(reconstructor, mode):
    data = payload(mode).to_bytes()
    first = decode_payload(data, reconstructor)
    second = decode_payload(data, reconstructor)
    assert first.size == SIZE
    assert PROFILE.working_size(*SIZE) == (128, 64)
    assert np.array_equal(pixels(first), pixels(second))


def test_job_carries_the_transmitted_ids_and_the_payload_seed(reconstructor):
    coded = payload(Mode.PICS)
    job = payload_to_job(coded, reconstructor.profile)
    assert job.token_ids == (320, 1929, 530, 518, 2390)
    assert job.seed == derive_seed(coded)
    assert job.control is not None and job.control.size == (job.working_width, job.working_height)
    ids = reconstructor.prompt_ids(job.token_ids)
    assert ids[1:6] == [320, 1929, 530, 518, 2390]


def test_candidate_k_rendered_in_a_batch_is_the_payload_sent_with_k(reconstructor):
    data = payload(Mode.PIC).to_bytes()
    jobs = candidate_jobs(parse(data), reconstructor.profile, [1, 2])
    rendered = reconstructor.render_candidates(jobs[0], [job.seed for job in jobs])
    sent = decode_payload(payload(Mode.PIC, candidate=2).to_bytes(), reconstructor)
    assert np.abs(pixels(rendered[1]) - pixels(sent)).max() <= 1  # CPU batch tolerance, see test_reconstruction


def test_payload_of_another_profile_is_refused_before_decoding(reconstructor):
    other = Payload(int(ProfileId.SD21_HED), 64, 64, Mode.PIC, encode_token_ids([320]))
    with pytest.raises(ProfileMismatchError, match="sd21-hed"):
        decode_payload(other.to_bytes(), reconstructor)
