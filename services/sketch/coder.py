"""Sketch coder: edge map -> a few hundred bytes -> line map at the working size.

Encoder (lossy, then lossless):

1. the lossy stage (``services.sketch.lossy``) binarises the edge map at the
   quality level's threshold, downsamples it with a block OR, thins it to a
   1-pixel skeleton and drops short pieces;
2. ``services.sketch.chain_coder`` codes that bilevel map losslessly as chains of
   8-connected moves, and ``services.sketch.body`` frames it (header, check);
3. with a byte budget, the finest level that fits is kept, or the next finer
   level with its weakest chains dropped.

Decoder: ``decode_sketch`` parses the body and draws every chain as a polyline
through the block centres at the working size (``services.sketch.render``);
``render.control_image`` turns that line map into the ControlNet's input.
Full description and measurements: ``docs/sketch.md``.
"""

from __future__ import annotations

import numpy as np

from services.limits import DEFAULT_MAX_WORKING_PIXELS
from services.profiles import SketchKind
from services.sketch.body import HEADER_BYTES, VERSION, decode_bitmap_body, encode_bitmap_body
from services.sketch.lossy import LEVELS, QUALITY_LEVELS, lossy_bitmap
from services.sketch.render import render

PRUNE_STEPS = 5  # byte-budget search: codings tried when dropping the weakest chains


def encode_sketch(
    edges: np.ndarray, kind: SketchKind | str, *, quality: int = 2, target_bytes: int | None = None,
    version: int = VERSION,
) -> bytes:
    """Code an edge map (uint8 H x W at the working size) as a sketch body.

    With ``target_bytes`` the body is never over the budget (``quality`` is then
    ignored); see ``_fit_budget``; ``ValueError`` if the budget is
    below the smallest possible body (``HEADER_BYTES``). ``version`` 2 writes the legacy
    body (comparisons only).
    """
    edges = np.asarray(edges)
    if edges.ndim != 2 or edges.size == 0:
        raise ValueError(f"edges must be a non-empty H x W array, got shape {edges.shape}")
    if target_bytes is None:
        if quality not in QUALITY_LEVELS:
            raise ValueError(f"quality must be in 0..{len(LEVELS) - 1}, got {quality!r}")
        bits, _ = lossy_bitmap(edges, kind, quality)
        return encode_bitmap_body(bits, quality, version)[0]
    return _fit_budget(edges, kind, target_bytes, version)


def _fit_budget(edges: np.ndarray, kind: SketchKind | str, target_bytes: int, version: int = VERSION) -> bytes:
    """A body within ``target_bytes``: the finest level that fits (levels grow in size, so they
    are tried from the coarsest up), or the next finer level with its weakest chains dropped
    when that comes out larger."""
    if not isinstance(target_bytes, int) or target_bytes < HEADER_BYTES:
        raise ValueError(
            f"target_bytes={target_bytes!r} is below the smallest sketch body ({HEADER_BYTES} bytes); "
            "raise the budget or use the PIC mode (no sketch)"
        )
    best = b""
    for quality in QUALITY_LEVELS:
        bits, strength = lossy_bitmap(edges, kind, quality)
        body, paths = encode_bitmap_body(bits, quality, version)
        if len(body) > target_bytes:
            pruned = _prune_to_budget(bits.shape, paths, strength, quality, target_bytes, len(body), version)
            return pruned if len(pruned) > len(best) else best
        best = body
    return best


def _prune_to_budget(shape, paths, strength, quality: int, target_bytes: int, full_bytes: int,
                     version: int = VERSION) -> bytes:
    """Keep the ``k`` strongest chains (sum of block maxima along them), ``k`` as large as fits:
    a first guess from the byte share of the kept pixels, then bisection (at most
    ``PRUNE_STEPS`` codings). ``k = 0``, the empty sketch, always fits."""
    flat_strength = strength.reshape(-1)
    scores = np.array([int(flat_strength[path].sum()) for path in paths], dtype=np.int64)
    order = np.argsort(-scores, kind="stable")
    cumulative = np.cumsum([len(paths[i]) for i in order])
    # First guess: the chains whose pixels make up the budget's share of the full body (integers only).
    share = (target_bytes - HEADER_BYTES) * int(cumulative[-1]) // max(full_bytes - HEADER_BYTES, 1) if len(paths) else 0
    low, high = 0, len(paths)  # chains known to fit / known not to fit
    best = encode_bitmap_body(np.zeros(shape, dtype=bool), quality, version)[0]
    k = int(np.searchsorted(cumulative, share, side="right")) if len(paths) else 0
    for _ in range(PRUNE_STEPS):
        k = min(max(k, low + 1), high - 1)
        if k <= low:
            break
        flat = np.zeros(shape[0] * shape[1], dtype=bool)
        for i in order[:k]:
            flat[paths[i]] = True
        body = encode_bitmap_body(flat.reshape(shape), quality, version)[0]
        if len(body) <= target_bytes:
            best, low = body, k
        else:
            high = k
        k = (low + high) // 2
    return best


def decode_sketch(body: bytes, width: int, height: int,
                  max_working_pixels: int = DEFAULT_MAX_WORKING_PIXELS) -> np.ndarray:
    """Decode a sketch body to its line map (uint8 H x W, 0/255) at the working size; ``BitstreamError`` if malformed
    or if the working size is over ``max_working_pixels``."""
    quality, bits, paths = decode_bitmap_body(body, width, height, max_working_pixels)
    return render(paths, bits, LEVELS[quality].factor, width, height)
