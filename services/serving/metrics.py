"""Prometheus metrics of both services, as named stages, in one per-app registry.

Each app builds its own ``ServiceMetrics`` (its own ``CollectorRegistry``) so
tests can create several apps in one process. Labels are low-cardinality:
the route *template* (never the raw path), the status code, a fixed set of
rejection reasons.

==============================================  =========  ======================================
metric                                          type       labels
==============================================  =========  ======================================
textsketch_requests_total                       counter    service, route, method, status
textsketch_request_duration_seconds             histogram  service, route
textsketch_queue_size                           gauge      service (queued jobs)
textsketch_queue_cost                           gauge      service (queued work, cost units)
textsketch_in_flight_requests                   gauge      service (queued or running requests)
textsketch_estimated_wait_seconds               gauge      service (wait a request sent now would see)
textsketch_oom_splits_total                     counter    service (batches halved on out-of-memory)
textsketch_build_info                           info       service, version, profile, python, torch
textsketch_queue_wait_seconds                   histogram  service
textsketch_batch_size                           histogram  service (jobs per batch run)
textsketch_inference_duration_seconds           histogram  service, outcome (ok / error)
textsketch_rejections_total                     counter    service, reason
textsketch_stage_duration_seconds               histogram  service, stage (encoder stages)
textsketch_ready                                gauge      service (1 when ready)
==============================================  =========  ======================================

Rejection reasons: queue_full, overloaded (estimated wait beyond the deadline),
too_costly, draining, not_ready, deadline, cancelled, too_large, unauthorized,
upstream.

Latency histograms reach the longest timeout the service is configured with
(``ServiceMetrics(..., longest_timeout_s=...)``), so no slow answer lands in +Inf only.
"""

from __future__ import annotations

import time

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from typing_extensions import Self

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
REJECTION_REASONS = (
    "queue_full", "overloaded", "too_costly", "draining", "not_ready", "deadline", "cancelled", "too_large",
    "unauthorized", "upstream",
)


def latency_buckets(longest_timeout_s: float) -> tuple[float, ...]:
    """``LATENCY_BUCKETS`` extended (x2 steps, then the timeout itself) up to ``longest_timeout_s``."""
    buckets = list(LATENCY_BUCKETS)
    while buckets[-1] < longest_timeout_s:
        buckets.append(min(buckets[-1] * 2, longest_timeout_s))
    return tuple(buckets)


