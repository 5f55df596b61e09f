"""Connection limits against real decoder processes started through the launcher (fake model).

``python -m decoder_service`` with a 1 s request-head timeout: idle connections and slowloris
senders are closed, keep-alive clients and slow requests are not, and connections beyond
``max_connections`` are refused (503 at the cap, closed beyond it) while the server keeps serving.
Both HTTP implementations uvicorn offers (httptools, h11) get the same checks.
"""

from __future__ import annotations

import os
import selectors
import socket
import time

import httpx
import pytest

from services.testing.fakes import FAKE_DECODER
from services.testing.payloads import pic_payload
from services.testing.servers import start_process

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT_S = 1.0
SLACK_S = 1.5  # scheduling on a loaded 2-core machine
HEAD = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def server_env(tmp_path, **server) -> dict[str, str]:
    env = {"TEXTSKETCH_CACHE_DIR": str(tmp_path / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
           "TEXTSKETCH_SERVER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S), "TEXTSKETCH_FAKE_DELAY_S": "1.5"}
    env.update({f"TEXTSKETCH_SERVER_{key.upper()}": str(value) for key, value in server.items()})
    return env


@pytest.fixture(scope="module", params=["httptools", "h11"])
def decoder(request, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp(f"connections-{request.param}")
    service = start_process(FAKE_DECODER, server_env(tmp_path, http=request.param), tmp_path)
    try:
        service.wait_ready(60)
        yield service
    finally:
        service.stop()


def server_fds(service) -> int:
    return len(os.listdir(f"/proc/{service.process.pid}/fd"))


def connect(service) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=5)


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed ``sock`` (EOF or reset); reads whatever it sent first."""
    try:
        while data := sock.recv(65536):
            if not data:
                break
        return True
    except ConnectionResetError:
        return True
    except (BlockingIOError, TimeoutError):
        return False


def wait_all_closed(socks: list[socket.socket], timeout_s: float) -> float:
    """Seconds until the server closed every socket; fails if some are still open after ``timeout_s``."""
    start = time.monotonic()
    open_socks = set(socks)
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while open_socks and time.monotonic() - start < timeout_s:
            for key, _ in selector.select(timeout=0.1):
                if closed_by_server(key.fileobj):
                    selector.unregister(key.fileobj)
                    open_socks.discard(key.fileobj)
    assert not open_socks, f"{len(open_socks)} of {len(socks)} connections still open after {timeout_s} s"
    return time.monotonic() - start


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), body


def test_idle_connections_are_closed_after_the_header_timeout(decoder):
    before = server_fds(decoder)
    socks = [connect(decoder) for _ in range(200)]
    try:
        elapsed = wait_all_closed(socks, HEADER_TIMEOUT_S + SLACK_S)
    finally:
        for sock in socks:
            sock.close()
    assert elapsed >= HEADER_TIMEOUT_S - 0.2  # closed by the timer, not refused
    assert httpx.get(f"{decoder.url}/health/live", timeout=5).status_code == 200
    assert server_fds(decoder) <= before + 2


@pytest.mark.parametrize("after_response", [False, True], ids=["new", "after-a-response"])
def test_a_slowloris_sender_is_closed_after_the_header_timeout(decoder, after_response):
    with connect(decoder) as sock:
        if after_response:  # a byte received cancels uvicorn's keep-alive timer; ours stays armed
            sock.sendall(HEAD)
            assert read_response(sock)[0] == 200
        sock.setblocking(False)
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < HEADER_TIMEOUT_S + SLACK_S:
            try:
                sock.send(HEAD[sent % len(HEAD): sent % len(HEAD) + 1])  # one byte every 0.3 s, never a full head
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.3)
            if closed_by_server(sock):
                break
        else:
            pytest.fail(f"a slowloris connection sending {sent} bytes was not closed")
        elapsed = time.monotonic() - start
    assert HEADER_TIMEOUT_S - 0.2 <= elapsed <= HEADER_TIMEOUT_S + SLACK_S and sent < len(HEAD)


def test_a_keep_alive_client_with_short_pauses_and_a_slow_request_keeps_its_connection(decoder):
    """Pauses below both timeouts, and a decode that runs longer than the header timeout (1.5 s fake model)."""
    with connect(decoder) as sock:
        for _ in range(4):
            sock.sendall(HEAD)
            assert read_response(sock)[0] == 200
            time.sleep(HEADER_TIMEOUT_S / 2)
        payload = pic_payload()
        sock.sendall(b"POST /decode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/msgpack\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        status, body = read_response(sock)
        assert status == 200 and body.startswith(b"\x89PNG")
        sock.sendall(HEAD)
        assert read_response(sock)[0] == 200


def test_connections_beyond_the_cap_are_refused_and_the_server_keeps_serving(tmp_path):
    cap, header_timeout_s = 8, 3.0
    env = {**server_env(tmp_path, max_connections=cap), "TEXTSKETCH_SERVER_HEADER_TIMEOUT_S": str(header_timeout_s)}
    service = start_process(FAKE_DECODER, env, tmp_path)
    try:
        service.wait_ready(60)
        time.sleep(0.2)  # the readiness probes' connections are gone
        baseline = server_fds(service)
        idle = [connect(service) for _ in range(cap - 1)]
        deadline = time.monotonic() + 5
        while server_fds(service) < baseline + cap - 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the server accepted them all

        with connect(service) as at_cap:  # the cap-th connection: uvicorn's limit_concurrency answers 503
            at_cap.sendall(HEAD)
            status, body = read_response(at_cap)
            assert (status, body) == (503, b"Service Unavailable")
            assert closed_by_server(at_cap)

            idle.append(connect(service))  # the cap is full again with idle connections
            while server_fds(service) < baseline + cap and time.monotonic() < deadline:
                time.sleep(0.02)
            with connect(service) as beyond:  # one more: closed at once, unanswered
                start = time.monotonic()
                beyond.settimeout(header_timeout_s / 2)
                try:
                    beyond.sendall(HEAD)
                    assert beyond.recv(65536) == b""
                except (BrokenPipeError, ConnectionResetError):
                    pass
                assert time.monotonic() - start < header_timeout_s / 2

        wait_all_closed(idle, header_timeout_s + SLACK_S)  # the header timeout frees the slots
        with httpx.Client(timeout=10) as client:
            assert client.get(f"{service.url}/health/live").status_code == 200
            decoded = client.post(f"{service.url}/decode", content=pic_payload(),
                                  headers={"Content-Type": "application/msgpack"})
            assert decoded.status_code == 200
    finally:
        service.stop()
    assert "max_connections is 8" in service.log()
