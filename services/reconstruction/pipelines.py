"""Loading the diffusion pipelines of a profile: one set of weights, a PIC and a PICS pipeline.

``load_pipelines`` reads a base model (diffusers pipeline folder or hub id) and a
ControlNet with ``from_pretrained`` (fp16 on CUDA, from the repository's fp16 variant when it
has one; fp32 on CPU; safetensors only; at the revisions the settings pin);
``assemble_pipelines`` builds diffusers' ``StableDiffusionPipeline`` (PIC) and
``StableDiffusionControlNetPipeline`` (PICS) around the same modules, each with
the profile's sampler on the checkpoint's noise schedule.
"""

from __future__ import annotations

from pathlib import Path

from services.bitstream.container import Mode
from services.devices import is_cuda
from services.errors import ModelUnavailableError
from services.profiles import ModelProfile
from services.settings import CodecSettings


def load_pipelines(profile: ModelProfile, base_model: str, controlnet_id: str | None, device: str,
                   deterministic: bool, settings: CodecSettings | None = None) -> dict[Mode, object]:
    """The profile's pipelines from checkpoints; ``ModelUnavailableError`` when they cannot be read.

    Weights come from ``.safetensors`` files only (``settings.use_safetensors``), at the pinned hub
    revisions when set; on CUDA the repository's fp16 variant is used when it has one.
    """
    import torch
    from diffusers import ControlNetModel, StableDiffusionPipeline

    settings = settings or CodecSettings()
    dtype = torch.float16 if is_cuda(device) else torch.float32
    common = {"torch_dtype": dtype, "use_safetensors": settings.use_safetensors}
    base = _load(StableDiffusionPipeline, base_model, settings.base_model_revision, is_cuda(device),
                 {**common, "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False},
                 what=f"base model of profile {profile.name!r}", setting="TEXTSKETCH_BASE_MODEL",
                 revision_setting="TEXTSKETCH_BASE_MODEL_REVISION")
    controlnet = None
    if controlnet_id:
        controlnet = _load(ControlNetModel, controlnet_id, settings.controlnet_revision, is_cuda(device), common,
                           what=f"ControlNet of profile {profile.name!r}", setting="TEXTSKETCH_CONTROLNET_MODEL",
                           revision_setting="TEXTSKETCH_CONTROLNET_REVISION")
    return assemble_pipelines(profile, device, deterministic, base.unet, base.vae, base.text_encoder, base.tokenizer,
                              base.scheduler, controlnet)


def _load(cls, model_id: str, revision: str | None, fp16_variant: bool, options: dict, *, what: str, setting: str,
          revision_setting: str):
    """``cls.from_pretrained`` with the fp16 variant first when asked (falling back to the plain files)."""
    local = Path(model_id).expanduser().is_dir()
    options = {**options, **({} if local or revision is None else {"revision": revision})}
    attempts = [{"variant": "fp16"}, {}] if fp16_variant else [{}]
    for attempt in attempts:
        try:
            return cls.from_pretrained(model_id, **options, **attempt)
        except (OSError, ValueError) as error:
            if attempt and any(mark in str(error).lower() for mark in ("variant", ".fp16.")):
                continue  # no fp16 files in this repository: load the full-precision ones, cast on load
            raise ModelUnavailableError(_load_error(model_id, revision, local, what, setting, revision_setting,
                                                    error)) from error
    raise AssertionError("unreachable")


def _load_error(model_id: str, revision: str | None, local: bool, what: str, setting: str, revision_setting: str,
                error: BaseException) -> str:
    """What a user needs when weights cannot be loaded: which model, from where, and how to point elsewhere."""
    if local:
        where = f"the local folder {model_id}"
    else:
        from huggingface_hub import constants

        where = (f"the Hugging Face Hub repository {model_id!r}"
                 f"{f' at revision {revision}' if revision else ''} (cache folder {constants.HF_HUB_CACHE}"
                 f"{'; HF_HUB_OFFLINE=1, so only the cache was looked at' if constants.HF_HUB_OFFLINE else ''})")
    return (f"cannot load the {what} from {where}: {type(error).__name__}: {str(error).rstrip('. ')}. Point {setting} at a local "
            f"diffusers folder or another repository id (and {revision_setting} at a commit to pin it), or download "
            "the weights into the cache folder first (huggingface-cli download <id>).")


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
