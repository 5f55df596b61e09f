"""The README stays true: its commands, its settings table, and its curl round trip
run against services started the way it says (scripts/serve.sh, as `make serve`)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from services.bitstream.container import parse

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_settings_table_matches_the_settings_classes():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from settings_table import table
    finally:
        sys.path.pop(0)
    between = README.split("<!-- settings-table:start -->\n", 1)[1].split("<!-- settings-table:end -->", 1)[0]
    assert between == table(), "README settings table is stale: run python scripts/settings_table.py"


def readme_curl_commands() -> list[str]:
    block = README.split("The curl commands `make demo` runs:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [c.replace("\\\n", " ") for c in block.strip().split("\ncurl")]
    return [c if c.startswith("curl") else "curl" + c for c in commands]


def test_demo_script_runs_the_readme_curl_commands_verbatim():
    demo = (REPO / "scripts" / "demo.sh").read_text().replace("\\\n", " ")
    demo = demo.replace('@"$IMAGE"', "@examples/kodim23.png")
    for command in readme_curl_commands():
        core = re.sub(r"\s+", " ", command.split(" -o ")[0])
        assert core in re.sub(r"\s+", " ", demo), f"scripts/demo.sh does not run: {core}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "scripts/serve.sh exited early"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {timeout_s} s")


@pytest.mark.e2e
def test_readme_curl_round_trip_against_make_serve(tmp_path):
    encoder_port, decoder_port = free_port(), free_port()
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent),
           "ENCODER_PORT": str(encoder_port), "DECODER_PORT": str(decoder_port), "HF_HUB_OFFLINE": "1"}
    env.pop("TEXTSKETCH_PROFILE", None)  # the README's default: tiny
    serve = subprocess.Popen(["bash", str(REPO / "scripts" / "serve.sh")], cwd=REPO, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{decoder_port}/health/ready", serve)
        wait_ready(f"http://127.0.0.1:{encoder_port}/health/ready", serve)
        workdir = tmp_path / "repo"  # the commands' relative paths, without writing into the checkout
        (workdir / "out").mkdir(parents=True)
        (workdir / "examples").symlink_to(REPO / "examples")
        for command in readme_curl_commands():
            command = command.replace("127.0.0.1:8001", f"127.0.0.1:{encoder_port}")
            command = command.replace("127.0.0.1:8002", f"127.0.0.1:{decoder_port}")
            result = subprocess.run(["bash", "-c", command], cwd=workdir, capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stderr
        payload = parse((workdir / "out" / "kodim23.tsk").read_bytes())
        assert (payload.width, payload.height, payload.mode.name) == (384, 256, "PICS")
        with Image.open(workdir / "out" / "kodim23.decoded.png") as image:
            assert image.size == (384, 256) and image.format == "PNG"
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
