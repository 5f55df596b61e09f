"""Where the tests find things: the repository, its golden files and its example images."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = REPO / "examples"  # three Kodak photos at 384x256 (examples/README.md)
