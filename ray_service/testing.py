"""A small local Ray cluster with textsketch on Ray Serve, for tests and benchmarks (127.0.0.1 only).

``LocalServe`` starts Ray in this process (``ray.init``, a few CPUs, no dashboard), deploys Serve
configs with the real command, ``serve run --non-blocking <config.yaml>``, waits for replicas and
readiness, and shuts the cluster down (only its own processes). ``serve_config`` writes a config
from ``deploy/ray/serve-cpu.yaml`` with the test's port, fake model and replica counts.
``request_all`` sends requests concurrently and keeps each answer's status, headers and body.
"""

from __future__ import annotations

import asyncio
import copy
import subprocess  # nosec B404
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "deploy" / "ray" / "serve-cpu.yaml"
APP = "textsketch"  # the encoder's application (route /)
DECODER_APP = "decoder"  # route /decoder
FAKE_DECODER = "services.testing.fakes:create_fake_decoder_app"


def serve_config(port: int, *, decoder: dict | None = None, args: dict | None = None, env: dict | None = None,
                 base: Path = CPU_CONFIG, cpus_per_replica: float = 0.25) -> dict:
    """``base`` with the proxy on ``port``, the decoder deployment's fields replaced by ``decoder``, extra
    decoder builder ``args`` and ``env``; every replica asks for ``cpus_per_replica`` so several fit on 2 cores."""
    config = copy.deepcopy(yaml.safe_load(base.read_text()))
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    for app in config["applications"]:
        app["runtime_env"]["env_vars"] = {**app["runtime_env"]["env_vars"],
                                          **{k: str(v) for k, v in (env or {}).items()}}
        if app["name"] == DECODER_APP:
            app["args"] = {**app.get("args", {}), **(args or {})}
        for deployment in app["deployments"]:
            deployment["ray_actor_options"]["num_cpus"] = cpus_per_replica
            if deployment["name"] == "Decoder" and decoder is not None:
                if "num_replicas" in decoder:
                    deployment.pop("autoscaling_config", None)
                deployment.update(decoder)
    return config


@dataclass(frozen=True)
class Answer:
    index: int
    status: int  # 0: no HTTP answer
    seconds: float
    headers: dict
    body: bytes
    error: str | None  # the JSON error code, or the client-side exception

    def typed_refusal(self) -> bool:
        """429/503 with Retry-After and our JSON error body: back-pressure the client can act on."""
        return self.status in (429, 503) and "retry-after" in self.headers and self.error not in (None, "not_json")


async def post_payload(client: httpx.AsyncClient, url: str, index: int, body: bytes, params: dict) -> Answer:
    """POST one msgpack body; the Answer (status 0 and the exception when no HTTP answer came), never raises."""
    start = time.perf_counter()
    try:
        response = await client.post(url, content=body, params=params, headers={"Content-Type": "application/msgpack"})
    except httpx.HTTPError as exc:
        return Answer(index, 0, time.perf_counter() - start, {}, b"", repr(exc))
    error = None
    if response.status_code != 200:
        try:
            error = response.json().get("error")
        except ValueError:
            error = "not_json"
    return Answer(index, response.status_code, time.perf_counter() - start, dict(response.headers),
                  response.content, error)


