"""Rate/quality evaluation over a folder of images (default: Kodak in ../shared/data/kodak).

Same options as ``textsketch eval`` (see ``--help``); writes per-image CSV/JSON,
``summary.md``, ``summary.json``, RD plots and reconstructions to ``--out``
(default ``bench/out/eval``). Example (CPU, tiny decoder, rates + harness check):

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval.py --profile tiny-hed --device cpu \
        --prompt-source given --captions bench/kodak_captions.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.eval.run import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
