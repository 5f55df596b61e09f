"""Learned pair metrics: LPIPS, DISTS and CLIP distance, each loaded only if its weights are here.

- LPIPS (Zhang et al. 2018, AlexNet variant, the one low-rate codec papers
  report) through the ``lpips`` package.
- DISTS (Ding et al. 2020) through the ``DISTS_pytorch`` package.
- CLIP distance: ``1 - cos(e(x), e(y))`` of the CLIP image embeddings of the
  original and the reconstruction, with ``settings.clip_model`` (ViT-H-14
  laion2b_s32b_b79k by default, as published) loaded by transformers'
  ``from_pretrained`` from a hub id or a local folder.

The first two packages pull in torchvision and download backbone weights on
first use; where either is impossible, loading raises ``MetricUnavailable``
with the reason and what to do, and the suite records the metric as skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from services.devices import resolve_device
from services.eval.metrics import MetricUnavailable, to_array
from services.settings import CodecSettings

PairMetric = Callable[[Image.Image, Image.Image], float]


def _tensor01(image: Image.Image, device: torch.device) -> torch.Tensor:
    """1 x 3 x H x W float tensor in 0..1."""
    array = to_array(image) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).float().to(device)


def _unavailable(name: str, exc: BaseException, hint: str) -> MetricUnavailable:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MetricUnavailable(f"{hint} [{name}: {detail[:160]}]")


def load_lpips(settings: CodecSettings) -> PairMetric:
    try:
        import lpips
    except Exception as exc:  # noqa: BLE001 - ImportError, or torchvision failing to import: skip, never crash
        raise _unavailable("lpips", exc, "package missing: pip install lpips (needs torchvision)") from None
    device = torch.device(resolve_device(settings.device))
    try:
        model = lpips.LPIPS(net="alex", verbose=False).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - download refused offline, corrupt cache: skip
        raise _unavailable("lpips", exc, "AlexNet weights not available offline; run once with network access") from None

    @torch.inference_mode()
    def score(reference: Image.Image, test: Image.Image) -> float:
        x = _tensor01(reference, device) * 2 - 1
        y = _tensor01(test, device) * 2 - 1
        return float(model(x, y).mean())

    return score


def load_dists(settings: CodecSettings) -> PairMetric:
    try:
        from DISTS_pytorch import DISTS
    except Exception as exc:  # noqa: BLE001 - optional package (or torchvision) missing: skip
        raise _unavailable("dists", exc, "package missing: pip install DISTS_pytorch (needs torchvision)") from None
    device = torch.device(resolve_device(settings.device))
    try:
        model = DISTS().to(device).eval()
    except Exception as exc:  # noqa: BLE001 - weights not downloadable offline: skip
        raise _unavailable("dists", exc, "VGG16 weights not available offline; run once with network access") from None

    @torch.inference_mode()
    def score(reference: Image.Image, test: Image.Image) -> float:
        return float(model(_tensor01(reference, device), _tensor01(test, device), batch_average=True))

    return score


class ClipDistance:
    """``1 - cosine`` between CLIP image embeddings (0 = same content, up to 2)."""

    def __init__(self, settings: CodecSettings) -> None:
        from transformers import CLIPImageProcessor, CLIPModel

        self.model_id = settings.clip_model
        self.device = torch.device(resolve_device(settings.device))
        try:
            self.processor = CLIPImageProcessor.from_pretrained(self.model_id, revision=settings.clip_revision)
            model = CLIPModel.from_pretrained(self.model_id, revision=settings.clip_revision)
        except Exception as exc:  # noqa: BLE001 - OSError offline / missing folder, ValueError for a bad config
            raise _unavailable(
                "clip_distance",
                exc,
                f"CLIP weights {self.model_id!r} not available; download them or set TEXTSKETCH_CLIP_MODEL "
                "to a local folder",
            ) from None
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = model.to(self.device, dtype=dtype).eval()
        self.dtype = dtype

    @torch.inference_mode()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=self.dtype)
        features = self.model.get_image_features(pixel_values=pixels)
        embeds = getattr(features, "pooler_output", features).float()  # transformers 5 returns an output object
        return torch.nn.functional.normalize(embeds, dim=-1)

    def __call__(self, reference: Image.Image, test: Image.Image) -> float:
        embeds = self.embed([reference, test])
        return float(1.0 - (embeds[0] * embeds[1]).sum().clamp(-1.0, 1.0))


def load_clip_distance(settings: CodecSettings) -> PairMetric:
    return ClipDistance(settings)


LOADERS: dict[str, Callable[[CodecSettings], PairMetric]] = {
    "lpips": load_lpips,
    "dists": load_dists,
    "clip_distance": load_clip_distance,
}


def load_pair_metric(name: str, settings: CodecSettings) -> PairMetric:
    """Load one optional pair metric or raise ``MetricUnavailable`` with the reason."""
    if name not in LOADERS:
        raise ValueError(f"unknown pair metric {name!r}; choose from {', '.join(LOADERS)}")
    return LOADERS[name](settings)
