"""Encoder speed per stage on Kodak: the previous compute paths and the current defaults side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/encoder_bench.py                 # 24 Kodak images, ~6 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/encoder_bench.py --images 6 --no-throughput

Two configurations of the same code, one run, images interleaved:

- ``before``: HED in float32 and the captioner as it ran before the fast paths (float32,
  ``BEFORE_CAPTION``);
- ``after``: the current defaults (``TEXTSKETCH_HED_PRECISION=auto``, the caption defaults).

Each Kodak image (768x512, coded at the sd21-hed working size 768x512) is encoded in PICS
and PIC mode with ``services.codec.encode_image``, which times its stages (resize, caption
= prompt, HED = edges, sketch = lossy stage + coding + check decode). The lossy stage and
the coding alone are timed on the ``after`` edge map. Caption model: ``--caption-model``
(default ``random-blip-base``: a full-size BLIP-base with random weights, the compute of
``Salesforce/blip-image-captioning-base``; point it at the real model where it is cached).

Also printed: the sketch agreement of the fast HED path (every image x quality level:
F@2px of the decoded sketch against the float32 one, body bytes), the caption agreement
(before vs after captions), and encoder-service throughput (real HTTP, the launcher) at
client concurrency 1 and 4 for both configurations. Writes ``bench/out/encoder_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.bitstream.container import Mode  # noqa: E402
from services.codec import EncodeOptions, encode_image, image_working_size  # noqa: E402
from services.devices import available_cpus  # noqa: E402
from services.eval.caption_agreement import CaptionAgreement, CaptionPair  # noqa: E402
from services.eval.sketch_agreement import MAX_BYTES_CHANGE, MIN_F_SCORE, sketch_agreement  # noqa: E402
from services.imaging import resize  # noqa: E402
from services.settings import CodecSettings  # noqa: E402
from services.sketch.body import encode_bitmap_body  # noqa: E402
from services.sketch.hed import hed_edge_map, resolve_precision  # noqa: E402
from services.sketch.lossy import lossy_bitmap  # noqa: E402
from services.testing.load import percentile, post_all  # noqa: E402
from services.testing.servers import start_service  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
KODAK = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak"
PROFILE = "sd21-hed"
# The caption settings as they were before the fast paths (full precision, 40 new tokens).
BEFORE_CAPTION = {"caption_runtime": "fp32", "caption_max_new_tokens": 40}
STAGES = ("resize", "prompt", "edges", "sketch")
STAGE_NAMES = {"prompt": "caption", "edges": "HED", "sketch": "sketch (lossy+coding+check)"}


def configurations(caption_model: str, cache_dir: Path) -> dict[str, CodecSettings]:
    unknown = set(BEFORE_CAPTION) - set(CodecSettings.model_fields)
    if unknown:  # CodecSettings ignores unknown keys: "before" would silently be "after"
        raise SystemExit(f"BEFORE_CAPTION names settings CodecSettings does not have: {sorted(unknown)}")
    common = {"profile": PROFILE, "prompt_source": "caption", "caption_model": caption_model, "cache_dir": cache_dir}
    return {
        "before": CodecSettings(**common, hed_precision="fp32", **BEFORE_CAPTION),
        "after": CodecSettings(**common),
    }


def stats(values: list[float]) -> str:
    return f"{percentile(values, 50):6.3f} {percentile(values, 90):6.3f}"


def time_stages(images: list[tuple[str, Image.Image]], configs: dict[str, CodecSettings]) -> dict:
    """Per configuration and mode: each stage's seconds per image, and the captions (token ids)."""
    times = {name: {mode.name: {s: [] for s in (*STAGES, "total")} for mode in Mode} for name in configs}
    prompts = {name: [] for name in configs}
    for name, settings in configs.items():  # warm-up: model loads are not timed
        encode_image(images[0][1], settings, EncodeOptions(mode=Mode.PICS))
    for label, image in images:
        for name, settings in configs.items():
            for mode in (Mode.PICS, Mode.PIC):
                start = time.perf_counter()
                result = encode_image(image, settings, EncodeOptions(mode=mode))
                total = time.perf_counter() - start
                row = times[name][mode.name]
                for stage in STAGES:
                    row[stage].append(result.stage_seconds.get(stage, 0.0))
                row["total"].append(total)
                if mode is Mode.PICS:
                    prompts[name].append(result.prompt_ids)
        print(f"  {label}: " + "  ".join(
            f"{n} PICS {times[n]['PICS']['total'][-1]:.2f} s" for n in configs), flush=True)
    return {"times": times, "prompts": prompts}


