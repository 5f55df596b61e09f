"""Every benchmark script still imports and builds its command line (they run rarely, so they rot quietly)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from tests.paths import REPO

SCRIPTS = sorted(p.stem for p in (REPO / "bench").glob("*.py"))
HELPERS = {"prompt_sets", "sketch_compare", "sketch_report"}  # imported by the scripts, not run


@pytest.mark.parametrize("name", SCRIPTS)
def test_bench_module_imports(name):
    module = importlib.import_module(f"bench.{name}")
    if name not in HELPERS:
        assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"


@pytest.mark.parametrize("name", ["sketch_bench", "load_bench", "eval", "connection_bench"])
def test_bench_script_help_runs(name):
    result = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage" in result.stdout.lower()
