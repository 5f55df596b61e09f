"""Stand-ins for the diffusion model, for tests and benchmarks of the serving layer.

``FakeReconstructor`` has the ``Reconstructor`` interface the decoder runtime uses
(``load``, ``warmup``, ``decode_batch``) and draws flat images whose colour is a
function of the job's seed, so candidates can be told apart.
Like the real model they take ``should_stop`` (checked at each of ten "steps") and
``resize`` (``False``: images at the working size).
``create_fake_decoder_app`` is a uvicorn factory: the real decoder app (HTTP,
scheduler, bitstream, prompt and sketch decoding) over ``PoisonReconstructor``,
so overload and fault runs measure the service, not diffusion.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence

from PIL import Image

POISON_TOKEN = 4242
HANG_TOKEN = 4243  # a batch holding it sleeps TEXTSKETCH_FAKE_HANG_S without heartbeats: a stuck model
FAKE_DECODER = "services.testing.fakes:create_fake_decoder_app"  # uvicorn --factory target


def seed_colour(seed: int) -> tuple[int, int, int]:
    return (seed % 251, (seed >> 8) % 251, (seed >> 16) % 251)


class FakeReconstructor:
    """Records batches and draws flat images. ``gate`` holds batches; ``fail`` makes the next batch raise."""

    def __init__(self, profile, settings=None, *, delay_s: float = 0.0) -> None:
        self.profile = profile
        self.device = "cpu"
        self.delay_s = delay_s
        self.batches: list[list] = []
        self.warmed: list[int] = []
        self.loaded = False
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.batch_started = threading.Event()
        self.load_delay_s = 0.0

    def load(self) -> None:
        time.sleep(self.load_delay_s)
        self.loaded = True

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        self.warmed = list(batch_sizes)

    def decode_batch(self, jobs, *, should_stop=None, resize=True):
        self.batch_started.set()
        self.gate.wait(30)
        self.batches.append(list(jobs))
        _steps(self.delay_s, should_stop)
        if self.fail:
            raise RuntimeError("fake model failure")
        return [Image.new("RGB", _size(job, resize), seed_colour(job.seed)) for job in jobs]


def _size(job, resize: bool) -> tuple[int, int]:
    return (job.width, job.height) if resize else (job.working_width, job.working_height)


def _steps(delay_s: float, should_stop, n_steps: int = 10) -> None:
    """Sleep ``delay_s`` in ``n_steps`` "diffusion steps", stopping like the real model when asked."""
    from services.errors import DecodeInterruptedError

    for step in range(n_steps):
        time.sleep(delay_s / n_steps)
        if should_stop is not None and should_stop():
            raise DecodeInterruptedError(f"batch stopped after step {step + 1}")


class PoisonReconstructor(FakeReconstructor):
    """A fake model whose batch raises when any job's prompt holds ``POISON_TOKEN`` (a failing pipeline call)
    and hangs without heartbeats for ``hang_s`` when one holds ``HANG_TOKEN`` (a stuck model)."""

    hang_s = 0.0

    def decode_batch(self, jobs, *, should_stop=None, resize=True):
        self.batches.append(list(jobs))
        if any(HANG_TOKEN in job.token_ids for job in jobs):
            time.sleep(self.hang_s)
        _steps(self.delay_s, should_stop)
        if any(POISON_TOKEN in job.token_ids for job in jobs):
            raise RuntimeError("poisoned batch: the pipeline call failed")
        return [Image.new("RGB", _size(job, resize), seed_colour(job.seed)) for job in jobs]


def create_fake_decoder_app(settings=None):
    """uvicorn factory: the real decoder app over ``PoisonReconstructor`` (flat images, fixed delay).

    ``settings``: ``DecoderSettings`` (default: from the environment), as ``decoder_service.app.create_app``
    takes them (the Ray decoder deployment passes its own).

    ``TEXTSKETCH_FAKE_DELAY_S`` (seconds per batch) and ``TEXTSKETCH_FAKE_LOAD_DELAY_S``
    (seconds of "loading") are read here, when uvicorn calls the factory.
    """
    from decoder_service.app import create_app
    from decoder_service.settings import DecoderSettings

    delay_s = float(os.environ.get("TEXTSKETCH_FAKE_DELAY_S", "0.02"))
    load_delay_s = float(os.environ.get("TEXTSKETCH_FAKE_LOAD_DELAY_S", "0"))
    hang_s = float(os.environ.get("TEXTSKETCH_FAKE_HANG_S", "0"))

    def factory(profile, codec):
        fake = PoisonReconstructor(profile, codec, delay_s=delay_s)
        fake.load_delay_s = load_delay_s
        fake.hang_s = hang_s
        return fake

    return create_app(settings or DecoderSettings(), reconstructor_factory=factory)
