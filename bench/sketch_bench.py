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
import json
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
from services.sketch_lossy import binarise, thin

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
    rows = []
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
        print(f"{path.stem}: done", flush=True)

    with open(args.out / f"sketch_{kind.value}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, points, hed_ms, len(files), args)
    plot(summary, args.out / f"sketch_{kind.value}_rd.png", kind)


def summarise(rows, points, hed_ms, n_images, args) -> list[dict]:
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
    kind = args.kind
    with open(args.out / f"sketch_{kind}_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    meta = {"images": n_images, "kind": kind, "tolerance_px": args.tolerance, "hed_ms": hed_ms, "points": summary}
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
    if hed_ms:
        print(f"HED network alone: {statistics.fmean(hed_ms):.0f} ms per image (mean of {len(hed_ms)}, wall clock)")
    return summary


def plot(summary, path: Path, kind: SketchKind) -> None:
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
