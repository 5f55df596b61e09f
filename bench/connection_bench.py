"""Idle and slowloris connections against a real decoder process, started the old way and through the launcher.

The same probe runs against each way of starting the service, one after the other:

- ``old``: ``python -m uvicorn --factory <app> --host 127.0.0.1 --port P`` (no header timeout, no cap);
- ``new``: ``python -m decoder_service --app <app>`` (``services/serving/server.py``: header timeout,
  keep-alive timeout, ``max_connections``; ``TEXTSKETCH_SERVER_*`` from the environment or the flags here).

The probe opens ``--idle`` connections that send nothing and ``--slowloris`` connections that send
one byte of a request head every ``--slowloris-interval`` seconds, then watches for ``--observe``
seconds: the server's open file descriptors (``/proc/<pid>/fd``) before, at their peak and at the
end, how many connections the server closed (at once: within 1 s; or later by its timer) and when
the last one was closed, and whether a normal ``GET /health/live`` sent during the flood is served.

    python bench/connection_bench.py --idle 2000 --slowloris 100 --observe 20

Prints a table and writes ``bench/out/connection_bench.json``. The fd limit of this process (and
so of the servers it starts) is raised to its hard limit first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from services.testing.fakes import FAKE_DECODER
from services.testing.servers import start_process

HEAD = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
CLOSED_AT_ONCE_S = 1.0


@dataclass
class Probe:
    launcher: str
    idle: int
    slowloris: int
    fds_before: int
    fds_peak: int
    fds_end_of_window: int
    fds_after_client_closed: int
    closed_at_once: int
    closed_by_timer: int
    still_open: int
    seconds_until_all_closed: float | None
    probe_during_flood: str
    observe_s: float


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < needed:
        print(f"warning: the fd limit {hard} is below the {needed} descriptors this run needs", file=sys.stderr)
    return hard


def server_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed(sock: socket.socket) -> bool:
    """True once the server closed ``sock`` (EOF or reset); drains whatever it sent."""
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def probe_request(url: str) -> str:
    try:
        return str(httpx.get(f"{url}/health/live", timeout=5).status_code)
    except httpx.HTTPError as error:
        return type(error).__name__


def run_probe(service, launcher: str, args) -> Probe:
    pid = service.process.pid
    time.sleep(0.5)  # the readiness probes' connections are gone
    fds_before = server_fds(pid)
    socks: list[socket.socket] = []
    for i in range(args.idle + args.slowloris):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        try:
            sock.connect(("127.0.0.1", service.port))
        except OSError as error:  # backlog full or refused: count it as closed at once
            print(f"{launcher}: connection {i} failed: {error}", file=sys.stderr)
        sock.setblocking(False)
        socks.append(sock)
    start = time.monotonic()
    slow = set(socks[args.idle:])
    sent = dict.fromkeys(slow, 0)
    open_at: dict[socket.socket, float | None] = dict.fromkeys(socks)
    fds_peak, next_byte, probe = fds_before, start, None
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            selector.register(sock, selectors.EVENT_READ)
        while time.monotonic() - start < args.observe and any(t is None for t in open_at.values()):
            now = time.monotonic()
            if now >= next_byte:
                for sock in slow:
                    if open_at[sock] is None:
                        try:
                            sock.send(HEAD[sent[sock] % len(HEAD): sent[sock] % len(HEAD) + 1])
                            sent[sock] += 1
                        except OSError:
                            pass
                next_byte = now + args.slowloris_interval
            for key, _ in selector.select(timeout=0.05):
                if closed(key.fileobj):
                    open_at[key.fileobj] = time.monotonic() - start
                    selector.unregister(key.fileobj)
            fds_peak = max(fds_peak, server_fds(pid))
            if probe is None and now - start >= 1.5:  # after the at-once closes, before the timers
                probe = probe_request(service.url)
        fds_end = server_fds(pid)
    for sock in socks:
        sock.close()
    time.sleep(1.0)
    times = [t for t in open_at.values() if t is not None]
    still_open = len(socks) - len(times)
    return Probe(
        launcher=launcher, idle=args.idle, slowloris=args.slowloris, fds_before=fds_before, fds_peak=fds_peak,
        fds_end_of_window=fds_end, fds_after_client_closed=server_fds(pid),
        closed_at_once=sum(1 for t in times if t < CLOSED_AT_ONCE_S),
        closed_by_timer=sum(1 for t in times if t >= CLOSED_AT_ONCE_S), still_open=still_open,
        seconds_until_all_closed=round(max(times), 2) if times and not still_open else None,
        probe_during_flood=probe or "not sent", observe_s=args.observe)


def table(probes: list[Probe]) -> str:
    lines = ["| launcher | idle + slowloris | server fds before / peak / end of window / after client closed "
             "| closed at once (<1 s) | closed by timeout | still open | all closed after | GET during flood |",
             "|---|---|---|---|---|---|---|---|"]
    for p in probes:
        until = f"{p.seconds_until_all_closed} s" if p.seconds_until_all_closed is not None else f"not in {p.observe_s:g} s"
        lines.append(f"| {p.launcher} | {p.idle} + {p.slowloris} | {p.fds_before} / {p.fds_peak} / {p.fds_end_of_window}"
                     f" / {p.fds_after_client_closed} | {p.closed_at_once} | {p.closed_by_timer} | {p.still_open}"
                     f" | {until} | {p.probe_during_flood} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--idle", type=int, default=2000, help="connections that send nothing")
    parser.add_argument("--slowloris", type=int, default=0, help="connections sending one header byte at a time")
    parser.add_argument("--slowloris-interval", type=float, default=0.3, help="seconds between their bytes")
    parser.add_argument("--observe", type=float, default=20.0, help="seconds to watch after opening them")
    parser.add_argument("--launchers", nargs="+", choices=("old", "new"), default=["old", "new"])
    parser.add_argument("--model", choices=("fake", "tiny"), default="tiny",
                        help="fake: the decoder app over a fake model; tiny: the real decoder, tiny profile")
    parser.add_argument("--header-timeout", type=float, default=None, help="TEXTSKETCH_SERVER_HEADER_TIMEOUT_S (new)")
    parser.add_argument("--max-connections", type=int, default=None, help="TEXTSKETCH_SERVER_MAX_CONNECTIONS (new)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "connection_bench.json")
    args = parser.parse_args()

    fd_limit = raise_fd_limit(args.idle + args.slowloris + 256)
    work = Path(tempfile.mkdtemp(prefix="connection-bench-"))
    env = {"TEXTSKETCH_CACHE_DIR": os.environ.get("TEXTSKETCH_CACHE_DIR", str(work / "cache")),
           "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]"}
    if args.header_timeout is not None:
        env["TEXTSKETCH_SERVER_HEADER_TIMEOUT_S"] = str(args.header_timeout)
    if args.max_connections is not None:
        env["TEXTSKETCH_SERVER_MAX_CONNECTIONS"] = str(args.max_connections)
    target = FAKE_DECODER if args.model == "fake" else "decoder_service.app:create_app"
    probes = []
    for launcher in args.launchers:
        service = start_process(target, env, work, service="decoder_service", plain_uvicorn=launcher == "old")
        try:
            service.wait_ready(300)
            probes.append(run_probe(service, launcher, args))
            assert service.process.poll() is None, f"{launcher}: the server died:\n{service.log()[-2000:]}"
        finally:
            service.stop()

    print(table(probes))
    result = {"command": " ".join(sys.argv), "model": args.model, "fd_limit": fd_limit,
              "server_env": {k: v for k, v in env.items() if k.startswith("TEXTSKETCH_SERVER_")},
              "probes": [asdict(p) for p in probes]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
