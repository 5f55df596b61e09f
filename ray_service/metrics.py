"""Our Prometheus metrics of each replica, exported through Ray's metrics pipeline.

Behind Ray's HTTP proxy, ``GET /decoder/metrics`` reaches one replica per scrape (the one named by
``X-Decoder-Replica``), so Prometheus cannot scrape replicas one by one there. Each replica therefore
mirrors its own registry (``ServiceMetrics.registry``, the ``textsketch_*`` families of
``services.serving.metrics``) into Ray Serve metrics every ``period_s``. Ray exports them, with
Serve's ``application``, ``deployment`` and ``replica`` tags added, on every node's metrics export
port (``ray start --metrics-export-port=8080``) under Ray's prefix: ``ray_textsketch_batch_size_sum``,
``ray_textsketch_requests_total{...,replica="..."}``, and so on. Every sample becomes a gauge of the
same value (counters and histogram buckets included, so ``rate()`` and ``histogram_quantile()`` work
on them as usual); ``*_created`` timestamps are left out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("textsketch.ray")


def _serve_gauge(name: str, description: str, tag_keys: tuple[str, ...]) -> Any:
    from ray.serve.metrics import Gauge

    return Gauge(name, description=description, tag_keys=tag_keys)


class MetricsBridge:
    """Copies every sample of a ``prometheus_client`` registry into gauges made by ``gauge_factory``."""

    def __init__(self, registry, period_s: float = 5.0,
                 gauge_factory: Callable[[str, str, tuple[str, ...]], Any] = _serve_gauge) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.registry = registry
        self.period_s = period_s
        self.gauge_factory = gauge_factory
        self._gauges: dict[tuple[str, tuple[str, ...]], Any] = {}

    def export_once(self) -> int:
        """Mirror the registry once; the number of samples exported."""
        exported = 0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                keys = tuple(sorted(sample.labels))
                gauge = self._gauges.get((sample.name, keys))
                if gauge is None:
                    gauge = self._gauges[(sample.name, keys)] = self.gauge_factory(
                        sample.name, family.documentation, keys)
                gauge.set(float(sample.value), tags=dict(sample.labels))
                exported += 1
        return exported

    async def run(self) -> None:
        """Export every ``period_s`` until cancelled; a failed export is logged, never fatal."""
        while True:
            try:
                self.export_once()
            except Exception:  # the replica serves on without its mirrored metrics
                log.exception("exporting metrics to Ray failed")
            await asyncio.sleep(self.period_s)
