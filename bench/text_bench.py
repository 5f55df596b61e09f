"""Text coder benchmark: bits per token and bytes per prompt vs zlib and brotli.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python bench/text_bench.py``
Writes ``bench/out/text_bench.csv`` (one row per prompt) and ``text_bench.json`` (summary).

Two prompt sets, both authored here (no dataset is downloaded, and neither set
was used to build the prior, which comes from wordfreq word frequencies):

- *captions*: natural English captions of varied length, in the style of
  COCO/BLIP captions: hand-written sentences plus sentences generated from
  authored subject/action/place/detail lists with a seeded RNG;
- *pez16_rNN*: PEZ-style 16-token prompts drawn directly as CLIP ids (see
  ``pez_style_prompts``; NN = percent of uniformly random vocabulary draws):
  real PEZ output mixes topical words with rare whole words and odd sub-word
  pieces;
- *pez16_cap14*: 16 ids drawn uniformly from the rate-capped PEZ vocabulary
  (whole words costing <= 14 bits, ``scripts/write_pez_vocab.py``), the worst
  case for a PEZ search restricted to it.

Baselines: zlib level 9 of the UTF-8 text (as published; also with the 33-byte
``sys.getsizeof`` Python bytes-object overhead the published size counted) and
brotli quality 11. The text of a PEZ prompt is ``ids_to_text(ids)``.
"""

from __future__ import annotations

import csv
import json
import sys
import zlib
from pathlib import Path

import brotli
import numpy as np

from services.bitstream.text_coder import cost_bits, decode_token_ids, encode_token_ids, rate_capped_vocabulary
from services.prompt.tokenizer import ids_to_text, load_tokenizer, text_to_ids
from services.settings import CodecSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.prompt_sets import HAND_WRITTEN, natural_captions, pez_style_prompts  # noqa: E402

OUT = Path(__file__).parent / "out"
RANDOM_SHARES = (0.7, 0.5, 0.3)
CAP_BITS = 14.0  # the rate-capped PEZ vocabulary (scripts/write_pez_vocab.py), drawn uniformly: its worst case
WIDTH, HEIGHT = 768, 512

def measure(name: str, ids: list[int], text: str) -> dict:
    body = encode_token_ids(ids)
    assert decode_token_ids(body) == ids
    z = zlib.compress(text.encode("utf-8"), 9)
    return {
        "set": name,
        "tokens": len(ids),
        "chars": len(text),
        "ours_bytes": len(body),
        "ours_ideal_bits": round(cost_bits(ids), 2),
        "zlib_bytes": len(z),
        "zlib_pyobj_bytes": sys.getsizeof(z),
        "brotli_bytes": len(brotli.compress(text.encode("utf-8"), quality=11)),
        "text": text,
    }


def summarise(rows: list[dict]) -> dict:
    tokens = sum(r["tokens"] for r in rows)
    out = {"prompts": len(rows), "mean_tokens": tokens / len(rows)}
    for key in ("ours_bytes", "zlib_bytes", "zlib_pyobj_bytes", "brotli_bytes"):
        total = sum(r[key] for r in rows)
        out[f"{key}_per_prompt"] = total / len(rows)
        out[f"{key}_bits_per_token"] = 8 * total / tokens
    out["ours_ideal_bits_per_token"] = sum(r["ours_ideal_bits"] for r in rows) / tokens
    out["ours_max_bytes"] = max(r["ours_bytes"] for r in rows)
    out["ours_bpp_768x512"] = 8 * out["ours_bytes_per_prompt"] / (WIDTH * HEIGHT)
    out["zlib_pyobj_bpp_768x512"] = 8 * out["zlib_pyobj_bytes_per_prompt"] / (WIDTH * HEIGHT)
    return out


def main() -> None:
    tokenizer = load_tokenizer(CodecSettings())
    rows = [measure("captions", text_to_ids(c, tokenizer), c) for c in natural_captions()]
    for share in RANDOM_SHARES:
        name = f"pez16_r{round(share * 100)}"
        prompts = pez_style_prompts(tokenizer, random_share=share)
        rows += [measure(name, ids, ids_to_text(ids, tokenizer)) for ids in prompts]
    capped = rate_capped_vocabulary(CAP_BITS)
    rng = np.random.default_rng(0)
    for _ in range(300):
        ids = [int(capped[i]) for i in rng.integers(len(capped), size=16)]
        rows.append(measure(f"pez16_cap{CAP_BITS:g}", ids, ids_to_text(ids, tokenizer)))
    sets = ["captions"] + [f"pez16_r{round(s * 100)}" for s in RANDOM_SHARES] + [f"pez16_cap{CAP_BITS:g}"]
    summary = {name: summarise([r for r in rows if r["set"] == name]) for name in sets}
    captions = [r for r in rows if r["set"] == "captions"]
    summary["captions_hand_written"] = summarise(captions[: len(HAND_WRITTEN)])
    summary["captions_generated"] = summarise(captions[len(HAND_WRITTEN) :])
    sets[1:1] = ["captions_hand_written", "captions_generated"]
    summary["targets"] = {
        **{f"{n}_bits_per_token<=12": summary[n]["ours_bytes_bits_per_token"] <= 12 for n in sets[:3]},
        **{f"{name}_mean_bytes<=30": summary[name]["ours_bytes_per_prompt"] <= 30 for name in sets[3:]},
    }
    OUT.mkdir(exist_ok=True)
    with open(OUT / "text_bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (OUT / "text_bench.json").write_text(json.dumps(summary, indent=1))
    header = f"{'set':21} {'n':>4} {'tok':>5} | {'ours B':>6} {'b/tok':>5} {'ideal':>5} | {'zlib B':>6} {'b/tok':>5}"
    header += f" | {'zlib+obj':>8} | {'brotli B':>8} {'b/tok':>5} | {'ours bpp':>9}"
    print(header)
    for name in sets:
        s = summary[name]
        print(
            f"{name:21} {s['prompts']:>4} {s['mean_tokens']:5.1f} | {s['ours_bytes_per_prompt']:6.2f} "
            f"{s['ours_bytes_bits_per_token']:5.2f} {s['ours_ideal_bits_per_token']:5.2f} | "
            f"{s['zlib_bytes_per_prompt']:6.2f} {s['zlib_bytes_bits_per_token']:5.2f} | "
            f"{s['zlib_pyobj_bytes_per_prompt']:8.2f} | {s['brotli_bytes_per_prompt']:8.2f} "
            f"{s['brotli_bytes_bits_per_token']:5.2f} | {s['ours_bpp_768x512']:.6f}"
        )
    print("pez16 max bytes:", {name: summary[name]["ours_max_bytes"] for name in sets[3:]})
    print("targets:", summary["targets"])


if __name__ == "__main__":
    main()
