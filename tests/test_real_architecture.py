"""The real sd21-hed architectures through the real loading path (slow: TEXTSKETCH_SLOW_TESTS=1).

Full-size Stable Diffusion 2.1-base and the SD 2.1 HED ControlNet, from the configs the
published checkpoints ship (``services.testing.sd21``), with random weights, saved as
diffusers folders (safetensors) and loaded by ``Reconstructor.load`` of the ``sd21-hed``
profile through the model-id settings, as a user with local folders would. One step at
256x256 on the CPU, PICS and PIC. About 6.6 GB on disk and 7-8 GB of memory, a few minutes.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.bitstream.container import Mode
from services.prompt.tokenizer import load_tokenizer
from services.reconstruction.reconstructor import Reconstructor
from services.settings import CodecSettings
from services.testing.sd21 import save_random_sd21_hed
from tests.reconstruction_fixtures import edge_control, make_job, pixels

pytestmark = pytest.mark.slow

WORKING = (256, 256)
OUTPUT = (300, 280)  # resized from the working size

# Published sizes in millions of parameters (diffusers / transformers counts of the real checkpoints).
PARAMETERS_M = {"unet": 865.9, "controlnet": 364.2, "vae": 83.7, "text_encoder": 340.4}


@pytest.fixture(scope="module")
def saved():
    """The four components saved one at a time into a temporary folder, removed afterwards."""
    directory = Path(tempfile.mkdtemp(prefix="textsketch-sd21-"))  # same disk as the test cache
    try:
        started = time.perf_counter()
        models = save_random_sd21_hed(directory, load_tokenizer(CodecSettings(profile="tiny", device="cpu")))
        print(f"\nbuilt and saved in {time.perf_counter() - started:.1f} s, {models.disk_bytes() / 1e9:.2f} GB on disk")
        yield models
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def reconstructor(saved) -> Reconstructor:
    settings = CodecSettings(profile="sd21-hed", base_model=str(saved.base_model),
                             controlnet_model=str(saved.controlnet), device="cpu")
    reconstructor = Reconstructor(settings.model_profile(), settings)
    started = time.perf_counter()
    reconstructor.load()
    print(f"\nloaded through the sd21-hed profile in {time.perf_counter() - started:.1f} s")
    return reconstructor


def test_the_saved_components_have_the_published_sizes(saved):
    millions = {name: round(count / 1e6, 1) for name, count in saved.parameters.items()}
    assert millions == PARAMETERS_M


def test_the_profile_path_loads_the_folders_with_the_profile_samplers(reconstructor, saved):
    assert reconstructor.profile.name == "sd21-hed"
    assert reconstructor.profile.base_model == str(saved.base_model)
    pics, pic = reconstructor._pipelines[Mode.PICS], reconstructor._pipelines[Mode.PIC]
    assert type(pics.scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(pic.scheduler).__name__ == "DPMSolverMultistepScheduler"
    for scheduler in (pics.scheduler, pic.scheduler):  # the checkpoint's noise schedule
        config = scheduler.config
        assert (config.beta_start, config.beta_end, config.beta_schedule) == (0.00085, 0.012, "scaled_linear")
        assert (config.num_train_timesteps, config.prediction_type) == (1000, "epsilon")
    assert pics.unet is pic.unet  # one set of weights
    unet, controlnet = pics.unet.config, pics.controlnet.config
    assert unet.cross_attention_dim == controlnet.cross_attention_dim == 1024
    assert list(unet.attention_head_dim) == [5, 10, 20, 20] and unet.use_linear_projection
    assert list(controlnet.conditioning_embedding_out_channels) == [16, 32, 96, 256]
    for key in ("block_out_channels", "down_block_types", "attention_head_dim", "layers_per_block", "norm_num_groups"):
        assert np.array_equal(unet[key], controlnet[key]), key  # what ControlNetModel.from_unet copies
    assert pic.tokenizer.pad_token_id == 0  # SD 2.x pads with "!"


def test_text_embeddings_are_1024_wide(reconstructor):
    positive = reconstructor._encode_ids(reconstructor.prompt_ids([320, 1929, 530]))
    assert tuple(positive.shape) == (1, 77, 1024)
    assert tuple(reconstructor._negative_embeds.shape) == (1, 77, 1024)
    text_encoder = reconstructor._pipelines[Mode.PIC].text_encoder.config
    assert (text_encoder.num_hidden_layers, text_encoder.num_attention_heads) == (23, 16)


def test_one_pics_step_at_256_follows_the_sketch(reconstructor):
    job = make_job(1, Mode.PICS, size=OUTPUT, working=WORKING, steps=1)
    other = replace(job, control=edge_control(99, WORKING))  # same ids and seed, another sketch
    started = time.perf_counter()
    first, second = reconstructor.decode_batch([job]), reconstructor.decode_batch([other])
    print(f"\ntwo PICS decodes (1 step, 256x256) in {time.perf_counter() - started:.1f} s")
    for (image,) in (first, second):
        assert image.size == OUTPUT and image.mode == "RGB"
        assert pixels(image).std() > 1.0  # a picture, not a constant (or NaN turned black)
    assert not np.array_equal(pixels(first[0]), pixels(second[0]))  # the ControlNet conditions the output


def test_one_pic_step_at_256(reconstructor):
    job = make_job(2, Mode.PIC, size=OUTPUT, working=WORKING, steps=1)
    (image,) = reconstructor.decode_batch([job])
    assert image.size == OUTPUT and image.mode == "RGB"
    assert pixels(image).std() > 1.0
