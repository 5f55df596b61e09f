"""Set metrics over an evaluation run: FID and KID of reconstructions against originals.

Kodak has only 24 images, far too few for FID over whole images, so like the
low-rate codec literature (HiFiC, PerCo) the images are cut into 256 x 256
patches: one grid from the top-left corner and a second grid shifted by half a
patch, all full patches of both. Features are the 2048-d pool3 activations of
the FID Inception network (``pytorch_fid``'s port of the TensorFlow weights).

- FID: Frechet distance between Gaussians fitted to the two feature sets.
- KID: unbiased MMD^2 with the cubic polynomial kernel ``(x.y / d + 1)^3``,
  averaged over random subsets (Binkowski et al. 2018); reported unscaled.

Without ``pytorch_fid`` or its weights, ``load_set_metric`` raises
``MetricUnavailable`` and both metrics are reported as skipped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from services.quality import MetricUnavailable, to_array
from services.settings import CodecSettings

PATCH = 256
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000

FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]  # N x 3 x H x W in 0..1 -> N x D


def patches(image: Image.Image, size: int = PATCH) -> list[np.ndarray]:
    """Full ``size`` patches on a grid and on the grid shifted by ``size // 2`` (whole image if smaller)."""
    array = to_array(image).astype(np.uint8)
    height, width = array.shape[:2]
    if height < size or width < size:
        return [array]
    crops = []
    for offset in (0, size // 2):
        for top in range(offset, height - size + 1, size):
            for left in range(offset, width - size + 1, size):
                crops.append(array[top : top + size, left : left + size])
    return crops


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray, eps: float = 1e-6) -> float:
    """FID between two N x D feature sets."""
    mu_a, mu_b = features_a.mean(axis=0), features_b.mean(axis=0)
    sigma_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    sigma_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    covmean, _ = linalg.sqrtm(sigma_a @ sigma_b, disp=False)
    if not np.isfinite(covmean).all():  # singular product: nudge both diagonals
        offset = np.eye(sigma_a.shape[0]) * eps
        covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = np.real(covmean)
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def kernel_inception_distance(
    features_a: np.ndarray, features_b: np.ndarray, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets) between two N x D feature sets."""
    n = min(len(features_a), len(features_b), subset_size)
    if n < 2:
        raise ValueError("KID needs at least 2 samples per set")
    dim = features_a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        a = features_a[rng.choice(len(features_a), n, replace=False)]
        b = features_b[rng.choice(len(features_b), n, replace=False)]
        k_aa = (a @ a.T / dim + 1) ** 3
        k_bb = (b @ b.T / dim + 1) ** 3
        k_ab = (a @ b.T / dim + 1) ** 3
        within = (k_aa.sum() - np.trace(k_aa) + k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
        values.append(within - 2 * k_ab.mean())
    return float(np.mean(values)), float(np.std(values))


@dataclass
class SetMetric:
    """Collects patch features per group; ``compute`` gives FID and KID for each group."""

    extractor: FeatureExtractor
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    patch: int = PATCH
    batch: int = 32
    _reference: dict[str, np.ndarray] = field(default_factory=dict)  # image digest -> features
    _groups: dict[str, tuple[list[str], list[np.ndarray]]] = field(default_factory=dict)

    @torch.inference_mode()
    def features(self, image: Image.Image) -> np.ndarray:
        crops = patches(image, self.patch)
        out = []
        for start in range(0, len(crops), self.batch):
            chunk = np.stack(crops[start : start + self.batch]).astype(np.float32) / 255.0
            tensor = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(self.device)
            out.append(self.extractor(tensor).reshape(len(chunk), -1).double().cpu().numpy())
        return np.concatenate(out)

    def add(self, group: str, reference: Image.Image, test: Image.Image) -> None:
        digest = hashlib.sha256(np.asarray(reference.convert("RGB")).tobytes()).hexdigest()
        if digest not in self._reference:
            self._reference[digest] = self.features(reference)
        digests, tests = self._groups.setdefault(group, ([], []))
        digests.append(digest)
        tests.append(self.features(test))

    def compute(self) -> dict[str, dict[str, float]]:
        results = {}
        for group, (digests, tests) in self._groups.items():
            real = np.concatenate([self._reference[d] for d in digests])
            fake = np.concatenate(tests)
            if len(real) < 2:
                continue
            kid, kid_std = kernel_inception_distance(real, fake)
            results[group] = {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, "fid_patches": len(real)}
        return results


def inception_extractor(device: torch.device) -> FeatureExtractor:
    try:
        from pytorch_fid.inception import InceptionV3
    except Exception as exc:  # noqa: BLE001 - optional package (or torchvision) missing: skip
        raise MetricUnavailable(
            f"package pytorch_fid not importable ({type(exc).__name__}: {str(exc)[:120]}); "
            "pip install pytorch-fid (needs torchvision)"
        ) from None
    try:
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).to(device).eval()
    except Exception as exc:  # noqa: BLE001 - weights download refused offline: skip
        raise MetricUnavailable(
            f"FID Inception weights not available ({type(exc).__name__}: {str(exc)[:120]}); "
            "run once with network access so torch.hub caches pt_inception weights"
        ) from None

    def extract(batch: torch.Tensor) -> torch.Tensor:
        return model(batch)[0]

    return extract


def load_set_metric(settings: CodecSettings) -> SetMetric:
    from services.perceptual import resolve_device

    device = resolve_device(settings)
    return SetMetric(extractor=inception_extractor(device), device=device)