class ServiceMetrics:
    """The metric set of one service instance; implements the scheduler's observer protocol."""

    def __init__(self, service: str, *, longest_timeout_s: float = 60.0, build: dict[str, str] | None = None) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        buckets = latency_buckets(longest_timeout_s)
        self.requests = Counter(
            "textsketch_requests_total", "HTTP requests by route template and status.",
            ["service", "route", "method", "status"], registry=r)
        self.request_duration = Histogram(
            "textsketch_request_duration_seconds", "Whole-request latency.", ["service", "route"],
            buckets=buckets, registry=r)
        self._queue_size = Gauge("textsketch_queue_size", "Jobs waiting in the decode queue.", ["service"], registry=r)
        self._queue_wait = Histogram(
            "textsketch_queue_wait_seconds", "Time from submit to the start of a request's batch.", ["service"],
            buckets=buckets, registry=r)
        self._batch_size = Histogram(
            "textsketch_batch_size", "Jobs per batch run on the model.", ["service"], buckets=BATCH_BUCKETS, registry=r)
        self._inference = Histogram(
            "textsketch_inference_duration_seconds", "Model time per batch.", ["service", "outcome"],
            buckets=buckets, registry=r)
        self._rejections = Counter(
            "textsketch_rejections_total", "Requests refused or dropped, by reason.", ["service", "reason"], registry=r)
        self.stage_duration = Histogram(
            "textsketch_stage_duration_seconds", "Encoder stage latency.", ["service", "stage"],
            buckets=buckets, registry=r)
        self._ready = Gauge("textsketch_ready", "1 when the service is ready.", ["service"], registry=r)
        self._queue_cost = Gauge(
            "textsketch_queue_cost", "Queued work in cost units (megapixels: working px x steps x (1 + ControlNet) "
            "+ output px).", ["service"], registry=r)
        self._in_flight = Gauge("textsketch_in_flight_requests", "Requests queued or in the running batch.",
                                ["service"], registry=r)
        self._estimated_wait = Gauge(
            "textsketch_estimated_wait_seconds", "Estimated wait before a request sent now could start.",
            ["service"], registry=r)
        self._oom_splits = Counter("textsketch_oom_splits_total", "Batches split in halves after out-of-memory.",
                                   ["service"], registry=r)
        self._build = Info("textsketch_build", "Version and runtime of the service.", ["service"], registry=r)
        self._build.labels(service).info(build_info() | (build or {}))
        for reason in REJECTION_REASONS:  # export zeros so dashboards see every series
            self._rejections.labels(service, reason)
        for gauge in (self._queue_size, self._queue_cost, self._in_flight, self._estimated_wait, self._ready):
            gauge.labels(service).set(0)
        self._oom_splits.labels(service)
        for child in (self._queue_wait.labels(service), self._batch_size.labels(service),
                      self._inference.labels(service, "ok"), self._inference.labels(service, "error")):
            child.observe  # noqa: B018 - creating the child exports its zero series

    # -- scheduler observer --------------------------------------------------
    def queue_size(self, n_jobs: int) -> None:
        self._queue_size.labels(self.service).set(n_jobs)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.labels(self.service).observe(seconds)

    def queue_load(self, cost: float, estimated_wait_s: float, in_flight: int) -> None:
        self._queue_cost.labels(self.service).set(cost)
        self._estimated_wait.labels(self.service).set(estimated_wait_s)
        self._in_flight.labels(self.service).set(in_flight)

    def oom_split(self) -> None:
        self._oom_splits.labels(self.service).inc()

    def in_flight_delta(self, delta: int) -> None:
        """Encoder: requests inside the service (decoders report through ``queue_load``)."""
        self._in_flight.labels(self.service).inc(delta)

    def batch_done(self, n_jobs: int, seconds: float, ok: bool) -> None:
        self._batch_size.labels(self.service).observe(n_jobs)
        self._inference.labels(self.service, "ok" if ok else "error").observe(seconds)

    def rejected(self, reason: str) -> None:
        self._rejections.labels(self.service, reason).inc()

    # -- HTTP ------------------------------------------------------------------
    def set_ready(self, ready: bool) -> None:
        self._ready.labels(self.service).set(1 if ready else 0)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(self.service, route, method, str(status)).inc()
        self.request_duration.labels(self.service, route).observe(seconds)

    def stage(self, stage: str):
        """Context manager timing one encoder stage."""
        return _Timer(self.stage_duration.labels(self.service, stage))

    def observe_stages(self, seconds: dict[str, float]) -> None:
        """Record stages timed elsewhere (the codec's ``EncodeResult.stage_seconds``)."""
        for stage, value in seconds.items():
            self.stage_duration.labels(self.service, stage).observe(value)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def build_info() -> dict[str, str]:
    """Package version, Python and (if loaded) torch versions: the labels of ``textsketch_build_info``."""
    import platform
    from importlib import metadata

    def version_of(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {"version": version_of("textsketch"), "python": platform.python_version(), "torch": version_of("torch")}


class _Timer:
    def __init__(self, histogram) -> None:
        self._histogram = histogram

    def __enter__(self) -> Self:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self._histogram.observe(time.perf_counter() - self._start)


def add_metrics_route(app, metrics: ServiceMetrics) -> None:
    """``GET /metrics``: the app's registry in the Prometheus text format."""
    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics_route() -> Response:
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)


def install_request_metrics(app, metrics: ServiceMetrics) -> None:
    """Count and time every request by its route template (unknown paths are one label)."""
    app.add_middleware(RequestMetricsMiddleware, routes=app.router.routes, metrics=metrics)


class RequestMetricsMiddleware:
    """Pure ASGI middleware (``BaseHTTPMiddleware`` would hide client disconnects from routes)."""

    def __init__(self, app, routes, metrics: ServiceMetrics) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics

    def _route(self, scope) -> str:
        from starlette.routing import Match

        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return getattr(route, "path", "unmatched")
        return "unmatched"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe_request(self._route(scope), scope["method"], status, time.perf_counter() - start)

