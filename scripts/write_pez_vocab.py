"""Write a rate-capped PEZ vocabulary file for ``TEXTSKETCH_PEZ_VOCAB``.

Run: ``.venv/bin/python scripts/write_pez_vocab.py --max-bits 14 --out pez_vocab_14bits.txt``

The file lists the whole-word CLIP ids that the text coder's prior codes in at
most ``--max-bits`` bits each, so every PEZ prompt found over it has a known
worst-case size (printed). The published PEZ searches the whole vocabulary;
restricting it trades search freedom for a guaranteed byte budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from services.bitstream.text_coder import max_body_bytes, rate_capped_vocabulary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bits", type=float, default=14.0, help="largest cost of one token, in bits")
    parser.add_argument("--tokens", type=int, default=16, help="PEZ prompt length, for the printed bound")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    ids = rate_capped_vocabulary(args.max_bits)
    header = f"# {len(ids)} whole-word CLIP ids costing <= {args.max_bits} bits each (scripts/write_pez_vocab.py)\n"
    args.out.write_text(header + "\n".join(map(str, ids)) + "\n", encoding="utf-8")
    bound = max_body_bytes(args.tokens, args.max_bits)
    print(f"wrote {len(ids)} ids to {args.out}; a {args.tokens}-token prompt codes in <= {bound} bytes")


if __name__ == "__main__":
    main()
