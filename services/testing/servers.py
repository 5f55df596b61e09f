"""Running the services for tests and benchmarks: in-process over ASGI, or as real uvicorn processes.

``serving(app)`` runs an app's lifespan and yields an httpx client over the ASGI
transport. ``start_process`` starts an app factory on a free 127.0.0.1 port through the
service launcher, ``python -m decoder_service --app <target>`` (or ``encoder_service``), the
same command scripts and images use (``start_service`` for the real encoder or decoder app;
``plain_uvicorn=True`` starts ``python -m uvicorn --factory <target>`` instead, for
comparisons); ``ServiceProcess.wait_ready`` polls ``/health/ready``.
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


SERVICES = ("encoder_service", "decoder_service")


def launcher_package(target: str) -> str:
    """The service whose launcher (and settings) serve ``target``: its own package, or the decoder for its fakes."""
    package = target.split(".")[0]
    if package in SERVICES:
        return package
    if "decoder" in target.split(":")[-1]:
        return "decoder_service"
    raise ValueError(f"cannot tell which service serves {target}; pass service='encoder_service' or 'decoder_service'")


def start_process(target: str, env: dict[str, str], log_dir: Path, *, port: int | None = None,
                  uvicorn_args: Sequence[str] = (), log_level: str = "warning", service: str | None = None,
                  plain_uvicorn: bool = False) -> ServiceProcess:
    """Serve the app factory ``target`` on 127.0.0.1 (tiny profile unless ``env`` says otherwise).

    Started with ``python -m <service> --app <target>`` (``service`` defaults to the target's own
    package; fakes of the decoder are served by the decoder's launcher). ``plain_uvicorn=True``
    starts ``python -m uvicorn --factory <target> *uvicorn_args`` instead: the old way, without the
    launcher's timeouts and connection limits (``uvicorn_args`` only apply then).
    """
    if uvicorn_args and not plain_uvicorn:
        raise ValueError("uvicorn_args only apply with plain_uvicorn=True; the launcher takes its settings "
                         "from TEXTSKETCH_SERVER_* (services/serving/server.py)")
    port = port or free_port()
    log_path = Path(log_dir) / f"{target.split(':')[0].replace('.', '_')}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "TEXTSKETCH_PROFILE": "tiny", **env}
    if plain_uvicorn:
        command = [sys.executable, "-m", "uvicorn", "--factory", target, *uvicorn_args]
    else:
        command = [sys.executable, "-m", service or launcher_package(target), "--app", target]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", log_level]
    log_file = open(log_path, "wb")  # noqa: SIM115 - lives as long as the process
    cwd = REPO if (REPO / "decoder_service").is_dir() else None
    process = subprocess.Popen(  # nosec B603 - fixed argv: this Python running a service launcher (or uvicorn) on an app factory
        command, cwd=cwd, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServiceProcess(target, port, process, log_path)


def start_service(service: str, env: dict[str, str], log_dir: Path, *, port: int | None = None,
                  uvicorn_args: Sequence[str] = (), plain_uvicorn: bool = False) -> ServiceProcess:
    """Start ``encoder_service`` or ``decoder_service`` (the real app factory) through its launcher."""
    return start_process(f"{service}.app:create_app", env, log_dir, port=port, uvicorn_args=uvicorn_args,
                         service=service, plain_uvicorn=plain_uvicorn)
