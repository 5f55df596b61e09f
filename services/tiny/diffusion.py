"""The ``tiny`` profile's models: randomly initialised, real Stable Diffusion geometry.

Tests and offline use need a diffusion decoder without downloading weights. This
module builds one in code the way diffusers' own fast tests do, with toy widths
but the real structure:

- ``AutoencoderKL`` with four encoder blocks, so it downsamples 8x to 4 latent
  channels (512 px -> 64 latents), like SD;
- ``UNet2DConditionModel`` with cross-attention and linear projections (SD 2.x);
- ``ControlNetModel.from_unet`` with an 8x-downsampling conditioning embedding;
- ``CLIPTextModel`` with the real 49,408-token vocabulary and 77 positions, and
  the real CLIP tokenizer from ``services.prompt.tokenizer``;
- a scheduler config with SD's betas (the reconstructor swaps in UniPC / DPM).

Weights come from a fixed torch seed, so every machine builds the same model.
They are saved with ``save_pretrained`` under ``settings.cache_dir / "tiny" /
TINY_VERSION`` (a ``base`` pipeline folder and a ``controlnet`` folder, written
to a temporary folder and renamed into place) and then loaded back by the
reconstructor through the same ``from_pretrained`` path as the real profiles.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from services.settings import CodecSettings

TINY_VERSION = "v2"  # bump whenever the architecture or init below changes
TINY_SEED = 0
CROSS_ATTENTION_DIM = 32


@dataclass(frozen=True)
class TinyModelPaths:
    """Where the saved tiny models live: a diffusers pipeline folder and a ControlNet folder."""

    base_model: Path
    controlnet: Path


def tiny_model_dir(settings: CodecSettings) -> Path:
    return Path(settings.cache_dir) / "tiny" / TINY_VERSION


def ensure_tiny_models(settings: CodecSettings, tokenizer) -> TinyModelPaths:
    """Build and save the tiny models unless they are already in the cache; return their folders.

    ``tokenizer`` is the CLIP tokenizer (``services.prompt.tokenizer.load_tokenizer``) the text
    encoder is built for.
    """
    root = tiny_model_dir(settings)
    paths = TinyModelPaths(base_model=root / "base", controlnet=root / "controlnet")
    if (paths.base_model / "model_index.json").is_file() and (paths.controlnet / "config.json").is_file():
        return paths
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{TINY_VERSION}-", dir=root.parent))
    try:
        save_tiny_models(staging, tokenizer)
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.replace(staging, root)  # atomic; fails if another process won the race
        except OSError:
            if not (paths.base_model / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return paths


def save_tiny_models(directory: Path, tokenizer) -> TinyModelPaths:
    """Build the tiny components and ``save_pretrained`` them into ``directory``."""
    from diffusers import StableDiffusionPipeline

    components = build_tiny_components(tokenizer)
    controlnet = components.pop("controlnet")
    pipeline = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    paths = TinyModelPaths(base_model=directory / "base", controlnet=directory / "controlnet")
    pipeline.save_pretrained(paths.base_model)
    controlnet.save_pretrained(paths.controlnet)
    return paths


def build_tiny_components(tokenizer) -> dict:
    """Randomly initialised SD components (fixed seed): unet, controlnet, vae, text encoder, tokenizer, scheduler."""
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            block_out_channels=(16, 32),
            layers_per_block=1,
            # Attention at the lower resolution only (as diffusers' fast tests): SD's
            # full-resolution attention would make a 512 px tiny decode slow on a CPU.
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=CROSS_ATTENTION_DIM,
            attention_head_dim=(2, 4),
            use_linear_projection=True,  # as SD 2.x
            norm_num_groups=8,
        )
        torch.manual_seed(TINY_SEED + 1)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
        _randomise_zero_convolutions(controlnet, std=0.05)
        torch.manual_seed(TINY_SEED + 2)
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=1,
            norm_num_groups=4,
            sample_size=256,
            mid_block_add_attention=False,  # 6k-token attention at 768x512 would dominate a CPU decode
        )
        torch.manual_seed(TINY_SEED + 3)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=CROSS_ATTENTION_DIM,
                intermediate_size=37,
                num_attention_heads=4,
                num_hidden_layers=2,
                max_position_embeddings=77,
                projection_dim=CROSS_ATTENTION_DIM,
                hidden_act="gelu",
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = PNDMScheduler(  # SD 2.1-base's shipped scheduler config
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
        prediction_type="epsilon",
    )
    return {
        "unet": unet.eval(),
        "controlnet": controlnet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": scheduler,
    }


def _randomise_zero_convolutions(controlnet, std: float) -> None:
    """Give the ControlNet's zero-initialised output convolutions small random weights.

    A freshly built ControlNet adds exactly zero to the UNet, so the sketch would
    have no effect; tests need the control image to change the output.
    """
    import torch

    convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]
    convs.append(controlnet.controlnet_cond_embedding.conv_out)
    with torch.no_grad():
        for conv in convs:
            torch.nn.init.normal_(conv.weight, std=std)
            torch.nn.init.zeros_(conv.bias)
