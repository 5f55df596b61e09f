"""Does a faster edge map send the same sketch? Two edge maps compared after coding.

For every quality level both maps are coded and decoded at the working size, and the fast
map's decoded sketch is scored against the reference's: F-score of the line pixels within
``F_TOLERANCE_PX`` and the change in body bytes. The HED fast path (bfloat16, see
``services.sketch.hed``) keeps ``MIN_F_SCORE`` and ``MAX_BYTES_CHANGE`` on every image and
level; ``tests/test_hed_fast.py`` checks it on the repository's images and
``bench/encoder_bench.py`` on Kodak.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from services.eval.metrics import edge_f_score
from services.profiles import SketchKind
from services.sketch.coder import decode_sketch, encode_sketch
from services.sketch.lossy import QUALITY_LEVELS

F_TOLERANCE_PX = 2
MIN_F_SCORE = 0.95
MAX_BYTES_CHANGE = 0.03


@dataclass(frozen=True)
class LevelAgreement:
    """One quality level of one image: the fast map's coded sketch against the reference's."""

    quality: int
    f_score: float
    reference_bytes: int
    fast_bytes: int

    @property
    def bytes_change(self) -> float:
        """Relative change of the body size (+0.02 = 2 % more bytes than the reference)."""
        return self.fast_bytes / self.reference_bytes - 1.0

    @property
    def agrees(self) -> bool:
        return self.f_score >= MIN_F_SCORE and abs(self.bytes_change) <= MAX_BYTES_CHANGE


def sketch_agreement(reference_edges: np.ndarray, fast_edges: np.ndarray, kind: SketchKind | str = SketchKind.HED,
                     qualities: Iterable[int] = QUALITY_LEVELS) -> list[LevelAgreement]:
    """Code both edge maps (uint8 H x W at the working size) at each level and compare the decoded sketches."""
    height, width = np.asarray(reference_edges).shape
    rows = []
    for quality in qualities:
        reference = encode_sketch(reference_edges, kind, quality=quality)
        fast = encode_sketch(fast_edges, kind, quality=quality)
        _, _, f1 = edge_f_score(decode_sketch(fast, width, height), decode_sketch(reference, width, height),
                                F_TOLERANCE_PX)
        rows.append(LevelAgreement(quality, f1, len(reference), len(fast)))
    return rows
