"""Fit the chain coder's initial counts (``services.sketch.contexts.PRIORS``) on Kodak HED maps.

Codes the lossy maps of the Kodak images at levels 0-3, counts the symbols each
table codes, and prints the integer tables: frequencies scaled to about
``--observations`` symbols x ``INCREMENT`` (at least 1 each); turn tables are
smoothed towards all turns pooled (``--smoothing`` pseudo-observations) because
some turn contexts are rare. It also reports, per level, the bytes with the
shipped tables, with flat tables, and held out: tables fitted on the odd images
coding the even ones and vice versa (the honest estimate of the gain).

    .venv/bin/python bench/sketch_priors.py              # uses the HED maps cached by sketch_bench.py

The tables are part of the wire format: changing ``PRIORS`` needs a new sketch body
version and a regenerated golden sketch (see docs/sketch.md).
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from services.sketch import chain_coder, contexts
from services.sketch.lossy import lossy_bitmap


def fit(maps: list[np.ndarray], observations: int, smoothing: float) -> dict[str, tuple[int, ...]]:
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for bits in maps:
        record: list = []
        chain_coder.encode_bitmap(bits, record=record)
        for name, symbol in record:
            counts[name][symbol] += 1
    pooled = collections.Counter()
    for name, c in counts.items():
        if name.startswith("turn"):
            pooled.update(c)
    pooled_total = sum(pooled.values())
    scale = observations * contexts.INCREMENT
    priors = {}
    for name, shipped in contexts.PRIORS.items():
        c, total = counts[name], sum(counts[name].values())
        if name.startswith("turn"):
            freq = [(c[s] + smoothing * pooled[s] / pooled_total) / (total + smoothing) for s in range(len(shipped))]
        else:
            freq = [c[s] / total if total else 0.0 for s in range(len(shipped))]
        priors[name] = tuple(max(1, round(f * scale)) for f in freq)
    return priors


def coded_bytes(maps: list[np.ndarray], priors: dict[str, tuple[int, ...]]) -> int:
    saved = dict(contexts.PRIORS)
    contexts.PRIORS.update(priors)
    try:
        return sum(len(chain_coder.encode_bitmap(bits)[0]) for bits in maps)
    finally:
        contexts.PRIORS.update(saved)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--maps", type=Path, default=REPO / "bench" / "out" / "hed", help="cached HED maps kodimNN.png")
    parser.add_argument("--levels", type=int, nargs="*", default=[0, 1, 2, 3])
    parser.add_argument("--observations", type=int, default=64)
    parser.add_argument("--smoothing", type=float, default=32.0)
    args = parser.parse_args()
    files = sorted(args.maps.glob("kodim*.png"))
    if not files:
        sys.exit(f"no kodim*.png in {args.maps}: run bench/sketch_bench.py first (it caches the HED maps)")
    edges = {f.stem: np.asarray(Image.open(f)) for f in files}
    maps = {(name, q): lossy_bitmap(e, "hed", q)[0] for name, e in edges.items() for q in args.levels}
    names = sorted(edges)
    odd, even = names[0::2], names[1::2]

    def select(images, levels):
        return [maps[(n, q)] for n in images for q in levels]

    fitted = fit(select(names, args.levels), args.observations, args.smoothing)
    print("PRIORS fitted on", len(names), "images, levels", args.levels)
    for name, table in fitted.items():
        print(f"    {name!r}: {table},")
    print("identical to the shipped PRIORS:", fitted == contexts.PRIORS)
    flat = {name: (1,) * len(table) for name, table in contexts.PRIORS.items()}
    on_odd = fit(select(odd, args.levels), args.observations, args.smoothing)
    on_even = fit(select(even, args.levels), args.observations, args.smoothing)
    print(f"\n{'level':>5} {'flat 1s':>7} {'shipped':>8} {'held out':>9}  (bytes of the coded maps, all images)")
    for q in args.levels:
        held_out = coded_bytes(select(even, [q]), on_odd) + coded_bytes(select(odd, [q]), on_even)
        shipped = coded_bytes(select(names, [q]), contexts.PRIORS)
        print(f"{q:>5} {coded_bytes(select(names, [q]), flat):7d} {shipped:8d} {held_out:9d}")


if __name__ == "__main__":
    main()