def sketch_check(images: list[tuple[str, Image.Image]], configs: dict[str, CodecSettings]) -> dict:
    """Fast HED path against float32 on every image and level; the lossy stage and coding timed alone."""
    rows, lossy_s, coding_s = [], [], []
    quality = configs["after"].sketch_quality
    working_size = image_working_size(configs["after"])
    for label, image in images:
        working = resize(image, *working_size(*image.size))
        reference = hed_edge_map(working, configs["before"])
        fast = hed_edge_map(working, configs["after"])
        for row in sketch_agreement(reference, fast):
            rows.append({"image": label, "quality": row.quality, "f_score": row.f_score,
                         "reference_bytes": row.reference_bytes, "fast_bytes": row.fast_bytes,
                         "bytes_change": row.bytes_change, "agrees": row.agrees})
        start = time.perf_counter()
        bits, _ = lossy_bitmap(fast, "hed", quality)
        lossy_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        encode_bitmap_body(bits, quality)
        coding_s.append(time.perf_counter() - start)
    return {"levels": rows, "lossy_s": lossy_s, "coding_s": coding_s}


def throughput(images: list[tuple[str, Image.Image]], configs: dict[str, CodecSettings], requests: int,
               log_dir: Path) -> dict:
    """Images per second through the encoder service (launcher, real HTTP) at client concurrency 1 and 4:
    each configuration with the default layout (encodes at once x torch threads from the available cores),
    and ``after`` also with two encodes of one thread each."""
    bodies = []
    for _, image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        bodies.append(buffer.getvalue())
    bodies = [bodies[i % len(bodies)] for i in range(requests)]
    runs = [("before", {}), ("after", {}),
            ("after 2x1", {"TEXTSKETCH_ENCODER_MAX_CONCURRENT_ENCODES": "2", "TEXTSKETCH_ENCODER_TORCH_THREADS": "1"})]
    results = {}
    for name, layout in runs:
        settings = configs[name.split()[0]]
        env = {f"TEXTSKETCH_{key.upper()}": str(value) for key, value in settings.model_dump().items()
               if key in {"profile", "prompt_source", "caption_model", "cache_dir", "hed_precision",
                          *BEFORE_CAPTION}}
        service = start_service("encoder_service", {**env, **layout}, log_dir)
        try:
            service.wait_ready(600)
            url = f"{service.url}/encode?mode=pics"
            for concurrency in (1, 4):
                start = time.perf_counter()
                answers = asyncio.run(post_all(url, bodies, concurrency=concurrency, timeout_s=300,
                                               headers={"Content-Type": "image/png"}, honour_retry_after=True))
                elapsed = time.perf_counter() - start
                ok = sum(a.status == 200 for a in answers)
                results[f"{name} c{concurrency}"] = {"ok": ok, "sent": len(bodies), "seconds": elapsed,
                                                     "images_per_s": ok / elapsed,
                                                     "latency_p50_s": percentile([a.seconds for a in answers], 50)}
                print(f"  {name} at concurrency {concurrency}: {ok}/{len(bodies)} ok, {ok / elapsed:.2f} images/s",
                      flush=True)
        finally:
            service.stop()
    return results


