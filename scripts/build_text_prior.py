"""Regenerate ``services/bitstream/data/text_prior.npz``, the text coder's static integer prior.

Run: ``HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_text_prior.py``

The prior has two contexts over the 49,408 CLIP token ids: *word start* (the
first token, or the previous token ended a word with ``</w>``) and *inside a
word* (the previous token did not end a word). Each context mixes three parts:

1. ``WORDFREQ_SHARE``: English word frequencies from ``wordfreq`` (top
   ``N_WORDS`` words), each word tokenised with the CLIP tokenizer and its
   frequency added to each of its tokens under that token's context; plus a
   fixed share for the caption punctuation ``,`` and ``.``;
2. ``RANK_SHARE``: a 1/(id + RANK_OFFSET) law over the id order (BPE merge
   order roughly follows corpus frequency), which keeps rare sub-words (typical
   of PEZ prompts) cheaper than a flat floor would;
3. ``UNIFORM_SHARE``: a flat floor, so no id costs more than about
   ``log2(VOCAB_SIZE / UNIFORM_SHARE)`` bits.

The mixture is quantised once, here, to integers (every entry >= 1, each row
summing to ``2**PRIOR_BITS``) and stored as uint32. The coder only ever sees
these integers, so encoder and decoder agree bit for bit whatever the wordfreq,
numpy or platform version; this script's float arithmetic matters only when
the table is regenerated (and then the golden test will say so).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from services.bitstream.vocabulary import VOCAB_SIZE
from services.prompt.tokenizer import load_tokenizer
from services.settings import CodecSettings

N_WORDS = 100_000
WORDFREQ_SHARE = 0.70
RANK_SHARE = 0.20
UNIFORM_SHARE = 0.10
RANK_OFFSET = 500
PUNCTUATION_SHARE = {",": 0.02, ".": 0.01}  # of the word-start context's wordfreq part
PRIOR_BITS = 24
OUT = Path(__file__).resolve().parents[1] / "services" / "bitstream" / "data" / "text_prior.npz"


def word_end_mask(tokenizer) -> np.ndarray:
    tokens = tokenizer.convert_ids_to_tokens(list(range(VOCAB_SIZE)))
    mask = np.array([t.endswith("</w>") for t in tokens], dtype=bool)
    mask[-2:] = True  # <|startoftext|>, <|endoftext|>: the next token starts a word
    return mask


def wordfreq_counts(tokenizer, word_end: np.ndarray) -> np.ndarray:
    import wordfreq

    words = wordfreq.top_n_list("en", N_WORDS)
    freqs = np.array([wordfreq.word_frequency(w, "en") for w in words], dtype=np.float64)
    counts = np.zeros((2, VOCAB_SIZE), dtype=np.float64)
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"]
    for ids, freq in zip(encoded, freqs):
        context = 0
        for token in ids:
            counts[context, token] += freq
            context = 0 if word_end[token] else 1
    for text, share in PUNCTUATION_SHARE.items():
        (token,) = tokenizer(text, add_special_tokens=False)["input_ids"]
        counts[0, token] += share * counts[0].sum()
    return counts


def quantise(p: np.ndarray, total: int) -> np.ndarray:
    """Integers >= 1 summing exactly to ``total``, close to ``p * total`` (largest remainders)."""
    scaled = p / p.sum() * (total - len(p))
    q = np.floor(scaled).astype(np.int64) + 1
    deficit = total - int(q.sum())  # 0 <= deficit < len(p)
    order = np.argsort(-(scaled - np.floor(scaled)), kind="stable")
    q[order[:deficit]] += 1
    if int(q.sum()) != total or q.min() < 1:
        raise RuntimeError("quantisation failed to hit the total")
    return q


def build(settings: CodecSettings | None = None) -> dict[str, np.ndarray]:
    tokenizer = load_tokenizer(settings)
    word_end = word_end_mask(tokenizer)
    counts = wordfreq_counts(tokenizer, word_end)
    ids = np.arange(VOCAB_SIZE, dtype=np.float64)
    rank = 1.0 / (ids + RANK_OFFSET)
    rank /= rank.sum()
    uniform = np.full(VOCAB_SIZE, 1.0 / VOCAB_SIZE)
    rows = []
    for context in range(2):
        wf = counts[context] / counts[context].sum()
        mix = WORDFREQ_SHARE * wf + RANK_SHARE * rank + UNIFORM_SHARE * uniform
        rows.append(quantise(mix, 2**PRIOR_BITS))
    return {"freqs": np.stack(rows).astype(np.uint32), "word_end": word_end.astype(np.uint8)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    tables = build()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **tables)
    f = tables["freqs"].astype(np.float64)
    bits = -np.log2(f / f.sum(axis=1, keepdims=True))
    print(
        f"wrote {args.out} ({args.out.stat().st_size} bytes); max cost {bits.max(axis=1).round(2)} bits, "
        f"min {bits.min(axis=1).round(2)} bits per context"
    )


if __name__ == "__main__":
    main()
