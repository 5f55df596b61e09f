"""Set metrics over an evaluation run: FID and KID of reconstructions against originals.

Kodak has only 24 images, far too few for FID over whole images, so like the
low-rate codec literature (HiFiC, PerCo) the images are cut into 256 x 256
patches: one grid from the top-left corner and a second grid shifted by half a
patch, all full patches of both (8 per Kodak image). Features are the 2048-d
pool3 activations of the FID Inception network (``pytorch_fid``'s port of the
TensorFlow weights), extracted once per patch; the statistics are torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` (cubic polynomial
kernel, unbiased MMD^2) on those features.

KID averages ``KID_SUBSETS`` random subsets of ``kid_subset_size(n)`` patches:
at most ``KID_SUBSET_SIZE`` and at most half of the ``n`` patches, so the subsets
differ and the reported standard deviation means something (with a subset as large
as the set, every subset is the whole set). Subsets are drawn from a fixed seed.

Without ``pytorch_fid`` or its weights, ``load_set_metric`` raises
``MetricUnavailable`` and both metrics are reported as skipped.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from services.devices import resolve_device
from services.eval.metrics import MetricUnavailable, to_array
from services.settings import CodecSettings

PATCH = 256
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
KID_SEED = 0

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


def kid_subset_size(n_samples: int) -> int:
    """Patches per KID subset for ``n_samples`` patches per side: at most half of them, at least 2."""
    return max(2, min(KID_SUBSET_SIZE, n_samples // 2))


class _Precomputed(torch.nn.Module):
    """The torchmetrics 'feature extractor' for features extracted already: passes them through."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def set_scores(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """FID and KID (mean, std) between two N x D feature sets, by torchmetrics."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n = min(len(real), len(fake))
    if n < 4:
        raise ValueError(f"FID/KID need at least 4 samples per set, got {len(real)} and {len(fake)}")
    dim = real.shape[1]
    real_t, fake_t = torch.from_numpy(real).double(), torch.from_numpy(fake).double()
    frechet = FrechetInceptionDistance(feature=_Precomputed(dim))
    subset = kid_subset_size(n)
    with warnings.catch_warnings():  # its note about keeping every feature in memory: a few hundred patches
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kernel = KernelInceptionDistance(feature=_Precomputed(dim), subsets=KID_SUBSETS, subset_size=subset)
    for metric in (frechet, kernel):
        metric.update(real_t, real=True)
        metric.update(fake_t, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(KID_SEED)  # torchmetrics draws the subsets from torch's global generator
        kid, kid_std = kernel.compute()
    return {"fid": float(frechet.compute()), "kid": float(kid), "kid_std": float(kid_std), "kid_subset_size": subset}


@dataclass
class SetMetric:
    """Collects patch features per group; ``compute`` gives FID and KID for each group."""

    extractor: FeatureExtractor
    device: str = "cpu"
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
            if min(len(real), len(fake)) < 4:
                continue
            results[group] = {**set_scores(real, fake), "fid_patches": len(real)}
        return results


def inception_extractor(device: str) -> FeatureExtractor:
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
    device = resolve_device(settings.device)
    return SetMetric(extractor=inception_extractor(device), device=device)
