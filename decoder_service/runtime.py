"""The decoder's moving parts, apart from HTTP: model, scheduler, readiness, drain.

``DecoderRuntime`` owns the ``Reconstructor`` (``services.reconstruction.reconstructor``) and
the ``BatchScheduler``. The routes in ``decoder_service.app`` only call
``decode`` / ``candidates`` and read ``state``.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from decoder_service.scheduler import BatchScheduler, SchedulerConfig, Ticket
from decoder_service.settings import DecoderSettings
from services.bitstream.container import Mode, Payload
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


def job_cost(job: Any) -> float:
    """Work of one decode job in cost units (megapixels): working pixels x steps x (1 + ControlNet) + output pixels."""
    working = job.working_width * job.working_height / 1e6
    passes = 2 if Mode(job.mode) == Mode.PICS else 1
    return working * job.steps * passes + job.width * job.height / 1e6


def typical_job_cost(profile: ModelProfile) -> float:
    """The cost of a 768x512 PICS job (a Kodak photo) under ``profile``: the unit queue sizes are given in."""
    working_w, working_h = profile.working_size(768, 512)
    return working_w * working_h / 1e6 * profile.steps * (2 if profile.controlnet else 1) + 768 * 512 / 1e6


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
        self.max_queue_cost = settings.max_queue_cost or settings.max_queue_size * typical_job_cost(self.profile)
        self.max_request_cost = settings.max_request_cost or self.max_queue_cost
        self.scheduler: BatchScheduler = BatchScheduler(
            self._run_batch,
            SchedulerConfig(
                max_batch_size=settings.max_batch_size,
                max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
                max_queue_size=settings.max_queue_size,
                retry_after_s=settings.retry_after_s,
                max_queue_cost=self.max_queue_cost,
                max_request_cost=self.max_request_cost,
                admission_headroom=settings.admission_headroom,
                max_retry_after_s=settings.max_retry_after_s,
                cold_start_jobs=settings.max_batch_size,
            ),
            observer=metrics,
            cost_of=job_cost,
        )
        # Resizing to the output size and image encoding: a small pool, never the model's thread.
        self._postprocess = ThreadPoolExecutor(settings.postprocess_workers, thread_name_prefix="postprocess")
        self._stoppable = "should_stop" in inspect.signature(self.reconstructor.decode_batch).parameters
        if hasattr(self.reconstructor, "on_oom_split"):
            self.reconstructor.on_oom_split = metrics.oom_split
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

    async def drain(self) -> bool:
        """Finish accepted work within ``drain_timeout_s``; past it, fail what is left with a typed 503.

        Queued requests get ``DrainingError`` (503 + Retry-After) and the running batch is stopped at its
        next diffusion step with the same error, so every accepted request gets a response while the
        server still answers. True when everything finished.
        """
        self.begin_drain()
        timeout_s = self.settings.drain_timeout_s
        if await self.scheduler.drain(timeout_s):
            return True
        error = DrainingError(f"the decoder is shutting down and its {timeout_s:.0f} s drain timeout passed before "
                              "this request ran; retry on another instance", retry_after_s=5)
        failed = self.scheduler.fail_queued(error)
        self.scheduler.stop_running(error)
        log.error("drain timeout (%.0f s) passed: %d queued requests answered 503, running batch stopped",
                  timeout_s, failed)
        await self.scheduler.drain(self.settings.stop_grace_s)
        return False

    async def shutdown(self) -> None:
        await self.drain()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.scheduler.close()
        self._postprocess.shutdown(wait=True)
        self.state = State.STOPPED

    def stalled_for(self) -> float:
        """Seconds the running batch has shown no progress (0 when idle)."""
        return self.scheduler.stalled_for()

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def deadline(self, timeout_s: float | None) -> float:
        """A request's queue deadline: ``request_timeout_s``, shortened by the client's own."""
        return self.settings.request_timeout_s if timeout_s is None else min(timeout_s, self.settings.request_timeout_s)

    def check_accepting(self, timeout_s: float | None = None) -> None:
        """503 while loading or draining; 429 when the queue could not take a request with this deadline."""
        self._check_state()
        self.scheduler.check_capacity(self.deadline(timeout_s))

    def _check_state(self) -> None:
        """503 unless ready: loading, failed or draining."""
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
        """On the worker thread: the pipeline only; images come back at the working size."""
        if self._stoppable:
            return self.reconstructor.decode_batch(jobs, should_stop=self.scheduler.should_stop, resize=False)
        return self.reconstructor.decode_batch(jobs)

    async def finish_images(self, images: Sequence[Any], jobs: Sequence[Any], fmt: str) -> list[bytes]:
        """Resize to each job's output size and encode, in the postprocessing pool."""
        from services.imaging import resize, save_image

        def finish() -> list[bytes]:
            return [save_image(resize(image, job.width, job.height), fmt, self.settings.output_quality)
                    for image, job in zip(images, jobs, strict=True)]

        return await asyncio.get_running_loop().run_in_executor(self._postprocess, finish)

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
        self._check_state()  # submit checks the queue's capacity itself
        ticket: Ticket = self.scheduler.submit(self.bucket_key(jobs[0]), jobs, timeout_s=self.deadline(timeout_s))
        try:
            while True:
                done, _ = await asyncio.wait({ticket.future}, timeout=self.settings.disconnect_poll_s)
                if done:
                    return ticket.future.result()
                if is_disconnected is not None and not ticket.abandoned and await is_disconnected():
                    # Queued: dropped now. Running: marked abandoned; the batch stops at its next step
                    # when no one in it is still waiting.
                    ticket.cancel()
                    raise RequestCancelledError("client disconnected")
        except asyncio.CancelledError:
            ticket.cancel()
            raise
