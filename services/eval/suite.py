"""The metrics of one evaluation run: the always-on ones plus every optional one that can load here.

``MetricSuite`` loads each optional metric once. A metric that cannot load
(package or weights missing) is recorded in ``MetricSuite.skipped`` with the
reason and what to do, instead of failing the run; so is MS-SSIM for images too
small for its five scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from services.eval.metrics import (
    ALL_METRICS,
    ALWAYS,
    MS_SSIM_MIN_SIDE,
    OPTIONAL_PAIR,
    OPTIONAL_SET,
    MetricUnavailable,
    ms_ssim,
    psnr,
)
from services.settings import CodecSettings


@dataclass
class MetricSuite:
    """``pair`` scores one reconstruction against its original; ``add_to_set`` collects images for the
    set metrics, which ``set_scores`` computes at the end per group (method and mode)."""

    settings: CodecSettings
    wanted: Sequence[str] = ALL_METRICS
    skipped: dict[str, str] = field(default_factory=dict)
    _pair_metrics: dict = field(default_factory=dict)
    _set_metric: object | None = None
    _loaded: bool = False

    def load(self) -> None:
        from services.eval import fid, perceptual

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
        scores = {"psnr": psnr(reference, test)}
        if min(reference.size) >= MS_SSIM_MIN_SIDE:
            scores["ms_ssim"] = ms_ssim(reference, test)
        else:
            scores["ms_ssim"] = math.nan
            self.skipped.setdefault("ms_ssim", f"not scored on images under {MS_SSIM_MIN_SIDE} px on a side "
                                                "(five scales of an 11-pixel window do not fit)")
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
