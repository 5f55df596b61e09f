"""Size limits shared by the encoder, the decoder and the sketch coder.

One value per limit, so the encoder can never write a payload its own decoder
refuses. ``services.settings.CodecSettings`` exposes them as settings
(``TEXTSKETCH_MAX_WORKING_PIXELS``, ``TEXTSKETCH_MAX_OUTPUT_PIXELS``); these
constants are their defaults and the bound that code without settings uses.
"""

from __future__ import annotations

# Working size (the size diffusion runs at, shorter side 512 for every profile): 2 Mpx allows
# 4096x512 (8:1 panoramas) and 2048x1024; a Kodak image works at 768x512 (0.39 Mpx).
DEFAULT_MAX_WORKING_PIXELS = 2 * 1024 * 1024

# Output size (the original's size the decoder resizes to): 16 Mpx = 4096x4096; larger inputs are
# coded at a size scaled down to fit, so no payload asks its decoder for more.
DEFAULT_MAX_OUTPUT_PIXELS = 16 * 1024 * 1024


def fit_within(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """``width`` x ``height`` scaled down (aspect kept, each side at least 1) to at most ``max_pixels``."""
    if width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    while w * h > max_pixels:  # float rounding
        if w >= h:
            w -= 1
        else:
            h -= 1
    return w, h
