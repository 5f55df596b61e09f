"""The decoder and encoder as Ray Serve deployments: the services' own FastAPI apps behind ``serve.ingress``.

Each replica builds its app with the service's ``create_app`` (or another factory of the same shape,
such as the fake-model decoder of the tests), settings from the environment (``TEXTSKETCH_*``, set
per application in the Serve config's ``runtime_env``). Under Ray:

- the decoder replica loads and warms its models before Ray routes to it (``load_in_background`` off),
  keeps its own bucketed scheduler, answers ``forward`` calls from the encoder through its app in
  memory, reports its queued buckets to the router (``record_routing_stats``) and its liveness to
  Ray's health check (``check_health``: a failed load or a stalled batch restarts the replica);
- the encoder replica reaches the decoder through a deployment handle (``HandleTransport``);
- Ray, not a signal handler, stops replicas: on a redeploy or scale-down it stops routing to the
  replica, waits for its requests (``graceful_shutdown_timeout_s``), then the app's lifespan drains.

Every answer names the replica that made it (``X-Decoder-Replica``, ``X-Encoder-Replica``: Ray's
replica actor name), so load spread and failures can be traced, and every replica mirrors its own
``/metrics`` into Ray's metrics export, tagged with the replica (``ray_service.metrics``).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

import httpx
from ray import serve

from ray_service.forwarding import (
    HANDLE_URL,
    ForwardedRequest,
    ForwardedResponse,
    HandleTransport,
    scheduler_bucket_label,
)
from ray_service.metrics import MetricsBridge
from ray_service.router import BUCKETS_STAT

log = logging.getLogger("textsketch.ray")

DECODER_APP = "decoder_service.app:create_app"
ENCODER_APP = "encoder_service.app:create_app"
METRICS_EXPORT_PERIOD_S = 5.0  # how often a replica mirrors its /metrics into Ray's (ray_service.metrics)
# Ongoing requests a decoder replica takes beyond what its scheduler can hold: health, metrics, the
# requests its own admission is refusing at that moment.
ADMISSION_HEADROOM = 8


def load_factory(target: str) -> Callable[..., Any]:
    """``"module:function"`` -> the function; a clear error for anything else."""
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"app factory must look like 'package.module:function', got {target!r}")
    factory = getattr(importlib.import_module(module_name), name, None)
    if not callable(factory):
        raise ValueError(f"app factory {target!r}: {module_name} has no function {name!r}")
    return factory


def decoder_max_ongoing(settings) -> int:
    """``max_ongoing_requests`` of a decoder replica: every request its scheduler could admit (a full queue
    of one-job requests plus the running batch) plus headroom, so the scheduler, not Ray, refuses (429/503)."""
    return settings.max_queue_size + settings.max_batch_size + ADMISSION_HEADROOM


class _ReplicaHeader:
    """ASGI middleware adding one fixed header (the replica's name) to every response."""

    def __init__(self, app, name: str, value: str) -> None:
        self.app = app
        self.header = (name.encode("latin-1"), value.encode("latin-1"))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_header(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        return await self.app(scope, receive, send_with_header)


def replica_name() -> str:
    """Ray's actor name of this replica (``SERVE_REPLICA::<app>#<deployment>#<id>``, namespace ``serve``)."""
    return serve.get_replica_context().replica_id.to_full_id_str()


@serve.ingress()
class Decoder:
    """One decoder: warm pipelines and the bucketed scheduler, on one GPU when the config gives it one."""

    def __init__(self, app_factory: str = DECODER_APP) -> None:
        from decoder_service.settings import DecoderSettings

        self.settings = DecoderSettings(handle_sigterm=False, load_in_background=False)
        self.factory = load_factory(app_factory)
        self.name = replica_name()
        config = serve.get_replica_context()._deployment_config
        needed = decoder_max_ongoing(self.settings)
        if config.max_ongoing_requests < needed:
            raise ValueError(
                f"Decoder max_ongoing_requests is {config.max_ongoing_requests} but its scheduler admits up to "
                f"{needed} requests (max_queue_size + max_batch_size + {ADMISSION_HEADROOM}); raise it or leave it "
                "to ray_service.app, otherwise Ray queues requests the scheduler would refuse with 429")

    async def __serve_build_asgi_app__(self):
        app = self.factory(self.settings)
        app.add_middleware(_ReplicaHeader, name="X-Decoder-Replica", value=self.name)
        self.metrics_export = _export_metrics(app)
        self.runtime = app.state.runtime
        # Calls from the encoder's handle run through the same app in memory: same checks, same answers.
        # (The ASGI transport enforces no timeout: the scheduler's deadline and the encoder's bound a call.)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), timeout=self.settings.request_timeout_s)
        return app

    async def forward(self, request: ForwardedRequest, bucket: str | None = None) -> ForwardedResponse:
        """One request from the encoder; ``bucket`` is for the router only."""
        return await request.run(self.client)

    def record_routing_stats(self) -> dict[str, Any]:
        """Queued jobs per bucket, for ``BucketAffinityRouter``."""
        queued = self.runtime.scheduler.queued_by_bucket()
        return {BUCKETS_STAT: {scheduler_bucket_label(key): n for key, n in queued.items()}}

    def check_health(self) -> None:
        """Ray's health check = our liveness: a failed load or a batch stalled past ``liveness_stall_s``."""
        from decoder_service.runtime import State

        if self.runtime.state is State.FAILED:
            raise RuntimeError(f"decoder failed to load: {self.runtime.load_error}")
        stalled = self.runtime.stalled_for()
        if stalled > self.settings.liveness_stall_s:
            raise RuntimeError(f"running batch stalled for {stalled:.0f} s")

    async def __del__(self) -> None:
        _stop(getattr(self, "metrics_export", None))
        client = getattr(self, "client", None)
        if client is not None:
            await client.aclose()


@serve.ingress()
class Encoder:
    """One encoder (CPU): its app, with the decoder application reached through a deployment handle."""

    def __init__(self, decoder_application: str = "decoder", app_factory: str = ENCODER_APP) -> None:
        from encoder_service.settings import EncoderSettings

        self.settings = EncoderSettings(decoder_url=HANDLE_URL, handle_sigterm=False)
        self.factory = load_factory(app_factory)
        self.decoder = serve.get_deployment_handle("Decoder", app_name=decoder_application)
        self.name = replica_name()

    async def __serve_build_asgi_app__(self):
        transport = HandleTransport(self.decoder, self.settings.codec.model_profile())
        app = self.factory(self.settings, http_transport=transport)
        app.add_middleware(_ReplicaHeader, name="X-Encoder-Replica", value=self.name)
        self.metrics_export = _export_metrics(app)
        return app

    async def __del__(self) -> None:
        _stop(getattr(self, "metrics_export", None))


def _export_metrics(app) -> asyncio.Task:
    """Mirror the app's registry into Ray's metrics for as long as the replica lives."""
    bridge = MetricsBridge(app.state.metrics.registry, METRICS_EXPORT_PERIOD_S)
    return asyncio.get_running_loop().create_task(bridge.run(), name="metrics-export")


def _stop(task: asyncio.Task | None) -> None:
    if task is not None:
        task.cancel()
