"""Sketch benchmark, the comparison half: edge fidelity, and what generic coders and JBIG1 need.

``f_score`` and ``ms_ssim`` score a decoded sketch against the uncompressed map;
``baseline_bytes`` codes our exact low-resolution bilevel map with 1-bit PNG, zlib,
zstd and JBIG1; ``jbig_rd_rows`` runs JBIG1 over its own operating points, and
``equal_fidelity`` reads off the bytes it needs at our fidelity. Used by
``bench/sketch_bench.py``.
"""

from __future__ import annotations

import io
import itertools
import math
import shutil
import statistics
import subprocess
import zlib

import cv2
import numpy as np
from PIL import Image

from services.eval.metrics import edge_f_score as f_score  # noqa: F401  (re-exported for the benches)
from services.eval.metrics import ms_ssim_arrays
from services.profiles import SketchKind
from services.sketch.lossy import block_or, thin
from services.sketch.render import control_image

KODAK_PIXELS = 768 * 512
JBIG_OPTIONS = ([], ["-q"], ["-q", "-s", "65535"], ["-q", "-p", "0", "-s", "65535"], ["-q", "-p", "64", "-s", "65535"])

# ----------------------------------------------------------------- fidelity


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two grey control images (0..255), by pytorch_msssim as everywhere in the project."""
    return ms_ssim_arrays(a, b)


# ----------------------------------------------------------------- baselines on a bilevel map


def pbm(bits: np.ndarray) -> bytes:
    h, w = bits.shape
    return f"P4\n{w} {h}\n".encode() + np.packbits(bits.astype(np.uint8), axis=1).tobytes()


def baseline_bytes(bits: np.ndarray, zstd_module) -> dict[str, int | None]:
    packed = np.packbits(bits.astype(np.uint8), axis=1).tobytes()
    png = io.BytesIO()
    Image.fromarray(bits).convert("1").save(png, format="PNG", optimize=True)
    out: dict[str, int | None] = {
        "png1bit": len(png.getvalue()),
        "zlib": len(zlib.compress(packed, 9)),
        "zstd": len(zstd_module.ZstdCompressor(level=19).compress(packed)) if zstd_module else None,
        "jbig": None,
    }
    if shutil.which("pbmtojbg"):
        data = pbm(bits)
        out["jbig"] = min(
            len(subprocess.run(["pbmtojbg", *opts], input=data, capture_output=True, check=True).stdout)
            for opts in JBIG_OPTIONS
        )
    return out


# ----------------------------------------------------------------- JBIG1 as a user would use it (own RD curve)

# JBIG1's own operating points: binarise at each threshold, block-OR downsample by each factor,
# code the map as it is (no thinning, corner removal or pruning). The decoder-side drawings
# below cost no bits, so each configuration is scored with whichever drawing serves it best.
JBIG_FACTORS = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16)
JBIG_THRESHOLDS = {SketchKind.HED: (128, 144, 160, 176, 192, 208), SketchKind.CANNY: (128,)}
JBIG_BIH_BYTES = 20  # JBIG1's fixed header (size, options); a payload that knows them could omit it
RENDERINGS = ("links", "thin_links", "blocks")


def draw_links(bits: np.ndarray, factor: int, width: int, height: int) -> np.ndarray:
    """Low-res map drawn at the working size: a line between the block centres of every pair
    of 8-adjacent set pixels, and a dot for each set pixel (our decoder's geometry)."""
    canvas = np.zeros((height, width), dtype=np.uint8)
    ys, xs = np.nonzero(bits)
    if not len(ys):
        return canvas

    def centres(x, y):
        return np.stack(
            [
                np.minimum(2 * x * factor + factor - 1, 2 * (width - 1)),
                np.minimum(2 * y * factor + factor - 1, 2 * (height - 1)),
            ],
            axis=-1,
        )

    segments = [np.stack([centres(xs, ys)] * 2, axis=1)]
    padded = np.pad(bits, 1)
    for dx, dy in ((1, 0), (1, 1), (0, 1), (-1, 1)):
        linked = padded[1 + ys + dy, 1 + xs + dx]
        a = centres(xs[linked], ys[linked])
        b = centres(xs[linked] + dx, ys[linked] + dy)
        segments.append(np.stack([a, b], axis=1))
    pairs = np.concatenate(segments).astype(np.int32)
    cv2.polylines(canvas, list(pairs), False, 255, 1, cv2.LINE_8, 1)
    return canvas


def render_jbig(bits: np.ndarray, factor: int, width: int, height: int, rendering: str) -> np.ndarray:
    if rendering == "links":
        return draw_links(bits, factor, width, height)
    if rendering == "thin_links":
        return draw_links(thin(bits), factor, width, height)
    blocks = np.repeat(np.repeat(bits, factor, axis=0), factor, axis=1)[:height, :width]
    return blocks.astype(np.uint8) * 255


def jbig_size(bits: np.ndarray) -> int:
    data = pbm(bits)
    return min(
        len(subprocess.run(["pbmtojbg", *opts], input=data, capture_output=True, check=True).stdout)
        for opts in JBIG_OPTIONS
    )


def jbig_rd_rows(
    image: str, edges: np.ndarray, kind: SketchKind, reference, reference_control, tolerance
) -> list[dict]:
    """One row per (threshold, factor, drawing): JBIG1 bytes of the unthinned map and its fidelity."""
    height, width = edges.shape
    rows = []
    for threshold in JBIG_THRESHOLDS[kind]:
        full = edges >= threshold
        for factor in JBIG_FACTORS:
            bits = block_or(full, factor)
            size = jbig_size(bits)
            for rendering in RENDERINGS:
                decoded = render_jbig(bits, factor, width, height, rendering)
                _, _, f1 = f_score(decoded, reference, tolerance)
                similarity = ms_ssim(np.asarray(control_image(decoded, kind))[..., 0], reference_control)
                rows.append(
                    {
                        "image": image,
                        "config": f"t{threshold}_f{factor}",
                        "rendering": rendering,
                        "jbig": size,
                        "f_score": f1,
                        "ms_ssim": similarity,
                        "map_pixels": int(bits.sum()),
                    }
                )
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(fidelity, bytes) points no other point beats (as faithful or more, for fewer bytes), by fidelity."""
    front = []
    for fid, size in sorted(points, key=lambda p: (-p[0], p[1])):
        if not front or size < front[-1][1]:
            front.append((fid, size))
    return front[::-1]


def bytes_at(front: list[tuple[float, float]], fidelity: float, offset: int = 0) -> tuple[float | None, str]:
    """JBIG1 bytes (minus ``offset``) on a front at ``fidelity``: log-bytes linear in fidelity between
    neighbouring points. Returns (bytes, how): "interpolated"; "bound" when even JBIG1's least
    faithful point is more faithful than ``fidelity`` (its bytes are then an upper bound, and so is
    our saving); (None, "above") when ``fidelity`` is beyond JBIG1's most faithful point."""
    if not front:
        return None, "above"
    if fidelity < front[0][0]:
        return front[0][1] - offset, "bound"
    for (f0, b0), (f1, b1) in itertools.pairwise(front):
        if f0 <= fidelity <= f1:
            t = 0.0 if f1 == f0 else (fidelity - f0) / (f1 - f0)
            return math.exp((1 - t) * math.log(b0 - offset) + t * math.log(b1 - offset)), "interpolated"
    if fidelity == front[-1][0]:
        return front[-1][1] - offset, "interpolated"
    return None, "above"


# Decoder-side drawings JBIG1's curve may use: every one (nearest-neighbour blocks included); only
# line drawings (a filled-block map scores recall on the F-score but is no edge map); or only thin
# lines, the kind of drawing our decoder makes (links between all adjacent pixels of an unthinned
# coarse map draw a mesh that covers the edge's band, which the 2-px F-score rewards).
RENDER_SETS = {"all": RENDERINGS, "lines": ("links", "thin_links"), "thin": ("thin_links",)}
METRICS = ("f_score", "ms_ssim")


def equal_fidelity(summary: list[dict], rows: list[dict], jbig_rows: list[dict]) -> list[dict]:
    """JBIG1's RD curve (means over images; per configuration and drawing set, the best drawing for
    each metric) and, for each of our points, the JBIG1 bytes at the same fidelity and our saving."""
    configs = sorted({r["config"] for r in jbig_rows})
    means = {}
    for r in jbig_rows:
        means.setdefault((r["config"], r["rendering"]), []).append(r)
    curve = []
    for config in configs:
        entry = {"config": config, "jbig": statistics.fmean(r["jbig"] for r in means[(config, "links")])}
        for metric in METRICS:
            for name, drawings in RENDER_SETS.items():
                value, drawing = max((statistics.fmean(r[metric] for r in means[(config, d)]), d) for d in drawings)
                entry[f"{metric}_{name}"], entry[f"{metric}_{name}_rendering"] = value, drawing
        curve.append(entry)
    for e in summary:
        for metric in METRICS:
            for name in RENDER_SETS:
                key = f"{metric}_{name}"
                front = pareto_front([(c[key], c["jbig"]) for c in curve])
                for suffix, offset in (("", 0), ("_nobih", JBIG_BIH_BYTES)):
                    equal, how = bytes_at(front, e[metric], offset)
                    e[f"jbig_equal_{key}{suffix}"] = equal
                    e[f"saving_equal_{key}{suffix}"] = None if equal is None else 1 - e["bytes"] / equal
                    e[f"equal_{key}_how"] = how
                # per image: each image's own JBIG1 front (the drawings chosen above), median saving
                savings = []
                for r in (r for r in rows if r["point"] == e["point"]):
                    own = [
                        (j[metric], j["jbig"])
                        for c in curve
                        for j in means[(c["config"], c[f"{key}_rendering"])]
                        if j["image"] == r["image"]
                    ]
                    equal, _ = bytes_at(pareto_front(own), r[metric])
                    if equal is not None:
                        savings.append(1 - r["bytes"] / equal)
                e[f"saving_equal_{key}_median_image"] = statistics.median(savings) if savings else None
        e["saving_same_map"] = 1 - e["bytes"] / e["jbig"] if e.get("jbig") else None
        e["saving_same_map_nobih"] = 1 - e["bytes"] / (e["jbig"] - JBIG_BIH_BYTES) if e.get("jbig") else None
    return curve
