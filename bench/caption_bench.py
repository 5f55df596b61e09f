"""Caption speed and agreement on Kodak: fp32 against the fast caption runtimes, side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/caption_bench.py                  # 24 images, ~3 min on 2 cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/caption_bench.py --images 6 --runtimes int8-bf16 --budget-check

Each Kodak image is resized to the profile's working size (as ``services.codec.encode_image``
does; 768x512 for Kodak) and captioned by every runtime in turn (images interleaved, so a busy
neighbour slows all runtimes alike), greedy, KV cache on, ``--max-new-tokens`` (default: the
setting, 20). Per runtime: caption seconds (processor + generate) p50/p90, the image encoder
alone (timed in a separate call) and the decoder (generate minus image encoder); then each fast
runtime's captions against fp32's (``services.eval.caption_agreement``). Caption model:
``--caption-model`` (default ``random-blip-base``: a full-size BLIP-base with random weights,
the compute of ``Salesforce/blip-image-captioning-base``; its captions are arbitrary words, so
the agreement says how often rounding flips a greedy choice, not whether captions stay good:
that needs the real weights, on a GPU host or wherever they are cached).

``--budget-check`` also lets the last runtime run to 75 tokens and reports how many caption-model tokens it
takes to fill the 75 CLIP tokens of the prompt. Writes ``bench/out/caption_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from services.bitstream.vocabulary import MAX_PROMPT_TOKENS  # noqa: E402
from services.codec import image_working_size  # noqa: E402
from services.eval.caption_agreement import CaptionAgreement, CaptionPair  # noqa: E402
from services.imaging import resize  # noqa: E402
from services.prompt.caption import Captioner, CaptionRuntime, image_encoder  # noqa: E402
from services.prompt.tokenizer import load_tokenizer, text_to_ids  # noqa: E402
from services.settings import CodecSettings  # noqa: E402
from services.testing.load import percentile  # noqa: E402
from services.tiny.encoders import resolve_model_id  # noqa: E402

KODAK = Path("/work/shared/data/kodak")
OUT = Path(__file__).resolve().parent / "out"


def time_runtime(captioner: Captioner, image: Image.Image, max_new_tokens: int) -> dict:
    """One image: caption ids and seconds for the whole caption, the image encoder alone and the decoder."""
    start = time.perf_counter()
    inputs = captioner.processor(images=image, return_tensors="pt")
    with torch.inference_mode():
        prepared = time.perf_counter()
        out = captioner.model.generate(**inputs, do_sample=False, num_beams=1, use_cache=True,
                                       max_new_tokens=max_new_tokens)
        done = time.perf_counter()
        image_encoder(captioner.model)[1](pixel_values=inputs["pixel_values"])
        encoder_s = time.perf_counter() - done
    special = set(captioner.processor.tokenizer.all_special_ids)
    ids = [t for t in out[0].tolist() if t not in special]
    return {"ids": ids, "caption_s": done - start, "encoder_s": encoder_s,
            "decoder_s": max(0.0, done - prepared - encoder_s), "new_tokens": out.shape[1] - 1}


def tokens_to_fill_prompt(captioner: Captioner, image: Image.Image, tokenizer) -> tuple[int, int] | None:
    """(caption-model tokens, CLIP tokens of them) at the first prefix reaching 75 CLIP tokens, or None if the
    75-token caption stays shorter."""
    ids = captioner.caption_ids(image, MAX_PROMPT_TOKENS)
    for n in range(1, len(ids) + 1):
        clip = len(text_to_ids(captioner.processor.decode(ids[:n], skip_special_tokens=True), tokenizer))
        if clip >= MAX_PROMPT_TOKENS:
            return n, clip
    return None


def summary(values: list[float]) -> str:
    return f"{percentile(values, 50):6.3f} {percentile(values, 90):6.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kodak", type=Path, default=KODAK, help="folder of Kodak PNGs")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--caption-model", default="random-blip-base")
    parser.add_argument("--runtimes", nargs="+", default=["bf16", "int8", "int8-bf16"],
                        choices=[r.value for r in CaptionRuntime if r not in (CaptionRuntime.FP32, CaptionRuntime.AUTO)])
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the caption_max_new_tokens setting")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the bench sets them, not the library)")
    parser.add_argument("--budget-check", action="store_true", help="also measure tokens to fill 75 CLIP tokens")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    settings = CodecSettings(caption_model=args.caption_model, prompt_source="caption")
    max_new_tokens = args.max_new_tokens or settings.caption_max_new_tokens
    working_size = image_working_size(settings)
    paths = sorted(args.kodak.glob("*.png"))[: args.images]
    if not paths:
        parser.error(f"no PNG images in {args.kodak}")
    images = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        images.append((path.stem, resize(image, *working_size(*image.size))))
    model_id = resolve_model_id(args.caption_model, "caption", settings.cache_dir)
    names = ["fp32", *args.runtimes]
    captioners = {name: Captioner(model_id, "cpu", runtime=name) for name in names}
    print(f"{len(images)} images at {images[0][1].size[0]}x{images[0][1].size[1]}, {args.caption_model}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, max_new_tokens {max_new_tokens}, "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for captioner in captioners.values():  # warm-up, not timed
        time_runtime(captioner, images[0][1], max_new_tokens)

    rows = {name: [] for name in names}
    for label, image in images:
        for name in names:
            rows[name].append(time_runtime(captioners[name], image, max_new_tokens))
        print(f"  {label}: " + "  ".join(f"{n} {rows[n][-1]['caption_s']:.2f} s" for n in names), flush=True)
    load_after = os.getloadavg()

    print(f"\ncaption seconds per image (p50 p90), {len(images)} images, load average after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"{'runtime':10s} {'caption':>13s} {'image enc.':>13s} {'decoder':>13s}  new tokens")
    for name in names:
        r = rows[name]
        print(f"{name:10s} {summary([x['caption_s'] for x in r])} {summary([x['encoder_s'] for x in r])} "
              f"{summary([x['decoder_s'] for x in r])}  {percentile([x['new_tokens'] for x in r], 50)}")
    result = {"model": args.caption_model, "max_new_tokens": max_new_tokens, "threads": args.threads,
              "images": [label for label, _ in images], "load_after": load_after,
              "times": {n: [{k: v for k, v in x.items() if k != "ids"} for x in rows[n]] for n in names},
              "captions": {n: [x["ids"] for x in rows[n]] for n in names}, "agreement": {}}
    for name in args.runtimes:
        agreement = CaptionAgreement(tuple(CaptionPair(tuple(a["ids"]), tuple(b["ids"]))
                                           for a, b in zip(rows["fp32"], rows[name])))
        print(f"agreement {name} vs fp32: {agreement.summary()}")
        result["agreement"][name] = {"identical": agreement.identical, "n": len(agreement.pairs),
                                     "mean_edit_distance": agreement.mean_edit_distance,
                                     "max_edit_distance": agreement.max_edit_distance,
                                     "mean_common_prefix": agreement.mean_common_prefix,
                                     "distances": [p.edit_distance for p in agreement.pairs]}
    OUT.mkdir(exist_ok=True)
    (OUT / "caption_bench.json").write_text(json.dumps(result, indent=1))  # again below with the budget check
    if args.budget_check:
        tokenizer = load_tokenizer(settings)
        fastest = captioners[names[-1]]  # the count depends on the vocabularies, not on the runtime
        fills = [tokens_to_fill_prompt(fastest, image, tokenizer) for _, image in images]
        reached = [f[0] for f in fills if f]
        print(f"caption-model tokens to fill {MAX_PROMPT_TOKENS} CLIP tokens ({names[-1]}, {len(reached)} of {len(fills)} "
              f"captions reach it): min {min(reached, default=0)} p50 {percentile(reached, 50)} "
              f"max {max(reached, default=0)}")
        result["tokens_to_fill_prompt"] = fills
        (OUT / "caption_bench.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT / 'caption_bench.json'}")


if __name__ == "__main__":
    main()
