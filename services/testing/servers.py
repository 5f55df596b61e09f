"""Running the services for tests and benchmarks: in-process over ASGI, or as real uvicorn processes.

``serving(app)`` runs an app's lifespan and yields an httpx client over the ASGI
transport. ``start_process`` starts ``python -m uvicorn --factory <target>`` on a
free 127.0.0.1 port (``start_service`` for the encoder or decoder app);
``ServiceProcess.wait_ready`` polls ``/health/ready``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess  # nosec B404 - starts this project's own apps
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]  # a source checkout; processes start there so the apps import


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
    """A uvicorn process serving one app on 127.0.0.1."""

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

    def wait_listening(self, timeout_s: float = 120.0) -> float:
        """Seconds until the port answers HTTP at all (ready or not)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                httpx.get(f"{self.url}/health/live", timeout=1)
                return time.monotonic() - start
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError(f"{self.name} not listening after {timeout_s} s")

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


def start_process(target: str, env: dict[str, str], log_dir: Path, *, port: int | None = None,
                  uvicorn_args: Sequence[str] = (), log_level: str = "warning") -> ServiceProcess:
    """``python -m uvicorn --factory <target>`` on 127.0.0.1 (tiny profile unless ``env`` says otherwise)."""
    port = port or free_port()
    log_path = Path(log_dir) / f"{target.split(':')[0].replace('.', '_')}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TEXTSKETCH_PROFILE": "tiny", **env}
    command = [sys.executable, "-m", "uvicorn", "--factory", target, "--host", "127.0.0.1", "--port", str(port),
               "--log-level", log_level, *uvicorn_args]
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    cwd = REPO if (REPO / "decoder_service").is_dir() else None
    process = subprocess.Popen(  # nosec B603 - a fixed argv: this Python, uvicorn, the given app factory
        command, cwd=cwd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServiceProcess(target, port, process, log_path)


def start_service(service: str, env: dict[str, str], log_dir: Path, *, port: int | None = None,
                  uvicorn_args: Sequence[str] = ()) -> ServiceProcess:
    """Start ``encoder_service`` or ``decoder_service`` (the real app factory) as a uvicorn process."""
    return start_process(f"{service}.app:create_app", env, log_dir, port=port, uvicorn_args=uvicorn_args)
