"""Shared helpers of the reconstruction tests: one tiny-profile reconstructor per run, job builders.

Test modules wrap ``shared_settings`` / ``shared_reconstructor`` in their own fixtures.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image

from services.bitstream.container import Mode
from services.profiles import get_profile
from services.reconstruction.jobs import DecodeJob
from services.reconstruction.reconstructor import Reconstructor
from services.settings import CodecSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORKING = (64, 64)  # small working size: tests stay fast


@functools.lru_cache(maxsize=1)
def shared_settings() -> CodecSettings:
    """Tiny-profile settings on the test-wide cache (``TEXTSKETCH_CACHE_DIR``, see conftest)."""
    return CodecSettings(profile="tiny", device="cpu")


@functools.lru_cache(maxsize=1)
def shared_reconstructor() -> Reconstructor:
    """One loaded tiny-profile reconstructor for every test module of the run."""
    reconstructor = Reconstructor(get_profile("tiny"), shared_settings())
    reconstructor.load()
    return reconstructor


def edge_control(seed: int, size: tuple[int, int] = WORKING) -> Image.Image:
    """An edge-like RGB control image: thin white lines on black."""
    rng = np.random.default_rng(seed)
    width, height = size
    canvas = np.zeros((height, width), np.uint8)
    for _ in range(6):
        if rng.random() < 0.5:
            canvas[int(rng.integers(0, height)), :] = 255
        else:
            canvas[:, int(rng.integers(0, width))] = 255
    return Image.fromarray(canvas).convert("RGB")


def make_job(seed: int, mode: Mode = Mode.PICS, *, size: tuple[int, int] = (100, 70),
             working: tuple[int, int] = WORKING, n_tokens: int = 12, steps: int = 2) -> DecodeJob:
    """A decode job with random token ids (and a random edge control image for PICS)."""
    rng = np.random.default_rng(seed)
    ids = tuple(int(i) for i in rng.integers(0, 49406, size=n_tokens))
    control = edge_control(seed, working) if mode == Mode.PICS else None
    return DecodeJob(
        token_ids=ids, control=control, seed=10_000 + seed, width=size[0], height=size[1],
        working_width=working[0], working_height=working[1], mode=mode, steps=steps, guidance=9.0,
    )


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)
