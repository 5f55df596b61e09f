"""Codec settings shared by the CLI, the encoder and the decoder.

Read from the environment with the ``TEXTSKETCH_`` prefix (for example
``TEXTSKETCH_PROFILE=tiny``) when ``CodecSettings()`` is built, never at import
time. The services embed these in their own settings classes with their own
prefixes.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.limits import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_WORKING_PIXELS
from services.profiles import ModelProfile, get_profile

E = TypeVar("E", bound=enum.Enum)


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "textsketch"


class CodecSettings(BaseSettings):
    """Settings of the codec stages (``TEXTSKETCH_*``)."""

    model_config = SettingsConfigDict(env_prefix="TEXTSKETCH_", extra="ignore")

    profile: str = Field("sd21-hed", description="Model profile name or id (see `textsketch profiles`).")
    base_model: str | None = Field(None, description="Override the profile's base model (hub id or local folder).")
    controlnet_model: str | None = Field(None, description="Override the profile's ControlNet (hub id or local folder).")
    base_model_revision: str | None = Field(
        None, description="Hub revision (a commit hash, for reproducible deployments) of the base model; unset = the "
        "default branch. Ignored for local folders.")
    controlnet_revision: str | None = Field(
        None, description="Hub revision (commit hash) of the ControlNet; unset = the default branch.")
    use_safetensors: bool = Field(
        True, description="Load diffusion weights only from .safetensors files (no pickle). Turn off only for a "
        "repository that ships .bin files alone.")
    cache_dir: Path = Field(default_factory=default_cache_dir, description="Where tiny models, tokenizer files and other generated assets are kept.")
    device: str = Field("auto", description="Torch device for models: auto (cuda when available), cpu or cuda[:N].")

    # Image limits (encoder side).
    max_image_pixels: int = Field(40_000_000, description="Largest decoded input image, in pixels.")
    max_upload_bytes: int = Field(32 * 1024 * 1024, description="Largest accepted image file, in bytes.")

    # Limits shared by encoder, decoder and sketch coder (services.limits).
    max_working_pixels: int = Field(
        DEFAULT_MAX_WORKING_PIXELS, ge=64 * 64,
        description="Largest working size (w*h, the size diffusion runs at). The encoder refuses images that "
        "need more (413), the decoder and sketch coder refuse payloads that ask for more (422).")
    max_output_pixels: int = Field(
        DEFAULT_MAX_OUTPUT_PIXELS, ge=64 * 64,
        description="Largest output size (w*h) a payload may declare. The encoder codes larger images at a size "
        "scaled down to fit (aspect kept); the decoder refuses payloads that declare more (422).")

    # Prompt stage.
    prompt_source: str = Field("caption", description="Default prompt source: pez, caption or given.")
    caption_model: str = Field(
        "Salesforce/blip-image-captioning-base",
        description="Image-to-text model for the caption source (hub id, local folder, tiny, or random-blip-base: a "
        "full-size BLIP-base with random weights, for CPU benchmarks). A smaller public captioner that loads through "
        "the same AutoModelForImageTextToText path: microsoft/git-base-coco (GIT-base, 177 M parameters, 224x224 "
        "images, 6-layer decoder); only its architecture was run here (random weights), caption quality untested.")
    caption_runtime: Literal["auto", "fp32", "bf16", "int8", "int8-bf16"] = Field(
        "auto",
        description="Caption model arithmetic on CPU. fp32; bf16: image encoder in bfloat16 (fast only on CPUs with "
        "AMX or AVX-512 BF16), decoder fp32; int8: dynamic int8 weights in every linear layer; int8-bf16: image "
        "encoder bfloat16, decoder int8 (fastest). auto: int8-bf16 on such CPUs, int8 elsewhere. On a random-weight "
        "BLIP-base the int8 decoder changed most Kodak captions, bf16 few (services.eval.caption_agreement; caption "
        "quality with real weights is unchecked). On CUDA the caption model runs fp32.")
    caption_max_new_tokens: int = Field(
        20, ge=1, le=75,
        description="Most tokens the caption model generates (greedy, KV cache; a caption usually ends earlier). 20 "
        "is BLIP's own caption length limit (max_len 20 in its captioning configs), well inside the 75 CLIP tokens "
        "of the prompt.")
    clip_model: str = Field("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", description="CLIP model PEZ inverts against and candidate selection scores with (hub id, local folder, or tiny).")
    caption_revision: str | None = Field(None, description="Hub revision (commit hash) of the caption model; unset = the default branch.")
    clip_revision: str | None = Field(None, description="Hub revision (commit hash) of the CLIP model; unset = the default branch.")
    pez_steps: int = Field(3000, ge=1, description="PEZ optimisation steps.")
    pez_tokens: int = Field(16, ge=1, le=75, description="PEZ prompt length in tokens.")
    pez_lr: float = Field(0.1, gt=0, description="PEZ AdamW learning rate.")
    pez_weight_decay: float = Field(0.1, ge=0, description="PEZ AdamW weight decay.")
    pez_seed: int = Field(0, description="Seed of the PEZ initialisation.")
    pez_timeout_s: float | None = Field(
        600.0, gt=0, description="PEZ time budget per image: when it runs out, PEZ stops and keeps the best prompt "
        "found so far (logged). Unset: no budget.")
    pez_vocab: Path | None = Field(None, description="Optional file of allowed token ids (one per line) for PEZ.")

    # Sketch stage.
    hed_weights: Path | None = Field(
        None, description="HED weights file (.safetensors, .weights.h5 or .pt). Unset: the BSDS500 weights "
        "`textsketch fetch-weights` converts once (fetched on first use when missing).")
    hed_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Number format HED runs in. bf16: trunk in bfloat16 (about 4x faster on CPUs with AMX "
        "or AVX-512 BF16; the coded sketch stays within F 0.95 / 3 % bytes of fp32's). auto: bf16 on such CPUs, "
        "fp32 elsewhere.")
    sketch_quality: int = Field(2, ge=0, le=7, description="Default sketch quality level 0..7 (higher = more bytes).")
    sketch_target_bytes: int | None = Field(None, ge=1, description="Default sketch byte budget; overrides quality when set.")

    # Reconstruction stage.
    deterministic: bool | None = Field(
        None,
        description="Run every pipeline call at a fixed batch size so a job's pixels never depend on its batch. "
        "Unset = on for CPU (bit-identical, the default promise there), off for CUDA (within tolerance, faster).",
    )
    deterministic_batch_size: int | None = Field(
        None, ge=1, le=64,
        description="Fixed batch size of deterministic mode (short batches padded). Unset = 1 on CPU, 4 on CUDA.",
    )

    def model_profile(self) -> ModelProfile:
        """The configured profile with any model-id overrides applied."""
        return get_profile(self.profile).with_models(self.base_model, self.controlnet_model)


def parse_choice(choices: type[E], value: E | str, what: str) -> E:
    """``value`` as a member of the string enum ``choices``; ``ValueError`` naming ``what`` and the choices."""
    try:
        return choices(value)
    except ValueError:
        known = ", ".join(member.value for member in choices)
        raise ValueError(f"unknown {what} {value!r}; use one of: {known}") from None
