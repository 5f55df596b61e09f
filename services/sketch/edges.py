"""Sketch stage, encoder side: the edge map of an image (HED or Canny).

The caller passes the image already resized to the profile's working size; the
map comes back at that size as uint8 0..255 (HED: edge probability * 255;
Canny: 0 or 255). ``services.sketch.coder`` turns it into the coded sketch.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from services.profiles import SketchKind
from services.settings import CodecSettings

# OpenCV Canny hysteresis thresholds used for the canny ControlNet's training maps.
CANNY_LOW = 100
CANNY_HIGH = 200


def canny_edge_map(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> np.ndarray:
    """OpenCV Canny on the grey image: uint8, 255 on edges, 0 elsewhere."""
    grey = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2GRAY)
    return cv2.Canny(grey, low, high)


def edge_map(image: Image.Image, kind: SketchKind | str, settings: CodecSettings) -> np.ndarray:
    """Edge map of ``image`` (at its size) for the profile's sketch ``kind``."""
    kind = SketchKind(kind)
    if kind is SketchKind.CANNY:
        return canny_edge_map(image)
    from services.sketch.hed import hed_edge_map  # torch model: loaded only when HED is asked for

    return hed_edge_map(image, settings)
