"""Quality of a reconstruction against its original: PSNR, MS-SSIM and the metric suite.

PSNR and MS-SSIM need no weights and are always computed. The learned metrics
(LPIPS, DISTS, CLIP distance; ``services.perceptual``) and the set metrics
(FID/KID; ``services.fid``) load weights that may not be available offline:
``MetricSuite`` loads each once, and a metric that cannot load is recorded in
``MetricSuite.skipped`` with the reason instead of failing the run.

MS-SSIM follows Wang, Simoncelli & Bovik (2003): 11x11 Gaussian window with
sigma 1.5, K1 = 0.01, K2 = 0.03, five scales with weights
``MS_SSIM_WEIGHTS``, 2x2 average pooling between scales, contrast-structure
terms at the first four scales and full SSIM at the last; computed per RGB
channel on 0..255 values and averaged. Images whose shorter side is too small
for five scales (< 161 px) use as many scales as fit, with the weights
renormalised; ``ms_ssim_scales`` says how many.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from services.settings import CodecSettings

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

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


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of an N x 1 x H x W tensor."""
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    return F.conv2d(x, kernel.view(1, 1, -1, 1))


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, data_range: float):
    """Mean SSIM and mean contrast-structure term per channel (both N-vectors)."""
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    sigma_xx = _blur(x * x, kernel) - mu_x**2
    sigma_yy = _blur(y * y, kernel) - mu_y**2
    sigma_xy = _blur(x * y, kernel) - mu_x * mu_y
    cs_map = (2 * sigma_xy + c2) / (sigma_xx + sigma_yy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    return (luminance * cs_map).mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ms_ssim_scales(width: int, height: int, scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales fit an image (the coarsest must still hold one window)."""
    short = min(width, height)
    if short < SSIM_WINDOW:
        raise ValueError(f"MS-SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {width}x{height}")
    fitting = 1
    while fitting < scales and short // 2**fitting >= SSIM_WINDOW:
        fitting += 1
    return fitting


def ssim(reference, test, data_range: float = 255.0) -> float:
    """Single-scale SSIM (Gaussian 11/1.5), averaged over RGB channels."""
    x, y = _pair(reference, test)
    kernel = _gaussian_window()
    tx = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(1)
    ty = torch.from_numpy(y).permute(2, 0, 1).unsqueeze(1)
    value, _ = _ssim_terms(tx, ty, kernel, data_range)
    return float(value.mean())


def ms_ssim(reference, test, data_range: float = 255.0, scales: int = len(MS_SSIM_WEIGHTS)) -> float:
    """Multi-scale SSIM in 0..1 (1.0 for identical images), averaged over RGB channels."""
    x, y = _pair(reference, test)
    n_scales = ms_ssim_scales(x.shape[1], x.shape[0], scales)
    weights = torch.tensor(MS_SSIM_WEIGHTS[:n_scales], dtype=torch.float64)
    weights = weights / weights.sum()
    kernel = _gaussian_window()
    tx = torch.from_numpy(x).permute(2, 0, 1).unsqueeze(1)  # channels as batch: 3 x 1 x H x W
    ty = torch.from_numpy(y).permute(2, 0, 1).unsqueeze(1)
    factors = []
    for scale in range(n_scales):
        ssim_value, cs_value = _ssim_terms(tx, ty, kernel, data_range)
        if scale == n_scales - 1:
            factors.append(torch.relu(ssim_value))
        else:
            factors.append(torch.relu(cs_value))
            tx, ty = F.avg_pool2d(tx, 2), F.avg_pool2d(ty, 2)
    stacked = torch.stack(factors, dim=0)  # scales x channels
    per_channel = torch.prod(stacked ** weights.view(-1, 1), dim=0)
    return float(per_channel.mean())


@dataclass
class MetricSuite:
    """The metrics of one evaluation run, each optional one loaded once or skipped with a reason.

    ``pair`` scores one reconstruction against its original; ``add_to_set``
    collects images for the set metrics, which ``set_scores`` computes at the end
    per group (method and mode).
    """

    settings: CodecSettings
    wanted: Sequence[str] = ALL_METRICS
    skipped: dict[str, str] = field(default_factory=dict)
    _pair_metrics: dict = field(default_factory=dict)
    _set_metric: object | None = None
    _sets: dict = field(default_factory=dict)
    _loaded: bool = False

    def load(self) -> None:
        from services import fid, perceptual

        if self._loaded:
            return
        unknown = sorted(set(self.wanted) - set(ALL_METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(ALL_METRICS)}")
        for name in OPTIONAL_PAIR:
            if name not in self.wanted:
                continue
            try:
                self._pair_metrics[name] = perceptual.load_pair_metric(name, self.settings)
            except MetricUnavailable as exc:
                self.skipped[name] = str(exc)
        if any(name in self.wanted for name in OPTIONAL_SET):
            try:
                self._set_metric = fid.load_set_metric(self.settings)
            except MetricUnavailable as exc:
                for name in OPTIONAL_SET:
                    if name in self.wanted:
                        self.skipped[name] = str(exc)
        self._loaded = True

    @property
    def active(self) -> list[str]:
        """Metrics that will be reported (always-on ones plus optional ones that loaded)."""
        self.load()
        optional = [name for name in OPTIONAL_PAIR + OPTIONAL_SET if name in self.wanted]
        return list(ALWAYS) + [name for name in optional if name not in self.skipped]

    def pair(self, reference: Image.Image, test: Image.Image) -> dict[str, float]:
        self.load()
        scores = {"psnr": psnr(reference, test), "ms_ssim": ms_ssim(reference, test)}
        for name, metric in self._pair_metrics.items():
            scores[name] = float(metric(reference, test))
        return scores

    def add_to_set(self, group: str, reference: Image.Image, test: Image.Image) -> None:
        """Remember a pair for FID/KID of ``group`` (features are extracted right away)."""
        self.load()
        if self._set_metric is not None:
            self._set_metric.add(group, reference, test)

    def set_scores(self) -> dict[str, dict[str, float]]:
        """FID/KID per group; empty when the set metrics were skipped."""
        self.load()
        if self._set_metric is None:
            return {}
        results = self._set_metric.compute()
        return {
            group: {name: value for name, value in scores.items() if name.split("_")[0] in self.wanted}
            for group, scores in results.items()
        }