async def request_all(url: str, requests: list[tuple[str, bytes, dict]], *, concurrency: int,
                      timeout_s: float = 60.0, retries: int = 0) -> list[Answer]:
    """POST each ``(path, body, params)`` with at most ``concurrency`` in flight; one Answer each, never raises.

    ``retries``: a typed 429/503 is sent again after its ``Retry-After`` (at most 2 s here), up to this many
    times, as the project's client does; the last answer counts."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, index: int, path: str, body: bytes, params: dict) -> Answer:
        for _ in range(retries):
            answer = await attempt(client, index, path, body, params)
            if not answer.typed_refusal():
                return answer
            await asyncio.sleep(min(float(answer.headers["retry-after"]), 2.0))
        return await attempt(client, index, path, body, params)

    async def attempt(client: httpx.AsyncClient, index: int, path: str, body: bytes, params: dict) -> Answer:
        async with semaphore:
            return await post_payload(client, f"{url}{path}", index, body, params)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i, *r) for i, r in enumerate(requests))))


class LocalServe:
    """A Ray cluster started by this process, with Serve configs deployed by the ``serve`` command."""

    def __init__(self, workdir: Path, num_cpus: int = 2) -> None:
        import ray

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        from services.testing.servers import free_port

        self.metrics_port = free_port()  # Ray's Prometheus export of this node (ray start --metrics-export-port)
        self.context = ray.init(num_cpus=num_cpus, include_dashboard=False, namespace="textsketch",
                                log_to_driver=False, configure_logging=False, _metrics_export_port=self.metrics_port)
        self.address = self.context.address_info["gcs_address"]
        self._configs = 0

    def deploy(self, config: dict, timeout_s: float = 180.0) -> None:
        """``serve run --non-blocking`` the config (a first deploy or a redeploy), without waiting for it."""
        self._configs += 1
        path = self.workdir / f"serve-{self._configs}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        serve_cli = Path(sys.executable).parent / "serve"
        # A fixed argv: Ray's own CLI on the config written above.
        result = subprocess.run(  # noqa: S603  # nosec B603
            [str(serve_cli), "run", "--non-blocking", "--address", self.address, str(path)],
            capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
        if result.returncode != 0:
            raise RuntimeError(f"serve run failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")

    def replicas(self, deployment: str = "Decoder") -> dict[str, int]:
        """Replica states of a deployment: ``{"RUNNING": 2, "STARTING": 1, ...}``."""
        from ray import serve

        app = serve.status().applications.get(DECODER_APP if deployment == "Decoder" else APP)
        if app is None or deployment not in app.deployments:
            return {}
        return {str(getattr(k, "value", k)): n for k, n in app.deployments[deployment].replica_states.items() if n}

    def app_status(self) -> str:
        """``RUNNING`` when both applications run, else the first other status (or ``""``: not deployed)."""
        from ray import serve

        applications = serve.status().applications
        statuses = [str(getattr(a.status, "value", a.status)) for name, a in applications.items()
                    if name in (APP, DECODER_APP)]
        if len(statuses) < 2:
            return ""
        return next((s for s in statuses if s != "RUNNING"), "RUNNING")

    def wait_for(self, condition, timeout_s: float, what: str, poll_s: float = 0.25) -> float:
        """Poll ``condition()`` until true; the seconds it took. TimeoutError naming ``what`` otherwise."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if condition():
                return time.monotonic() - start
            time.sleep(poll_s)
        raise TimeoutError(f"{what} not reached within {timeout_s} s (decoder replicas {self.replicas()}, "
                           f"app {self.app_status()})")

    def wait_running(self, url: str, decoders: int | None = None, timeout_s: float = 240.0) -> float:
        """Until the app is RUNNING with ``decoders`` running decoder replicas (exactly, none starting or
        stopping) and the encoder answers ready through the proxy."""

        def ready() -> bool:
            if self.app_status() != "RUNNING":
                return False
            if decoders is not None and self.replicas() != {"RUNNING": decoders}:
                return False
            try:
                return httpx.get(f"{url}/health/ready", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        return self.wait_for(ready, timeout_s, f"app running with {decoders} decoder replicas")

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()


class BackgroundLoad:
    """Requests sent round-robin from ``requests`` by ``concurrency`` clients on a thread until ``stop()``."""

    def __init__(self, url: str, requests: list[tuple[str, bytes, dict]], *, concurrency: int,
                 timeout_s: float = 60.0) -> None:
        import threading

        self.url, self.requests, self.concurrency, self.timeout_s = url, requests, concurrency, timeout_s
        self.answers: list[tuple[float, Answer]] = []  # (monotonic time of the answer, answer)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="load", daemon=True)

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def stop(self) -> list[Answer]:
        self._stop.set()
        self._thread.join(self.timeout_s + 30)
        return [answer for _, answer in self.answers]

    def since(self, moment: float) -> list[Answer]:
        return [answer for at, answer in list(self.answers) if at >= moment]

    async def _main(self) -> None:
        counter = iter(range(10**9))
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, limits=limits) as client:

            async def worker() -> None:
                while not self._stop.is_set():
                    index = next(counter)
                    path, body, params = self.requests[index % len(self.requests)]
                    answer = await post_payload(client, f"{self.url}{path}", index, body, params)
                    self.answers.append((time.monotonic(), answer))
                    if answer.status != 200:
                        await asyncio.sleep(min(float(answer.headers.get("retry-after", 0.2)), 1.0))

            await asyncio.gather(*(worker() for _ in range(self.concurrency)))
