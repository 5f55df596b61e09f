"""Per-image quality of a reconstruction against its original: PSNR and MS-SSIM.

Both need no weights and are always computed.

- PSNR over all RGB values of 0..255 images, in dB (``inf`` for identical images).
- MS-SSIM from ``pytorch_msssim`` (the implementation CompressAI's figures use):
  Wang, Simoncelli & Bovik (2003), 11x11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, five scales with the standard weights, per RGB channel on 0..255
  values and averaged. Five scales need a shorter side above 160 pixels; smaller
  images raise ``ValueError`` (the metric suite records them as not scored).

The learned and set metrics (``services.eval.perceptual``, ``services.eval.fid``)
raise ``MetricUnavailable`` when they cannot run here; ``services.eval.suite``
collects them all.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

MS_SSIM_MIN_SIDE = 161  # 11-pixel window after four 2x downsamplings

ALWAYS = ("psnr", "ms_ssim")
OPTIONAL_PAIR = ("lpips", "dists", "clip_distance")
OPTIONAL_SET = ("fid", "kid")
ALL_METRICS = ALWAYS + OPTIONAL_PAIR + OPTIONAL_SET


class MetricUnavailable(Exception):
    """An optional metric cannot run here (package missing, weights not available offline)."""


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB image as a float64 H x W x 3 array of 0..255 values."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image, dtype=np.float64)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H x W x 3), got an array of shape {array.shape}")
    return array


def _pair(reference, test) -> tuple[np.ndarray, np.ndarray]:
    x, y = to_array(reference), to_array(test)
    if x.shape != y.shape:
        raise ValueError(
            f"reference is {x.shape[1]}x{x.shape[0]} but the reconstruction is {y.shape[1]}x{y.shape[0]}; "
            "resize the reconstruction to the original size before scoring"
        )
    return x, y


def psnr(reference, test, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB over all RGB values; ``inf`` for identical images."""
    x, y = _pair(reference, test)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ms_ssim(reference, test, data_range: float = 255.0) -> float:
    """Multi-scale SSIM in 0..1 (1.0 for identical images) of two RGB images, by ``pytorch_msssim``."""
    x, y = _pair(reference, test)
    return ms_ssim_arrays(x, y, data_range)


def ms_ssim_arrays(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """MS-SSIM of two H x W (grey) or H x W x C arrays of equal shape, averaged over channels."""
    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"MS-SSIM needs arrays of one shape, got {x.shape} and {y.shape}")
    height, width = x.shape[:2]
    if min(height, width) < MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} pixels (five scales of an "
            f"11-pixel window), got {width}x{height}")

    def tensor(array: np.ndarray):  # float32 in 0..1, as CompressAI feeds it (float64 convolutions are 3x slower)
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1) / data_range, dtype=np.float32))[None]

    return float(_ms_ssim(tensor(x), tensor(y), data_range=1.0, size_average=True))


def edge_f_score(decoded: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of the edge pixels (non-zero) of two maps of one size, a pixel
    matching when the other map has one within ``tolerance`` pixels (Euclidean); 0 when either is empty."""
    dec, ref = np.asarray(decoded) > 0, np.asarray(reference) > 0
    if not dec.any() or not ref.any():
        return 0.0, 0.0, 0.0
    to_ref = cv2.distanceTransform((~ref).astype(np.uint8), cv2.DIST_L2, 5)
    to_dec = cv2.distanceTransform((~dec).astype(np.uint8), cv2.DIST_L2, 5)
    precision = float((to_ref[dec] <= tolerance).mean())
    recall = float((to_dec[ref] <= tolerance).mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1
