"""Encoder start-up and readiness: the models load in the background, then the encoder is ready.

After start-up a warm-up encode of a small synthetic image (``warm_up``) loads what the
configured prompt source and sketch stage need (tokenizer, caption model or PEZ's CLIP, HED)
on a worker thread. Until it finished, ``/health/ready`` and ``/encode`` answer 503
``not_ready`` with ``Retry-After``; when it failed they stay there with the error, and
``/health/live`` turns 503 with it too, so an orchestrator restarts the process.
``warmup=False`` makes the encoder ready at once (models then load on first use).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable

from starlette.concurrency import run_in_threadpool

from encoder_service.settings import EncoderSettings
from services.serving.errors import DrainingError, NotReadyError
from services.serving.metrics import ServiceMetrics

log = logging.getLogger("textsketch.encoder")

RETRY_AFTER_S = 5.0  # while loading or draining


class State(str, enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"


class EncoderRuntime:
    """Readiness of one encoder app: runs ``warm_up`` on a worker thread after start-up."""

    def __init__(self, metrics: ServiceMetrics, warm_up: Callable[[], None] | None) -> None:
        self.metrics = metrics
        self._warm_up = warm_up
        self.state = State.LOADING
        self.load_error: str | None = None
        self._task: asyncio.Task | None = None
        self.in_flight = 0  # /encode requests past check_accepting, not yet answered

    async def startup(self) -> None:
        """Start loading in the background; without a warm-up the encoder is ready at once."""
        if self._warm_up is None:
            self._set_ready()
            return
        self._task = asyncio.get_running_loop().create_task(self._load())

    async def _load(self) -> None:
        start = time.perf_counter()
        try:
            await run_in_threadpool(self._warm_up)
        except Exception as exc:  # readiness stays off; liveness and readiness report the failure
            self.load_error = f"{type(exc).__name__}: {exc}"
            self.state = State.FAILED
            log.error("encoder failed to load its models: %s", self.load_error, exc_info=exc)
            return
        if self.state is State.LOADING:
            self._set_ready()
            log.info("encoder ready: models loaded in %.1f s", time.perf_counter() - start)

    def _set_ready(self) -> None:
        self.state = State.READY
        self.metrics.set_ready(True)

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Until ready (``services.testing.servers.serving`` calls this); raises if loading failed."""
        deadline = time.monotonic() + timeout_s
        while self.state is State.LOADING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the encoder did not load its models within {timeout_s} s")
            await asyncio.sleep(0.02)
        if self.state is State.FAILED:
            raise RuntimeError(f"the encoder failed to load its models: {self.load_error}")

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    def begin_drain(self) -> None:
        """Stop taking new work (``/health/ready`` and ``/encode``: 503 draining)."""
        if self.state is not State.FAILED:
            self.state = State.DRAINING
        self.metrics.set_ready(False)

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """Count one request in flight for the whole of its handling (the drain waits for it)."""
        self.in_flight += 1
        self.metrics.in_flight_delta(1)
        try:
            yield
        finally:
            self.in_flight -= 1
            self.metrics.in_flight_delta(-1)

    async def drain(self, timeout_s: float) -> bool:
        """Stop taking work and wait up to ``timeout_s`` for the requests in flight; True when none is left."""
        self.begin_drain()
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            if time.monotonic() >= deadline:
                log.error("drain timeout (%.0f s) passed with %d encodes still running", timeout_s, self.in_flight)
                return False
            await asyncio.sleep(0.02)
        return True

    async def shutdown(self) -> None:
        self.begin_drain()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the warm-up thread itself finishes on its own; nobody waits for it

    def check_accepting(self) -> None:
        """Raise the 503 a request gets while the encoder cannot take work."""
        if self.state is State.READY:
            return
        if self.state is State.DRAINING:
            self.metrics.rejected("draining")
            raise DrainingError("the encoder is shutting down", retry_after_s=RETRY_AFTER_S)
        self.metrics.rejected("not_ready")
        if self.state is State.FAILED:
            raise NotReadyError(f"the encoder failed to load its models ({self.load_error}); see the server log",
                                retry_after_s=RETRY_AFTER_S)
        raise NotReadyError("the encoder is still loading its models", retry_after_s=RETRY_AFTER_S)


def warm_up(settings: EncoderSettings) -> None:
    """One encode of a small synthetic image with the configured prompt source: loads its models.

    PEZ runs a single step here (its CLIP is what takes the time to load; the inverter is cached per model).
    """
    from PIL import Image

    from services.codec import EncodeOptions, encode_image

    codec = settings.codec.model_copy(update={"pez_steps": 1})
    encode_image(Image.new("RGB", (96, 64), (128, 96, 64)), codec, EncodeOptions(text="warm up"))


def set_torch_threads(threads: int) -> None:
    """torch's intra-op threads for this process (each running encode gets a team of this size)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
