"""Sketch coder, lossy stage (encoder only): edge map -> small bilevel skeleton map.

Per quality level (``LEVELS``; the level number travels in the body header):
binarise, downsample by a block OR, thin to a 1-pixel skeleton (Zhang-Suen),
remove redundant staircase corners, drop short 8-connected pieces. The result
is what ``services.sketch.chain_coder`` codes losslessly. See ``docs/sketch.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from services.profiles import SketchKind


@dataclass(frozen=True)
class QualityLevel:
    """One operating point of the lossy stage. ``factor`` is on the wire (via the level number)."""

    factor: int  # downsampling factor (block size in working pixels)
    threshold: int  # HED: edge if value >= threshold (0..255); Canny maps are 0/255
    min_length: int  # drop 8-connected pieces with fewer low-resolution pixels


# Index = the quality number on the wire. Append new levels; never change or reorder these.
LEVELS: tuple[QualityLevel, ...] = (
    QualityLevel(factor=8, threshold=192, min_length=8),
    QualityLevel(factor=8, threshold=160, min_length=5),
    QualityLevel(factor=6, threshold=160, min_length=6),
    QualityLevel(factor=5, threshold=160, min_length=6),
    QualityLevel(factor=4, threshold=160, min_length=8),
    QualityLevel(factor=4, threshold=128, min_length=5),
    QualityLevel(factor=3, threshold=128, min_length=6),
    QualityLevel(factor=2, threshold=128, min_length=8),
)
QUALITY_LEVELS = range(len(LEVELS))


def low_res_size(width: int, height: int, quality: int) -> tuple[int, int]:
    f = LEVELS[quality].factor
    return -(-width // f), -(-height // f)


def binarise(edges: np.ndarray, kind: SketchKind | str, quality: int) -> np.ndarray:
    """Full-resolution boolean edge map of a level (before downsampling)."""
    threshold = LEVELS[quality].threshold if SketchKind(kind) is SketchKind.HED else 128
    return np.asarray(edges) >= threshold


def block_or(bits: np.ndarray, factor: int) -> np.ndarray:
    """Downsample a boolean map: a block is set when any of its pixels is."""
    height, width = bits.shape
    h, w = -(-height // factor), -(-width // factor)
    padded = np.zeros((h * factor, w * factor), dtype=bool)
    padded[:height, :width] = bits
    return padded.reshape(h, factor, w, factor).any(axis=(1, 3))


def thin(bits: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning to a 1-pixel-wide 8-connected skeleton."""
    img = np.pad(bits.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = img
            n = [p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:], p[2:, 2:], p[2:, 1:-1], p[2:, :-2], p[1:-1, :-2], p[:-2, :-2]]
            count = sum(x.astype(np.int32) for x in n)
            ring = n + [n[0]]
            transitions = sum(((ring[i] == 0) & (ring[i + 1] == 1)).astype(np.int32) for i in range(8))
            p2, p4, p6, p8 = n[0], n[2], n[4], n[6]
            if step == 0:
                cond = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                cond = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (p[1:-1, 1:-1] == 1) & (count >= 2) & (count <= 6) & (transitions == 1) & cond
            if remove.any():
                img[1:-1, 1:-1][remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def drop_corners(bits: np.ndarray) -> np.ndarray:
    """Remove staircase corners: pixels whose two 4-neighbours at a right angle already
    join (8-connected) and whose removal keeps their neighbourhood in one piece."""
    img = np.pad(bits.astype(np.uint8), 1)
    ys, xs = np.nonzero(img)
    for y, x in zip(ys.tolist(), xs.tolist()):
        n = (
            img[y - 1, x],
            img[y - 1, x + 1],
            img[y, x + 1],
            img[y + 1, x + 1],
            img[y + 1, x],
            img[y + 1, x - 1],
            img[y, x - 1],
            img[y - 1, x - 1],
        )
        north, east, south, west = n[0], n[2], n[4], n[6]
        if not ((north and east) or (east and south) or (south and west) or (west and north)):
            continue
        # Yokoi's 8-connectivity number over the ring E, NE, N, NW, W, SW, S, SE.
        ring = (n[2], n[1], n[0], n[7], n[6], n[5], n[4], n[3], n[2], n[1])
        pieces = sum((1 - ring[k]) - (1 - ring[k]) * (1 - ring[k + 1]) * (1 - ring[k + 2]) for k in (0, 2, 4, 6))
        if pieces == 1:
            img[y, x] = 0
    return img[1:-1, 1:-1].astype(bool)


def lossy_bitmap(edges: np.ndarray, kind: SketchKind | str, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """The low-resolution map a level codes, and the edge map's block maxima at that resolution
    (the strength ``target_bytes`` uses to drop the weakest chains first)."""
    level = LEVELS[quality]
    edges = np.asarray(edges)
    bits = drop_corners(thin(block_or(binarise(edges, kind, quality), level.factor)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(bits.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= level.min_length
    keep[0] = False
    return keep[labels], _block_max(edges, level.factor).astype(np.int64)


def _block_max(edges: np.ndarray, factor: int) -> np.ndarray:
    height, width = edges.shape
    h, w = -(-height // factor), -(-width // factor)
    padded = np.zeros((h * factor, w * factor), dtype=edges.dtype)
    padded[:height, :width] = edges
    return padded.reshape(h, factor, w, factor).max(axis=(1, 3))
