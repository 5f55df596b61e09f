"""Helpers for the service tests: a fake reconstructor, payloads, in-process apps and real processes.

``ServiceProcess`` / ``start_service`` start ``python -m uvicorn`` on a free
127.0.0.1 port and wait for /health/ready; the reliability work reuses them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

from services.bitstream import Mode, Payload
from services.profiles import ProfileId

REPO = Path(__file__).resolve().parents[1]
KODAK = Path(os.environ.get("TEXTSKETCH_KODAK_DIR", REPO.parent / "shared" / "data" / "kodak"))


class FakeReconstructor:
    """Stands in for ``services.reconstruction.Reconstructor``: records batches, draws flat images.

    The colour of each image is a function of the job's seed, so tests can tell
    candidates apart. ``gate`` holds batches; ``fail`` makes the next batch raise.
    """

    def __init__(self, profile, settings=None, *, delay_s: float = 0.0) -> None:
        self.profile = profile
        self.device = "cpu"
        self.delay_s = delay_s
        self.batches: list[list] = []
        self.warmed: list[int] = []
        self.loaded = False
        self.fail = False
        self.gate = threading.Event()
        self.gate.set()
        self.batch_started = threading.Event()
        self.load_delay_s = 0.0

    def load(self) -> None:
        time.sleep(self.load_delay_s)
        self.loaded = True

    def warmup(self, batch_sizes: Sequence[int]) -> None:
        self.warmed = list(batch_sizes)

    def decode_batch(self, jobs):
        self.batch_started.set()
        self.gate.wait(30)
        self.batches.append(list(jobs))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("fake model failure")
        return [Image.new("RGB", (job.width, job.height), seed_colour(job.seed)) for job in jobs]


def seed_colour(seed: int) -> tuple[int, int, int]:
    return (seed % 251, (seed >> 8) % 251, (seed >> 16) % 251)


def pic_payload(token_ids: Sequence[int] = (320, 1929, 530, 518, 2390), width: int = 96, height: int = 64,
                profile: int = int(ProfileId.TINY), candidate: int = 0) -> bytes:
    """A real PIC payload (real text coder) for the given token ids."""
    from services.text_coding import encode_token_ids

    return Payload(profile, width, height, Mode.PIC, encode_token_ids(list(token_ids)), None, candidate).to_bytes()


@contextlib.asynccontextmanager
async def serving(app, *, wait_ready: bool = True):
    """Run an app's lifespan and yield an httpx client over the ASGI transport."""
    async with app.router.lifespan_context(app):
        runtime = getattr(app.state, "runtime", None)
        if wait_ready and runtime is not None:
            await runtime.wait_ready(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            yield client


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    """A uvicorn process serving one of the apps on 127.0.0.1."""

    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout_s} s:\n{self.log()[-4000:]}")

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30.0) -> int:
        self.terminate()
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(10)


def start_service(service: str, env: dict[str, str], log_dir: Path, *, port: int | None = None,
                  uvicorn_args: Sequence[str] = ()) -> ServiceProcess:
    """Start ``encoder_service`` or ``decoder_service`` with ``python -m uvicorn --factory``."""
    port = port or free_port()
    log_path = Path(log_dir) / f"{service}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **env}
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{service}.app:create_app",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *uvicorn_args]
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    process = subprocess.Popen(command, cwd=REPO, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServiceProcess(service, port, process, log_path)
