"""PIC/PICS rate with PEZ-length (16-token) prompts, without running PEZ.

The rate of a payload does not depend on the decoder, and the prompt's share
depends only on the token ids. PEZ against ViT-H-14 cannot run here (no
weights), so this script measures the exact payload size for prompt ids that
stand in for PEZ output:

- ``uniform16``: 16 ids drawn uniformly from the 49,406 non-special CLIP ids
  (seeded; ``--draws`` per image). PEZ prompts are full of rare sub-words, so
  this is the pessimistic case for a frequency prior;
- ``words16``: 16 ids drawn uniformly from the whole-word tokens (those ending
  in ``</w>``, about 2/3 of the vocabulary): PEZ's nearest-token projection
  mostly lands on whole words, rare ones included, so this is the closer proxy;
- ``captions``: the given captions of ``--captions`` (if any), for comparison.

PICS adds the sketch bytes that an earlier ``bench/eval.py`` run measured per
image (``--sketch-csv``, its ``per_image.csv``), so PICS here is the exact
payload that run's sketch would make with a 16-token prompt. Image sizes come
from the image files. Prints a table and writes ``bench/out/prompt_rate.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from statistics import fmean

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.bitstream.container import Mode, Payload
from services.bitstream.text_coder import encode_token_ids
from services.bitstream.vocabulary import BOS_ID
from services.eval.run import default_image_dir, list_images
from services.profiles import get_profile
from services.prompt.tokenizer import load_tokenizer, text_to_ids


def payload_bytes(profile: int, width: int, height: int, prompt: bytes, sketch_bytes: int | None) -> int:
    sketch = None if sketch_bytes is None else b"\0" * sketch_bytes
    mode = Mode.PIC if sketch is None else Mode.PICS
    return len(Payload(profile, width, height, mode, prompt, sketch).to_bytes())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", default=str(default_image_dir()))
    parser.add_argument("--profile", default="sd21-hed")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--draws", type=int, default=50)
    parser.add_argument("--captions", help="JSON image stem -> text (bench/kodak_captions.json)")
    parser.add_argument("--sketch-csv", help="per_image.csv of a bench/eval.py run with PICS")
    parser.add_argument("--out", default="bench/out/prompt_rate.json")
    args = parser.parse_args()

    profile = int(get_profile(args.profile).id)
    sketches = {}
    if args.sketch_csv:
        with open(args.sketch_csv, newline="") as handle:
            for row in csv.DictReader(handle):
                if row["method"] == "textsketch" and row["mode"] == "pics":
                    sketches[Path(row["image"]).stem] = int(row["sketch_bytes"])
    captions = json.loads(Path(args.captions).read_text()) if args.captions else {}
    tokenizer = load_tokenizer()
    words = np.array([i for i, t in enumerate(tokenizer.convert_ids_to_tokens(list(range(BOS_ID)))) if t.endswith("</w>")])
    rng = np.random.default_rng(0)

    rows = []
    for path in list_images(args.images):
        with Image.open(path) as image:
            width, height = image.size
        pixels = width * height
        draws = [encode_token_ids(rng.integers(0, BOS_ID, size=args.tokens).tolist()) for _ in range(args.draws)]
        row = {"image": path.name, "width": width, "height": height,
               "uniform_prompt_bytes": fmean(len(d) for d in draws)}
        word_draws = [encode_token_ids(rng.choice(words, size=args.tokens).tolist()) for _ in range(args.draws)]
        row["words_prompt_bytes"] = fmean(len(d) for d in word_draws)
        row["pic_uniform_bytes"] = fmean(payload_bytes(profile, width, height, d, None) for d in draws)
        row["pic_words_bytes"] = fmean(payload_bytes(profile, width, height, d, None) for d in word_draws)
        if path.stem in sketches:
            row["sketch_bytes"] = sketches[path.stem]
            row["pics_uniform_bytes"] = fmean(payload_bytes(profile, width, height, d, sketches[path.stem]) for d in draws)
            row["pics_words_bytes"] = fmean(payload_bytes(profile, width, height, d, sketches[path.stem]) for d in word_draws)
        if path.stem in captions:
            ids = text_to_ids(captions[path.stem], tokenizer)
            body = encode_token_ids(ids)
            row.update(caption_tokens=len(ids), caption_prompt_bytes=len(body),
                       pic_caption_bytes=payload_bytes(profile, width, height, body, None))
        for key in [k for k in row if k.endswith("_bytes") and k.startswith("pic")]:
            row[key.replace("_bytes", "_bpp")] = row[key] * 8 / pixels
        rows.append(row)

    print(f"{len(rows)} images, profile {args.profile}, {args.tokens}-token uniform prompts ({args.draws} draws per image)")
    summary = {}
    for key in [k for k in rows[0] if k not in ("image", "width", "height")]:
        values = [r[key] for r in rows if key in r]
        summary[key] = fmean(values)
        print(f"  mean {key:<24} {summary[key]:.6g}")
    bits_per_token = summary["uniform_prompt_bytes"] * 8 / args.tokens
    print(f"  uniform prompt body: {bits_per_token:.2f} bits/token (log2 49406 = {np.log2(BOS_ID):.2f}); "
          f"whole-word prompt body: {summary['words_prompt_bytes'] * 8 / args.tokens:.2f} bits/token "
          f"({len(words)} whole-word ids)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
