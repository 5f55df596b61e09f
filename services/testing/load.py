"""Load generation and figures for the serving benchmarks and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` by nearest rank; nan for no values."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of metric ``name`` (all label sets) in a Prometheus exposition."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def parse_histogram_counts(text: str, name: str) -> dict[float, float]:
    """Cumulative bucket counts ``{le: count}`` of one histogram in a /metrics exposition."""
    counts: dict[float, float] = {}
    prefix = f"{name}_bucket{{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        labels, value = line[len(prefix):].rsplit("} ", 1)
        le = next(part.split("=", 1)[1].strip('"') for part in labels.split(",") if part.startswith("le="))
        counts[float("inf") if le == "+Inf" else float(le)] = float(value)
    return counts


@dataclass(frozen=True)
class Answer:
    index: int
    status: int  # 0 = no HTTP answer (connection error / timeout)
    seconds: float
    error: str | None  # the JSON "error" code, or the client-side exception
    detail: str | None
    retry_after: str | None


async def post_all(url: str, bodies: Sequence[bytes], *, concurrency: int, timeout_s: float = 30.0,
                   headers: dict[str, str] | None = None, honour_retry_after: bool = False) -> list[Answer]:
    """POST every body to ``url`` with at most ``concurrency`` in flight; never raises, one Answer each.

    ``honour_retry_after``: a client slot that got a ``Retry-After`` waits that long before it sends
    its next body (polite clients; each body is still sent once)."""
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    sent_headers = {"Content-Type": "application/msgpack", **(headers or {})}

    async def one(client, index: int, body: bytes) -> Answer:
        async with semaphore:
            start = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=sent_headers)
            except httpx.HTTPError as exc:
                return Answer(index, 0, time.perf_counter() - start, repr(exc), None, None)
            elapsed = time.perf_counter() - start
            error = detail = None
            if response.status_code != 200:
                try:
                    message = response.json()
                    error, detail = message.get("error"), message.get("detail")
                except ValueError:
                    error, detail = "not_json", response.text[:200]
            retry_after = response.headers.get("retry-after")
            if honour_retry_after and retry_after:
                await asyncio.sleep(float(retry_after))
            return Answer(index, response.status_code, elapsed, error, detail, retry_after)

    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, i, b) for i, b in enumerate(bodies))))


def proc_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` memory field in KiB (``VmRSS``, ``VmHWM``; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss(pid: int) -> int:
    """Reset the process's peak RSS mark (``VmHWM`` := current RSS, Linux); the current RSS in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return proc_kib(pid, "VmRSS")
