"""The tiny profile's models: real SD geometry, same weights everywhere, saved and re-loaded."""

from __future__ import annotations

import os

import pytest
import torch

from services.bitstream.vocabulary import VOCAB_SIZE
from services.prompt.tokenizer import load_tokenizer
from services.settings import CodecSettings
from services.tiny.diffusion import TINY_VERSION, build_tiny_components, ensure_tiny_models, tiny_model_dir
from tests.reconstruction_fixtures import shared_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_settings() -> CodecSettings:
    return shared_settings()


def test_tiny_weights_are_the_same_on_every_build(tiny_settings):
    torch.manual_seed(123)
    first = build_tiny_components(load_tokenizer(tiny_settings))
    after_first = torch.rand(1)
    torch.manual_seed(123)
    second = build_tiny_components(load_tokenizer(tiny_settings))
    assert torch.equal(after_first, torch.rand(1))  # the global RNG is left alone
    for name in ("unet", "controlnet", "vae", "text_encoder"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name


def test_tiny_models_have_sd_geometry_and_real_vocabulary(tiny_settings):
    from diffusers import AutoencoderKL, ControlNetModel
    from transformers import CLIPTextModel

    paths = ensure_tiny_models(tiny_settings, load_tokenizer(tiny_settings))
    vae = AutoencoderKL.from_pretrained(paths.base_model / "vae")
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 64, 96)).latent_dist.mean
    assert tuple(latents.shape) == (1, 4, 8, 12)  # 8x downsampling, 4 latent channels
    text_encoder = CLIPTextModel.from_pretrained(paths.base_model / "text_encoder")
    assert text_encoder.config.vocab_size == VOCAB_SIZE
    assert text_encoder.config.max_position_embeddings == 77
    controlnet = ControlNetModel.from_pretrained(paths.controlnet)
    with torch.no_grad():
        features = controlnet.controlnet_cond_embedding(torch.zeros(1, 3, 64, 96))
    assert tuple(features.shape[-2:]) == (8, 12)  # control image -> latent grid
    assert any(block.weight.abs().sum() > 0 for block in controlnet.controlnet_down_blocks)


def test_ensure_tiny_models_builds_once_and_leaves_no_staging_folder(tmp_path):
    tiny_settings = CodecSettings(profile="tiny", cache_dir=tmp_path)
    paths = ensure_tiny_models(tiny_settings, load_tokenizer(tiny_settings))
    stamp = (paths.base_model / "model_index.json").stat().st_mtime_ns
    again = ensure_tiny_models(tiny_settings, load_tokenizer(tiny_settings))
    assert again == paths
    assert (paths.base_model / "model_index.json").stat().st_mtime_ns == stamp
    assert paths.base_model.parent == tiny_model_dir(tiny_settings)
    assert sorted(p.name for p in tiny_model_dir(tiny_settings).parent.iterdir()) == [TINY_VERSION]
    for folder in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (paths.base_model / folder).is_dir(), folder
