"""Sketch coder benchmark on the Kodak images: rate, fidelity, speed, and baselines on the same maps.

For each operating point (every quality level, and each ``--budgets`` byte budget):
mean bytes, bpp (bytes * 8 / (768 * 512)), edge F-score of the decoded sketch against
the uncompressed map (binarised + thinned at full resolution; match within
``--tolerance`` pixels), MS-SSIM of the two maps' control images, encode and decode
ms (the sketch coder only; HED is timed separately), and the bytes that 1-bit PNG,
zlib, zstd and JBIG1 (``pbmtojbg``, best of a few option sets) need for the very same
low-resolution bilevel map our lossless stage codes.

    .venv/bin/python bench/sketch_bench.py                # HED maps (cached in bench/out/hed/)
    .venv/bin/python bench/sketch_bench.py --kind canny

Writes bench/out/sketch_<kind>.csv (per image), sketch_<kind>_summary.csv/.json and
sketch_<kind>_rd.png. JBIG1 needs Debian's ``jbigkit-bin``; without it that column is skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.edges import canny_edge_map
from services.profiles import SketchKind, working_size
from services.sketch_coding import QUALITY_LEVELS, control_image, decode_bitmap_body, decode_sketch, encode_sketch
from services.sketch_lossy import binarise, block_or, thin

KODAK_PIXELS = 768 * 512
JBIG_OPTIONS = ([], ["-q"], ["-q", "-s", "65535"], ["-q", "-p", "0", "-s", "65535"], ["-q", "-p", "64", "-s", "65535"])
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# ----------------------------------------------------------------- fidelity


def f_score(decoded: np.ndarray, reference: np.ndarray, tolerance: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of edge pixels, matched within ``tolerance`` pixels (Euclidean)."""
    dec, ref = decoded > 0, reference > 0
    if not dec.any() or not ref.any():
        return 0.0, 0.0, 0.0
    to_ref = cv2.distanceTransform((~ref).astype(np.uint8), cv2.DIST_L2, 5)
    to_dec = cv2.distanceTransform((~dec).astype(np.uint8), cv2.DIST_L2, 5)
    precision = float((to_ref[dec] <= tolerance).mean())
    recall = float((to_dec[ref] <= tolerance).mean())
    f1 = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f1


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (Wang et al. 2003) of two grey images 0..255: 11x11 Gaussian (sigma 1.5), 5 scales."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    result = 1.0
    for scale, weight in enumerate(MSSSIM_WEIGHTS):

        def blur(z):
            return cv2.GaussianBlur(z, (11, 11), 1.5)[5:-5, 5:-5]  # 'valid' window positions

        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs = float(np.mean((2 * sxy + c2) / (sxx + syy + c2)))
        if scale == len(MSSSIM_WEIGHTS) - 1:
            ssim = float(np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * (2 * sxy + c2) / (sxx + syy + c2)))
            result *= max(ssim, 0.0) ** weight
        else:
            result *= max(cs, 0.0) ** weight
            x = cv2.resize(x, (x.shape[1] // 2, x.shape[0] // 2), interpolation=cv2.INTER_AREA)
            y = cv2.resize(y, (y.shape[1] // 2, y.shape[0] // 2), interpolation=cv2.INTER_AREA)
    return result


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


# ----------------------------------------------------------------- edge maps


def load_edges(path: Path, kind: SketchKind, cache: Path, model) -> tuple[np.ndarray, float | None]:
    """Edge map at the working size (Kodak: the image size); HED maps cached as PNG."""
    image = Image.open(path).convert("RGB")
    size = working_size(*image.size)
    image = image.resize(size, Image.Resampling.BOX) if size != image.size else image
    if kind is SketchKind.CANNY:
        return canny_edge_map(image), None
    cached = cache / f"{path.stem}.png"
    if cached.is_file():
        return np.asarray(Image.open(cached)), None
    from services.hed import hed_probabilities

    start = time.perf_counter()
    edges = np.round(np.clip(hed_probabilities(model(), image), 0, 1) * 255).astype(np.uint8)
    elapsed = (time.perf_counter() - start) * 1000
    cache.mkdir(parents=True, exist_ok=True)
    Image.fromarray(edges).save(cached)
    return edges, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--kind", choices=[k.value for k in SketchKind], default="hed")
    parser.add_argument("--budgets", type=int, nargs="*", default=[295])
    parser.add_argument("--tolerance", type=float, default=2.0)
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--hed-timing-images", type=int, default=2, help="time HED afresh on this many images")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument(
        "--no-jbig-rd", action="store_true", help="skip JBIG1's own RD curve (equal-fidelity comparison)"
    )
    args = parser.parse_args()
    kind = SketchKind(args.kind)
    files = sorted(args.kodak.glob("kodim*.png"))[: args.limit]
    if not files:
        sys.exit(f"no kodim*.png in {args.kodak}; pass --kodak DIR")
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import zstandard as zstd_module
    except ImportError:
        zstd_module = None
        print("zstandard not installed: zstd column skipped")
    if not shutil.which("pbmtojbg"):
        print("pbmtojbg not found (apt-get install jbigkit-bin): JBIG1 column skipped")

    model_cache = {}

    def model():
        if "hed" not in model_cache:
            from services.hed import load_hed

            model_cache["hed"] = load_hed()
        return model_cache["hed"]

    hed_ms = []
    if kind is SketchKind.HED:
        from services.hed import hed_probabilities

        for path in files[: args.hed_timing_images]:
            image = Image.open(path).convert("RGB")
            start = time.perf_counter()
            hed_probabilities(model(), image)
            hed_ms.append((time.perf_counter() - start) * 1000)

    points = [("q", q) for q in QUALITY_LEVELS] + [("budget", b) for b in args.budgets]
    rows, jbig_rows = [], []
    jbig_rd = shutil.which("pbmtojbg") and not args.no_jbig_rd
    for path in files:
        edges, _ = load_edges(path, kind, args.out / kind.value, model)
        height, width = edges.shape
        reference = thin(binarise(edges, kind, 0) if kind is SketchKind.CANNY else edges >= 128).astype(np.uint8) * 255
        reference_control = np.asarray(control_image(reference, kind))[..., 0]
        for point, value in points:
            start, cpu = time.perf_counter(), time.process_time()
            if point == "q":
                body = encode_sketch(edges, kind, quality=value)
            else:
                body = encode_sketch(edges, kind, target_bytes=value)
            encode_ms, encode_cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
            start, cpu = time.perf_counter(), time.process_time()
            decoded = decode_sketch(body, width, height)
            decode_ms, decode_cpu_ms = (time.perf_counter() - start) * 1000, (time.process_time() - cpu) * 1000
            quality, bits, _ = decode_bitmap_body(body, width, height)
            precision, recall, f1 = f_score(decoded, reference, args.tolerance)
            similarity = ms_ssim(np.asarray(control_image(decoded, kind))[..., 0], reference_control)
            row = {
                "image": path.stem,
                "point": f"{point}{value}",
                "quality": quality,
                "bytes": len(body),
                "bpp": len(body) * 8 / KODAK_PIXELS,
                "precision": precision,
                "recall": recall,
                "f_score": f1,
                "ms_ssim": similarity,
                "encode_ms": encode_ms,
                "decode_ms": decode_ms,
                "encode_cpu_ms": encode_cpu_ms,
                "decode_cpu_ms": decode_cpu_ms,
                "map_pixels": int(bits.sum()),
            }
            row.update(baseline_bytes(bits, zstd_module))
            rows.append(row)
        if jbig_rd:
            jbig_rows += jbig_rd_rows(path.stem, edges, kind, reference, reference_control, args.tolerance)
        print(f"{path.stem}: done", flush=True)

    with open(args.out / f"sketch_{kind.value}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if jbig_rows:
        with open(args.out / f"sketch_{kind.value}_jbig_rd.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(jbig_rows[0]))
            writer.writeheader()
            writer.writerows(jbig_rows)
    summary, curve = summarise(rows, jbig_rows, points, hed_ms, len(files), args)
    plot(summary, curve, args.out / f"sketch_{kind.value}_rd.png", kind)


def summarise(rows, jbig_rows, points, hed_ms, n_images, args) -> tuple[list[dict], list[dict]]:
    summary = []
    for point, value in points:
        sel = [r for r in rows if r["point"] == f"{point}{value}"]

        def mean(key, sel=sel):
            values = [r[key] for r in sel if r[key] is not None]
            return statistics.fmean(values) if values else None

        entry = {"point": f"{point}{value}", "images": len(sel)}
        for key in (
            "bytes",
            "bpp",
            "f_score",
            "precision",
            "recall",
            "ms_ssim",
            "encode_ms",
            "decode_ms",
            "encode_cpu_ms",
            "decode_cpu_ms",
            "map_pixels",
            "png1bit",
            "zlib",
            "zstd",
            "jbig",
        ):
            entry[key] = mean(key)
        entry["encode_ms_max"] = max(r["encode_ms"] for r in sel)
        entry["decode_ms_max"] = max(r["decode_ms"] for r in sel)
        entry["max_bytes"] = max(r["bytes"] for r in sel)
        if entry["jbig"]:
            entry["bytes_vs_jbig"] = entry["bytes"] / entry["jbig"]
        summary.append(entry)
    curve = equal_fidelity(summary, rows, jbig_rows) if jbig_rows else []
    kind = args.kind
    with open(args.out / f"sketch_{kind}_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    meta = {
        "images": n_images,
        "kind": kind,
        "tolerance_px": args.tolerance,
        "hed_ms": hed_ms,
        "points": summary,
        "jbig_rd_curve": curve,
        "notes": {
            "same_map": "JBIG1 (best of 5 pbmtojbg option sets) on the very low-res bitmap our lossless stage codes",
            "equal_fidelity": "JBIG1 on the binarised, block-OR-downsampled map WITHOUT thinning/corner removal/pruning, "
            "every threshold x factor in the curve, scored after the best decoder-side drawing of a set ('all': links, "
            "thin_links, blocks = nearest-neighbour upsampling; 'lines': links, thin_links; 'thin': thin_links); bytes at our fidelity by "
            "log-bytes-linear interpolation between neighbouring points of its Pareto front; how='bound': our fidelity "
            "is below JBIG1's least faithful point, whose bytes are then an upper bound (so is the saving); "
            "how='above': beyond JBIG1's most faithful point (None)",
            "nobih": f"JBIG1 bytes minus its {JBIG_BIH_BYTES}-byte BIH header",
        },
    }
    (args.out / f"sketch_{kind}_summary.json").write_text(json.dumps(meta, indent=2))
    header = (
        f"{'point':>10} {'bytes':>7} {'max':>5} {'bpp':>7} {'F@' + str(args.tolerance):>6} {'MS-SSIM':>7} "
        f"{'enc ms':>7} {'max':>6} {'cpu':>6} {'dec ms':>7} {'max':>6} {'cpu':>6} "
        f"{'png':>6} {'zlib':>6} {'zstd':>6} {'jbig':>6} {'ours/jbig':>9}"
    )
    print(f"\n{kind} sketches, {n_images} Kodak images (means; max = largest; cpu = process time, ms)")
    print(header)
    for e in summary:

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        print(
            f"{e['point']:>10} {e['bytes']:7.1f} {e['max_bytes']:5d} {e['bpp']:7.4f} {e['f_score']:6.3f} "
            f"{e['ms_ssim']:7.3f} {e['encode_ms']:7.1f} {e['encode_ms_max']:6.0f} {e['encode_cpu_ms']:6.1f} "
            f"{e['decode_ms']:7.1f} {e['decode_ms_max']:6.0f} {e['decode_cpu_ms']:6.1f} {fmt(e['png1bit'], '6.1f')} "
            f"{fmt(e['zlib'], '6.1f')} {fmt(e['zstd'], '6.1f')} {fmt(e['jbig'], '6.1f')} "
            f"{fmt(e.get('bytes_vs_jbig'), '9.3f')}"
        )
    if curve:
        print_equal_fidelity(summary, curve)
    if hed_ms:
        print(f"HED network alone: {statistics.fmean(hed_ms):.0f} ms per image (mean of {len(hed_ms)}, wall clock)")
    return summary, curve


def print_equal_fidelity(summary, curve) -> None:
    def pct(v, how="interpolated"):
        if v is None:
            return "above"
        return ("<=" if how == "bound" else "") + f"{100 * v:+.1f}%"

    print("\nJBIG1's own RD curve: binarised + block-OR map as it is (no thinning/corner removal/pruning);")
    print("means over images; per configuration the best decoder-side drawing (all: links, thin_links, blocks)")
    print(
        f"{'config':>10} {'jbig B':>8} {'F all':>6} {'drawing':>11} {'F lines':>7} {'F thin':>6} {'MS all':>7} "
        f"{'drawing':>11} {'MS thin':>7}"
    )
    for c in sorted(curve, key=lambda c: c["jbig"]):
        print(
            f"{c['config']:>10} {c['jbig']:8.1f} {c['f_score_all']:6.3f} {c['f_score_all_rendering']:>11} "
            f"{c['f_score_lines']:7.3f} {c['f_score_thin']:6.3f} {c['ms_ssim_all']:7.3f} "
            f"{c['ms_ssim_all_rendering']:>11} {c['ms_ssim_thin']:7.3f}"
        )
    print(
        "\nOurs vs JBIG1: saving = 1 - ours / JBIG1 (positive: we are smaller; target >= +20%); -BIH: JBIG1 "
        f"without its {JBIG_BIH_BYTES}-byte header;\n<= : upper bound (JBIG1's least faithful point is more faithful "
        "and cheaper); above: beyond JBIG1's most faithful point"
    )
    groups = (
        ("f_score_all", "@F all"),
        ("f_score_lines", "@F lines"),
        ("f_score_thin", "@F thin"),
        ("ms_ssim_all", "@MS all"),
        ("ms_ssim_thin", "@MS thin"),
    )
    head = "".join(f" | {label:>9} {'saving':>9} {'-BIH':>9}" for _, label in groups)
    print(f"{'point':>10} {'ours B':>7} | {'same map':>9} {'-BIH':>7}{head}")
    for e in summary:
        line = (
            f"{e['point']:>10} {e['bytes']:7.1f} | {pct(e['saving_same_map']):>9} {pct(e['saving_same_map_nobih']):>7}"
        )
        for key, _ in groups:
            how = e[f"equal_{key}_how"]
            equal = e[f"jbig_equal_{key}"]
            line += (
                f" | {(f'{equal:.1f}' if equal is not None else '-'):>9} {pct(e[f'saving_equal_{key}'], how):>9} "
                f"{pct(e[f'saving_equal_{key}_nobih'], how):>9}"
            )
        print(line)


def plot(summary, curve, path: Path, kind: SketchKind) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [e for e in summary if e["point"].startswith("q")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in (
        (axes[0], "f_score", "edge F-score (2 px)"),
        (axes[1], "ms_ssim", "MS-SSIM (control images)"),
    ):
        y = [e[key] for e in levels]
        ax.plot([e["bpp"] for e in levels], y, "o-", label="ours (chain coder)")
        for base, style in (("jbig", "s--"), ("zstd", "^:"), ("png1bit", "x:")):
            if all(e[base] for e in levels):
                ax.plot([e[base] * 8 / KODAK_PIXELS for e in levels], y, style, label=f"{base} (same maps)")
        if curve:
            for name, style in (("all", "kd-"), ("thin", "cd--")):
                front = pareto_front([(c[f"{key}_{name}"], c["jbig"]) for c in curve])
                ax.plot(
                    [b * 8 / KODAK_PIXELS for _, b in front],
                    [f for f, _ in front],
                    style,
                    lw=1.2,
                    label=f"JBIG1 own RD curve, unthinned maps ({name} drawings)",
                )
        for e in summary:
            if e["point"].startswith("budget"):
                ax.plot([e["bpp"]], [e[key]], "r*", markersize=12, label=f"ours, {e['point']}")
        ax.axvline(0.0126, color="grey", lw=0.8, ls="--", label="published 0.0126 bpp")
        ax.axvline(0.006, color="green", lw=0.8, ls="--", label="target 0.006 bpp")
        ax.set_xlabel("bits per pixel (sketch only)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Sketch coder ({kind.value}) on Kodak: rate vs fidelity")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
