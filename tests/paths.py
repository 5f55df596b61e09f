"""Where the tests find things: the repository, its golden files, and the Kodak images beside it (optional)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
KODAK = Path(os.environ.get("TEXTSKETCH_KODAK_DIR", REPO.parent / "shared" / "data" / "kodak"))
