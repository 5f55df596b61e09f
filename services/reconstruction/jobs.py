"""What the codec hands the diffusion stage, and how a batch survives running out of memory.

torch-free: the codec builds ``DecodeJob`` values and the decoder service schedules
them without importing any model code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from PIL import Image

from services.bitstream.container import Mode
from services.errors import DecodeOutOfMemoryError

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class DecodeJob:
    """One image to regenerate: what the codec hands the diffusion stage."""

    token_ids: tuple[int, ...]
    control: Image.Image | None  # RGB, working size; None for PIC
    seed: int
    width: int  # original size: the output size
    height: int
    working_width: int  # generation size (multiples of 8)
    working_height: int
    mode: Mode
    steps: int
    guidance: float

    def bucket_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call (the reconstructor fixes the profile)."""
        return (Mode(self.mode), self.working_width, self.working_height, self.steps, float(self.guidance))


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator out-of-memory error (torch's, or a RuntimeError saying so)."""
    torch = sys.modules.get("torch")  # only a loaded torch can have raised its own error
    if torch is not None and isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def run_splitting_on_oom(items: Sequence[T], run: Callable[[Sequence[T]], list[R]],
                         on_oom: Callable[[], None] = lambda: None) -> list[R]:
    """``run(items)``; on out-of-memory, free memory and run each half recursively.

    Results stay in input order; a single item that still does not fit raises
    ``DecodeOutOfMemoryError``.
    """
    try:
        return run(items)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
    on_oom()
    if len(items) == 1:
        raise DecodeOutOfMemoryError(
            "one image does not fit in accelerator memory at this working size; free GPU memory "
            "(fewer decoder processes per GPU), lower TEXTSKETCH_DETERMINISTIC_BATCH_SIZE if deterministic "
            "decoding is on, or use a profile with a smaller working size"
        )
    half = len(items) // 2
    return run_splitting_on_oom(items[:half], run, on_oom) + run_splitting_on_oom(items[half:], run, on_oom)