def report(timed: dict, sketch: dict, captions: dict, served: dict | None, configs: dict) -> None:
    times = timed["times"]
    print("\nper-stage seconds, p50 p90 (PICS unless noted)")
    print(f"{'stage':<30} {'before':>13} {'after':>13}")
    for stage in STAGES:
        print(f"{STAGE_NAMES.get(stage, stage):<30} {stats(times['before']['PICS'][stage])} "
              f"{stats(times['after']['PICS'][stage])}")
    print(f"{'  lossy stage alone':<30} {'':>13} {stats(sketch['lossy_s'])}")
    print(f"{'  coding alone':<30} {'':>13} {stats(sketch['coding_s'])}")
    for mode in ("PICS", "PIC"):
        print(f"{'total ' + mode:<30} {stats(times['before'][mode]['total'])} {stats(times['after'][mode]['total'])}")
    levels = sketch["levels"]
    f = [r["f_score"] for r in levels]
    change = [abs(r["bytes_change"]) for r in levels]
    print(f"\nsketch agreement, HED {resolve_precision(configs['after'].hed_precision).value} vs fp32 over "
          f"{len(levels)} image x level pairs: F@2px min {min(f):.3f} mean {statistics.fmean(f):.3f}; "
          f"|bytes change| max {max(change):.1%} mean {statistics.fmean(change):.2%}; "
          f"{sum(r['agrees'] for r in levels)}/{len(levels)} within F >= {MIN_F_SCORE} and {MAX_BYTES_CHANGE:.0%}")
    print(f"prompt agreement (the CLIP ids sent; runtime and token cap both changed, the runtime alone: "
          f"bench/caption_bench.py), after vs before over {captions['n']} images: {captions['summary']}")
    if served:
        print("\nencoder service throughput (PICS, images/s)")
        for key, row in served.items():
            print(f"  {key:<15} {row['images_per_s']:.2f}  ({row['ok']}/{row['sent']} ok, "
                  f"latency p50 {row['latency_p50_s']:.2f} s)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", type=Path, default=KODAK, help="folder of Kodak PNGs (default ../shared/data/kodak)")
    parser.add_argument("--images", type=int, default=24, help="how many Kodak images (default 24)")
    parser.add_argument("--caption-model", default="random-blip-base",
                        help="caption model id or folder (default: full-size BLIP-base with random weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: available cores)")
    parser.add_argument("--requests", type=int, default=12, help="requests per throughput run (default 12)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the encoder-service throughput runs")
    parser.add_argument("--cache-dir", type=Path, default=None, help="model cache folder (default: the codec's)")
    args = parser.parse_args(argv)

    paths = sorted(args.kodak.glob("*.png"))[: args.images]
    if not paths:
        parser.error(f"no PNG images in {args.kodak}")
    torch.set_num_threads(args.threads or available_cpus())
    cache_dir = args.cache_dir or CodecSettings().cache_dir
    configs = configurations(args.caption_model, cache_dir)
    images = [(p.stem, Image.open(p).convert("RGB")) for p in paths]
    print(f"{len(images)} images, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.2f}, "
          f"HED after = {resolve_precision(configs['after'].hed_precision).value}", flush=True)

    timed = time_stages(images, configs)
    sketch = sketch_check(images, configs)
    agreement = CaptionAgreement(tuple(CaptionPair(a, b) for a, b in zip(timed["prompts"]["before"],
                                                                          timed["prompts"]["after"])))
    captions = {"n": len(agreement.pairs), "summary": agreement.summary()}
    served = None
    if not args.no_throughput:
        print("encoder service throughput ...", flush=True)
        with tempfile.TemporaryDirectory() as log_dir:
            served = throughput(images, configs, args.requests, Path(log_dir))
    report(timed, sketch, captions, served, configs)
    OUT.mkdir(exist_ok=True)
    out = OUT / "encoder_bench.json"
    out.write_text(json.dumps({"times": timed["times"], "sketch": sketch, "captions": captions, "throughput": served,
                               "load_average_end": os.getloadavg()[0]}, indent=1, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
