"""Caption prompt source: an image-to-text model (BLIP by default), greedy decoding.

The caption is plain text; ``services.prompt.sources`` tokenises it with the CLIP
tokenizer. The model id ``tiny`` builds a random BLIP in the cache folder
(``services.tiny.encoders``) for tests and the offline demo, ``random-blip-base``
a full-size one for benchmarks.

Runtimes (``settings.caption_runtime``), all greedy with the KV cache on:

- ``fp32``: the checkpoint as it is;
- ``int8``: every ``nn.Linear`` replaced by a dynamically quantised int8 one
  (weights int8 per tensor, activations quantised per call): the decoder, which runs
  once per token and is bound by reading its weights, gets about twice as fast, the
  image encoder too;
- ``bf16``: the image encoder in bfloat16 (AMX / AVX-512 BF16 matrix units, several
  times faster than float32 there), the decoder float32;
- ``int8-bf16``: the image encoder as in ``bf16``, the rest as ``int8``;
- ``auto``: ``int8-bf16`` on CPUs with native bfloat16, ``int8`` on other CPUs.

On CUDA the model runs fp32 whatever the setting. The fast runtimes round
differently, so their caption can differ from fp32's;
``services.eval.caption_agreement`` measures by how many tokens (24 Kodak images on the
full-size random BLIP, 20 tokens: bf16 kept 20 captions, int8 4, int8-bf16 none; a random
model's next-token choices are near ties, so this is a worst case, not a quality figure).
"""

from __future__ import annotations

import enum
import functools
import logging
import warnings

from PIL import Image

from services.devices import is_cuda, native_bf16_cpu, resolve_device
from services.errors import ModelUnavailableError
from services.settings import CodecSettings, parse_choice
from services.tiny.encoders import resolve_model_id

logger = logging.getLogger(__name__)

# Where transformers' image-to-text models keep their image encoder (BLIP, LLaVA-style, GIT, vision-encoder-decoder).
IMAGE_ENCODER_PATHS = ("vision_model", "vision_tower", "model.vision_tower", "git.image_encoder", "encoder")


class CaptionRuntime(str, enum.Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"
    INT8_BF16 = "int8-bf16"


def resolve_runtime(runtime: CaptionRuntime | str, device: str = "cpu") -> CaptionRuntime:
    """The runtime that runs: ``fp32`` on CUDA; on CPU ``auto`` -> ``int8-bf16`` where the CPU has native
    bfloat16, else ``int8``; others as given."""
    runtime = parse_choice(CaptionRuntime, runtime, "caption runtime")
    if is_cuda(device):
        return CaptionRuntime.FP32
    if runtime is CaptionRuntime.AUTO:
        return CaptionRuntime.INT8_BF16 if native_bf16_cpu() else CaptionRuntime.INT8
    return runtime


def image_encoder(model) -> tuple[str, object] | tuple[None, None]:
    """The image encoder's module name and module, or (None, None) for an architecture not listed."""
    for path in IMAGE_ENCODER_PATHS:
        module = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None and module is not model:
            return path, module
    return None, None


def _to_float32(value):
    import torch

    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, tuple):
        return tuple(_to_float32(item) for item in value)
    return value


def _run_in_bf16(encoder) -> None:
    """Cast ``encoder`` to bfloat16 and keep its interface float32: inputs are cast on the way in, floating
    outputs (a ``ModelOutput``'s tensors) back to float32 on the way out."""
    import torch

    encoder.to(torch.bfloat16)

    def to_bf16(value):
        return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    def cast_inputs(module, args, kwargs):
        return tuple(to_bf16(a) for a in args), {k: to_bf16(v) for k, v in kwargs.items()}

    def cast_outputs(module, args, kwargs, output):
        if isinstance(output, dict):  # a transformers ModelOutput: item assignment keeps its attributes in step
            for key, value in list(output.items()):
                output[key] = _to_float32(value)
            return output
        return _to_float32(output)

    encoder.register_forward_pre_hook(cast_inputs, with_kwargs=True)
    encoder.register_forward_hook(cast_outputs, with_kwargs=True)


def apply_runtime(model, runtime: CaptionRuntime):
    """``model`` (float32, eval) converted for ``runtime`` (any but ``auto``)."""
    import torch

    if runtime is CaptionRuntime.FP32:
        return model
    keep_float = None
    if runtime in (CaptionRuntime.BF16, CaptionRuntime.INT8_BF16):
        keep_float, encoder = image_encoder(model)
        if encoder is None:
            logger.warning("caption runtime %s: no known image encoder in %s, running it %s", runtime.value,
                           type(model).__name__, "fp32" if runtime is CaptionRuntime.BF16 else "int8")
        else:
            _run_in_bf16(encoder)
    if runtime is CaptionRuntime.BF16:
        return model
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)
               and not (keep_float and (name == keep_float or name.startswith(keep_float + ".")))}
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not a dependency); it still works in the torch
        # range pyproject.toml allows, and tests/test_caption_runtime.py fails first if that changes.
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        return quantize_dynamic(model, {name: default_dynamic_qconfig for name in linears}, dtype=torch.qint8,
                                inplace=True)


class Captioner:
    """An image-to-text model (BLIP by default) with its processor: greedy decoding, KV cache on."""

    def __init__(self, model_id: str, device, revision: str | None = None,
                 runtime: CaptionRuntime | str = CaptionRuntime.FP32):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        try:
            self.processor = AutoProcessor.from_pretrained(model_id, revision=revision)
            model = AutoModelForImageTextToText.from_pretrained(model_id, revision=revision).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(
                f"cannot load the caption model {model_id!r}: {exc}. Set TEXTSKETCH_CAPTION_MODEL to a local "
                "folder holding an image-to-text model and its processor, or allow hub access."
            ) from exc
        self.device = device
        self.runtime = resolve_runtime(runtime, str(device))
        self.model = apply_runtime(model, self.runtime)

    def caption_ids(self, image: Image.Image, max_new_tokens: int) -> list[int]:
        """The caption's token ids in the model's own vocabulary, special tokens dropped."""
        import torch

        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, num_beams=1, use_cache=True,
                                      max_new_tokens=max_new_tokens)
        special = set(self.processor.tokenizer.all_special_ids)
        return [token for token in out[0].tolist() if token not in special]

    def caption(self, image: Image.Image, max_new_tokens: int) -> str:
        return self.processor.decode(self.caption_ids(image, max_new_tokens), skip_special_tokens=True).strip()


@functools.lru_cache(maxsize=2)
def _captioner(model_id: str, device: str, revision: str | None, runtime: CaptionRuntime) -> Captioner:
    return Captioner(model_id, device, revision, runtime)


def load_captioner(settings: CodecSettings) -> Captioner:
    """The configured caption model, loaded once per (model, device, revision, runtime)."""
    model_id = resolve_model_id(settings.caption_model, "caption", settings.cache_dir)
    device = resolve_device(settings.device)
    return _captioner(model_id, device, settings.caption_revision, resolve_runtime(settings.caption_runtime, device))


def caption_text(image: Image.Image, settings: CodecSettings) -> str:
    """The caption model's text for ``image``."""
    return load_captioner(settings).caption(image, settings.caption_max_new_tokens)
