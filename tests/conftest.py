"""Test-wide setup: offline hub, a private cache folder for tiny models and tokenizer files.

Tests read images from the repository only (``examples/``, see tests/paths.py), never from beside it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Must be set before transformers/diffusers look at the hub: a missing model
# would otherwise retry the network for ~30 s instead of failing at once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One cache for the whole run (tiny models are built once and loaded back by
# from_pretrained); kept out of the user's home. CI may point it elsewhere.
os.environ.setdefault("TEXTSKETCH_CACHE_DIR", str(Path(tempfile.gettempdir()) / "textsketch-test-cache"))

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests (full-size models, minutes, GBs) run only with TEXTSKETCH_SLOW_TESTS=1."""
    if os.environ.get("TEXTSKETCH_SLOW_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="slow test: set TEXTSKETCH_SLOW_TESTS=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
