"""The decoder's moving parts, apart from HTTP: model, scheduler, readiness, drain.

``DecoderRuntime`` owns the ``Reconstructor`` (``services.reconstruction.reconstructor``) and
the ``BatchScheduler``. The routes in ``decoder_service.app`` only call
``decode`` / ``candidates`` and read ``state``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from decoder_service.scheduler import BatchScheduler, SchedulerConfig, Ticket
from decoder_service.settings import DecoderSettings
from services.bitstream.container import Payload
from services.profiles import ModelProfile
from services.serving.errors import DrainingError, NotReadyError, RequestCancelledError
from services.serving.metrics import ServiceMetrics

log = logging.getLogger("textsketch.decoder")

ReconstructorFactory = Callable[[ModelProfile, Any], Any]


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


def default_reconstructor(profile: ModelProfile, codec_settings: Any) -> Any:
    from services.reconstruction.reconstructor import Reconstructor

    return Reconstructor(profile, codec_settings)


class DecoderRuntime:
    """Loads and warms the model, batches decode jobs, drains on shutdown."""

    def __init__(
        self,
        settings: DecoderSettings,
        metrics: ServiceMetrics,
        reconstructor_factory: ReconstructorFactory = default_reconstructor,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.profile = settings.codec.model_profile()
        self.reconstructor = reconstructor_factory(self.profile, settings.codec)
        self.scheduler: BatchScheduler = BatchScheduler(
            self._run_batch,
            SchedulerConfig(
                max_batch_size=settings.max_batch_size,
                max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                max_queue_size=settings.max_queue_size,
                retry_after_s=settings.retry_after_s,
            ),
            observer=metrics,
        )
        self.state = State.LOADING
        self.load_error: str | None = None
        self._load_task: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------
    async def startup(self) -> None:
        await self.scheduler.start()
        self._load_task = asyncio.create_task(self._load(), name="decoder-load")
        if not self.settings.load_in_background:
            await self._load_task

    async def _load(self) -> None:
        sizes = self.settings.batch_sizes_to_warm()
        try:
            # Load and warm up on the batch worker thread: every model call uses that one thread.
            await self.scheduler.call_in_worker(self.reconstructor.load)
            await self.scheduler.call_in_worker(self.reconstructor.warmup, sizes)
        except Exception as exc:  # readiness stays off; liveness reports the failure
            self.state = State.FAILED
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("decoder failed to load profile %s", self.profile.name)
            return
        if self.state is State.LOADING:
            self.state = State.READY
            self.metrics.set_ready(True)
            log.info("decoder ready: profile %s, warmed batch sizes %s", self.profile.name, sizes)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait for the load task (tests, benchmarks); raise if loading failed."""
        if self._load_task is not None:
            await asyncio.wait_for(asyncio.shield(self._load_task), timeout_s)
        if self.state is State.FAILED:
            raise RuntimeError(f"decoder failed to load: {self.load_error}")

    def begin_drain(self) -> None:
        """Stop taking new work (readiness and new requests answer 503). Safe from a signal handler."""
        if self.state in (State.READY, State.LOADING):
            log.info("draining: new requests get 503, accepted ones finish")
        if self.state is not State.FAILED:
            self.state = State.DRAINING
        self.metrics.set_ready(False)

    async def shutdown(self) -> None:
        self.begin_drain()
        drained = await self.scheduler.drain(self.settings.drain_timeout_s)
        if not drained:
            log.error("drain timeout (%.0f s) passed with work still queued", self.settings.drain_timeout_s)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.scheduler.close()
        self.state = State.STOPPED

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def check_accepting(self) -> None:
        if self.state is State.READY:
            return
        if self.state is State.LOADING:
            self.metrics.rejected("not_ready")
            raise NotReadyError("the decoder is still loading its models; retry shortly", retry_after_s=5)
        if self.state is State.FAILED:
            self.metrics.rejected("not_ready")
            raise NotReadyError(f"the decoder failed to load its models ({self.load_error}); see the server log")
        self.metrics.rejected("draining")
        raise DrainingError("the decoder is shutting down; retry on another instance", retry_after_s=5)

    # -- work ------------------------------------------------------------------
    def _run_batch(self, jobs: list[Any]) -> Sequence[Any]:
        return self.reconstructor.decode_batch(jobs)

    def jobs_for(self, payload: Payload, candidates: Sequence[int] | None = None) -> list[Any]:
        """Decode jobs of a payload (CPU: token ids, sketch, control image); one per candidate index."""
        from services.codec import candidate_jobs, payload_to_job

        limits = {"max_working_pixels": self.settings.codec.max_working_pixels,
                  "max_output_pixels": self.settings.codec.max_output_pixels}
        if not candidates:
            return [payload_to_job(payload, self.profile, **limits)]
        return candidate_jobs(payload, self.profile, candidates, **limits)

    def bucket_key(self, job: Any) -> tuple:
        return (int(self.profile.id), *job.bucket_key())

    async def run_jobs(self, jobs: Sequence[Any], is_disconnected: Callable[[], Awaitable[bool]] | None = None,
                       timeout_s: float | None = None) -> list:
        """Queue jobs as one group and wait; drop them if the client goes away first.

        ``timeout_s`` (a client's own deadline) can only shorten ``request_timeout_s``.
        """
        self.check_accepting()
        deadline = self.settings.request_timeout_s if timeout_s is None else min(timeout_s, self.settings.request_timeout_s)
        ticket: Ticket = self.scheduler.submit(self.bucket_key(jobs[0]), jobs, timeout_s=deadline)
        try:
            while True:
                done, _ = await asyncio.wait({ticket.future}, timeout=self.settings.disconnect_poll_s)
                if done:
                    return ticket.future.result()
                if is_disconnected is not None and not ticket.started and await is_disconnected():
                    ticket.cancel()
                    raise RequestCancelledError("client disconnected while queued")
        except asyncio.CancelledError:
            ticket.cancel()
            raise
