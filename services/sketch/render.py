"""Decoder side of the sketch: decoded chains -> line map -> the ControlNet's control image.

Drawing uses integer arithmetic only (OpenCV lines with one fractional bit), so
every machine draws the same line map from the same body.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from services.profiles import SketchKind
from services.sketch.chain_coder import DIRECTIONS


def render(paths: list[list[int]], bits: np.ndarray, factor: int, width: int, height: int) -> np.ndarray:
    """Draw decoded chains at the working size: uint8 H x W, 255 on the 1-pixel lines.

    Block centres are at ``x * f + (f - 1) / 2``; coordinates carry one fractional
    bit (OpenCV ``shift=1``), and OpenCV draws them with integer arithmetic only.
    Chain ends are also joined to every set 8-neighbour that is not their chain
    neighbour (branches and closed loops).
    """
    canvas = np.zeros((height, width), dtype=np.uint8)
    h, w = bits.shape

    def centre(index: int) -> tuple[int, int]:
        x, y = index % w, index // w
        return min(2 * x * factor + factor - 1, 2 * (width - 1)), min(2 * y * factor + factor - 1, 2 * (height - 1))

    for path in paths:
        points = np.array([centre(i) for i in path], dtype=np.int32)
        if len(points) == 1:
            cv2.line(canvas, tuple(points[0]), tuple(points[0]), 255, 1, cv2.LINE_8, 1)
        else:
            cv2.polylines(canvas, [points], False, 255, 1, cv2.LINE_8, 1)
        ends = {path[0]: path[1:2], path[-1]: path[-2:-1]}
        for end, chain_neighbours in ends.items():
            x, y = end % w, end // w
            for dx, dy in DIRECTIONS:
                nx, ny = x + dx, y + dy
                q = ny * w + nx
                if 0 <= nx < w and 0 <= ny < h and bits[ny, nx] and q not in chain_neighbours:
                    cv2.line(canvas, centre(end), centre(q), 255, 1, cv2.LINE_8, 1)
    return canvas


def control_image(sketch: np.ndarray, kind: SketchKind | str) -> Image.Image:
    """RGB control image for the profile's ControlNet from a decoded line map.

    HED: lines dilated to 3 pixels and blurred (soft, HED-like edges, white on black);
    Canny: the thin lines as they are.
    """
    lines = np.asarray(sketch, dtype=np.uint8)
    if SketchKind(kind) is SketchKind.HED:
        thick = cv2.dilate(lines, np.ones((3, 3), np.uint8))
        soft = cv2.GaussianBlur(thick.astype(np.float32), (0, 0), sigmaX=1.5)
        lines = np.clip(soft * 1.4, 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([lines] * 3, axis=-1), "RGB")
