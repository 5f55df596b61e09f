"""Loading the diffusion pipelines of a profile: one set of weights, a PIC and a PICS pipeline.

``load_pipelines`` reads a base model (diffusers pipeline folder or hub id) and a
ControlNet with ``from_pretrained`` (fp16 on CUDA, fp32 on CPU);
``assemble_pipelines`` builds diffusers' ``StableDiffusionPipeline`` (PIC) and
``StableDiffusionControlNetPipeline`` (PICS) around the same modules, each with
the profile's sampler on the checkpoint's noise schedule.
"""

from __future__ import annotations

from services.bitstream.container import Mode
from services.devices import is_cuda
from services.errors import ModelUnavailableError
from services.profiles import ModelProfile


def load_pipelines(profile: ModelProfile, base_model: str, controlnet_id: str | None, device: str,
                   deterministic: bool) -> dict[Mode, object]:
    """The profile's pipelines from checkpoints; ``ModelUnavailableError`` when they cannot be read."""
    import torch
    from diffusers import ControlNetModel, StableDiffusionPipeline

    dtype = torch.float16 if is_cuda(device) else torch.float32
    try:
        base = StableDiffusionPipeline.from_pretrained(
            base_model, torch_dtype=dtype, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
        controlnet = ControlNetModel.from_pretrained(controlnet_id, torch_dtype=dtype) if controlnet_id else None
    except (OSError, ValueError) as error:
        raise ModelUnavailableError(
            f"cannot load the models of profile {profile.name!r} ({base_model}, {controlnet_id}): "
            f"{error}. Download them into the Hugging Face cache, or point TEXTSKETCH_BASE_MODEL / "
            "TEXTSKETCH_CONTROLNET_MODEL at local folders"
        ) from error
    return assemble_pipelines(profile, device, deterministic, base.unet, base.vae, base.text_encoder, base.tokenizer,
                              base.scheduler, controlnet)


def assemble_pipelines(profile: ModelProfile, device: str, deterministic: bool, unet, vae, text_encoder, tokenizer,
                       scheduler, controlnet=None) -> dict[Mode, object]:
    """PIC and PICS pipelines sharing one set of modules, with the profile's samplers, on ``device``."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UniPCMultistepScheduler,
    )

    samplers = {"unipc": UniPCMultistepScheduler, "dpm-multistep": DPMSolverMultistepScheduler}
    shared = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
              "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    pipelines: dict[Mode, object] = {  # the checkpoint's betas, the profile's samplers
        Mode.PIC: StableDiffusionPipeline(
            **shared, scheduler=_make_scheduler(profile.pic_scheduler, scheduler.config, samplers)
        )
    }
    if controlnet is not None:
        pipelines[Mode.PICS] = StableDiffusionControlNetPipeline(
            **shared, controlnet=controlnet,
            scheduler=_make_scheduler(profile.scheduler, scheduler.config, samplers),
        )
    if deterministic and is_cuda(device):
        import torch  # same kernels for the same shapes on every call

        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    for pipeline in pipelines.values():
        pipeline.to(device)
        pipeline.set_progress_bar_config(disable=True)
    return pipelines


def context_length(tokenizer, text_encoder) -> int:
    """Text-encoder context (77 for CLIP): the tokenizer's limit, bounded by the position table."""
    positions = int(text_encoder.config.max_position_embeddings)
    limit = getattr(tokenizer, "model_max_length", positions) or positions
    return min(int(limit), positions)


def _make_scheduler(name: str, config, classes: dict):
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; profiles use one of {sorted(classes)}")
    return classes[name].from_config(config)
