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
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sketch_compare import KODAK_PIXELS, baseline_bytes, f_score, jbig_rd_rows, ms_ssim  # noqa: E402
from bench.sketch_report import plot, summarise  # noqa: E402
from services.profiles import SketchKind, working_size
from services.sketch.body import decode_bitmap_body
from services.sketch.coder import decode_sketch, encode_sketch
from services.sketch.edges import canny_edge_map
from services.sketch.lossy import QUALITY_LEVELS, binarise, thin
from services.sketch.render import control_image

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
    from services.sketch.hed import hed_probabilities

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
            from services.sketch.hed import load_hed

            model_cache["hed"] = load_hed()
        return model_cache["hed"]

    hed_ms = []
    if kind is SketchKind.HED:
        from services.sketch.hed import hed_probabilities

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


if __name__ == "__main__":
    main()
