"""Bitstream v1 + constriction sketch bodies (before) against v2 + integer sketch bodies (after), on Kodak.

For each of the 24 Kodak images (768x512, the HED map of its working size cached in
``bench/out/hed/`` like ``bench/sketch_bench.py``; the prompt is the image's caption
from ``bench/kodak_captions.json`` as CLIP token ids):

- payload bytes of PIC, PICS at the default sketch quality (2) and PICS at
  ``target_bytes=295``, before (container v1, sketch body v2) and after (container
  v2, sketch body v3), and the container overhead of each;
- sketch body bytes at every quality level, before and after;
- encode and decode time of the sketch coder (``encode_sketch`` / ``decode_sketch``,
  lossy stage included, HED excluded) per level, before and after, measured in one
  run, alternating which goes first image by image.

    .venv/bin/python bench/bitstream_bench.py            # writes bench/out/bitstream_bench.json

Prints the tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.sketch_bench import load_edges  # noqa: E402
from services.bitstream.container import Mode, Payload  # noqa: E402
from services.bitstream.text_coder import encode_token_ids  # noqa: E402
from services.profiles import ProfileId, SketchKind  # noqa: E402
from services.prompt.tokenizer import load_tokenizer, text_to_ids  # noqa: E402
from services.sketch.coder import decode_sketch, encode_sketch  # noqa: E402
from services.sketch.lossy import QUALITY_LEVELS  # noqa: E402
from services.testing.load import percentile  # noqa: E402

SIDES = {"before": {"container": 1, "sketch": 2}, "after": {"container": 2, "sketch": 3}}
BUDGET = 295
DEFAULT_QUALITY = 2


def measure_image(edges, prompt: bytes, side: str) -> dict:
    versions = SIDES[side]
    height, width = edges.shape
    out: dict = {"sketch": {}}

    def payload(mode, sketch=None):
        return Payload(ProfileId.SD21_HED, width, height, mode, prompt, sketch, version=versions["container"])

    for quality in QUALITY_LEVELS:
        start = time.perf_counter()
        body = encode_sketch(edges, SketchKind.HED, quality=quality, version=versions["sketch"])
        encode_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        decode_sketch(body, width, height)
        decode_ms = (time.perf_counter() - start) * 1000
        out["sketch"][quality] = {"bytes": len(body), "encode_ms": encode_ms, "decode_ms": decode_ms}
        if quality == DEFAULT_QUALITY:
            pics = payload(Mode.PICS, body)
    start = time.perf_counter()
    budget_body = encode_sketch(edges, SketchKind.HED, target_bytes=BUDGET, version=versions["sketch"])
    budget_ms = (time.perf_counter() - start) * 1000
    budget = payload(Mode.PICS, budget_body)
    pic = payload(Mode.PIC)
    out["payloads"] = {
        "pic": {"bytes": len(pic.to_bytes()), "overhead": pic.overhead_bytes},
        "pics_q2": {"bytes": len(pics.to_bytes()), "overhead": pics.overhead_bytes},
        "pics_295": {"bytes": len(budget.to_bytes()), "overhead": budget.overhead_bytes, "encode_ms": budget_ms,
                     "sketch_bytes": len(budget_body)},
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", type=Path, default=REPO.parent / "shared" / "data" / "kodak")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args()
    files = sorted(args.kodak.glob("kodim*.png"))[: args.limit]
    if not files:
        sys.exit(f"no kodim*.png in {args.kodak}; pass --kodak DIR")
    captions = json.loads((REPO / "bench" / "kodak_captions.json").read_text())
    tokenizer = load_tokenizer()
    model_cache = {}

    def model():
        if "hed" not in model_cache:
            from services.sketch.hed import load_hed

            model_cache["hed"] = load_hed()
        return model_cache["hed"]

    results = {side: [] for side in SIDES}
    for index, path in enumerate(files):
        edges, _ = load_edges(path, SketchKind.HED, args.out / "hed", model)
        prompt = encode_token_ids(text_to_ids(captions[path.stem], tokenizer))
        order = list(SIDES) if index % 2 == 0 else list(SIDES)[::-1]  # alternate who runs first
        for side in order:
            results[side].append(measure_image(edges, prompt, side))
        print(f"{path.stem}: done", flush=True)

    summary: dict = {"images": len(files), "sides": SIDES, "payloads": {}, "sketch": {}}
    for name in ("pic", "pics_q2", "pics_295"):
        summary["payloads"][name] = {
            side: {"mean_bytes": statistics.fmean(r["payloads"][name]["bytes"] for r in results[side]),
                   "max_bytes": max(r["payloads"][name]["bytes"] for r in results[side]),
                   "overhead": sorted({r["payloads"][name]["overhead"] for r in results[side]})}
            for side in SIDES}
    for side in SIDES:
        budget_rows = [r["payloads"]["pics_295"] for r in results[side]]
        summary["payloads"]["pics_295"][side]["encode_ms_p50"] = percentile([r["encode_ms"] for r in budget_rows], 50)
        summary["payloads"]["pics_295"][side]["sketch_mean_bytes"] = statistics.fmean(
            r["sketch_bytes"] for r in budget_rows)
    for quality in QUALITY_LEVELS:
        summary["sketch"][quality] = {
            side: {"mean_bytes": statistics.fmean(r["sketch"][quality]["bytes"] for r in results[side]),
                   "encode_ms_p50": percentile([r["sketch"][quality]["encode_ms"] for r in results[side]], 50),
                   "decode_ms_p50": percentile([r["sketch"][quality]["decode_ms"] for r in results[side]], 50)}
            for side in SIDES}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bitstream_bench.json").write_text(json.dumps(summary, indent=1))

    print(f"\nKodak {len(files)} images, mean payload bytes (before: container v1 + sketch v2, after: v2 + v3)")
    print(f"{'payload':<10} {'before':>8} {'after':>8} {'change':>8}  overhead before -> after")
    for name, row in summary["payloads"].items():
        b, a = row["before"]["mean_bytes"], row["after"]["mean_bytes"]
        print(f"{name:<10} {b:8.1f} {a:8.1f} {100 * (a / b - 1):+7.2f}%  {row['before']['overhead']} -> "
              f"{row['after']['overhead']}")
    print("\nsketch body per quality level (p50 times over the images, ms)")
    print(f"{'q':<3} {'bytes before':>12} {'after':>8} {'change':>8} {'enc before':>10} {'after':>7} "
          f"{'dec before':>10} {'after':>7}")
    for quality, row in summary["sketch"].items():
        b, a = row["before"], row["after"]
        print(f"{quality:<3} {b['mean_bytes']:12.1f} {a['mean_bytes']:8.1f} "
              f"{100 * (a['mean_bytes'] / b['mean_bytes'] - 1):+7.2f}% {b['encode_ms_p50']:10.1f} "
              f"{a['encode_ms_p50']:7.1f} {b['decode_ms_p50']:10.1f} {a['decode_ms_p50']:7.1f}")
    b, a = summary["payloads"]["pics_295"]["before"], summary["payloads"]["pics_295"]["after"]
    print(f"295 {b['sketch_mean_bytes']:12.1f} {a['sketch_mean_bytes']:8.1f} "
          f"{100 * (a['sketch_mean_bytes'] / b['sketch_mean_bytes'] - 1):+7.2f}% {b['encode_ms_p50']:10.1f} "
          f"{a['encode_ms_p50']:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
