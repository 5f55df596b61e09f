"""Load benchmark of the decoder service: batching on vs off, and the scheduler's own overhead.

Two parts, both loopback only and bounded in request count and time:

1. ``scheduler``: the ``BatchScheduler`` in-process with a no-op model; per
   request, (submit -> result) minus the model's own time = the scheduler's
   overhead (event loop hops, bucketing, the worker-thread hand-off).
2. ``http``: a real ``uvicorn`` decoder process (tiny profile) driven by an
   async load generator at several concurrencies, once with batching
   (``--max-batch-size``) and once with ``max_batch_size=1``: throughput,
   p50/p99 latency, batch-size histogram (from the service's /metrics).

    python bench/load_bench.py --part all
    python bench/load_bench.py --part http --concurrency 1 8 32 --requests-per-level 32 --time-limit 90

Prints a table and writes ``bench/out/load_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx

from decoder_service.scheduler import BatchScheduler, SchedulerConfig
from services.testing.load import parse_histogram_counts, percentile
from services.testing.payloads import pic_payload
from services.testing.servers import start_service


# -- part 1: scheduler overhead ---------------------------------------------------------------
async def scheduler_overhead(n_requests: int, concurrency: int, max_batch_size: int) -> dict:
    model_time: dict[int, float] = {}
    batch_times: list[float] = []

    def no_op(jobs: list[int]) -> list[int]:
        start = time.perf_counter()
        out = list(jobs)
        elapsed = time.perf_counter() - start
        batch_times.append(elapsed)
        for job in jobs:
            model_time[job] = elapsed
        return out

    scheduler = BatchScheduler(no_op, SchedulerConfig(max_batch_size=max_batch_size, max_queue_delay_s=0.0,
                                                      max_queue_size=n_requests + 1))
    await scheduler.start()
    overheads: list[float] = []
    counter = iter(range(n_requests))

    async def client() -> None:
        for job in counter:
            start = time.perf_counter()
            await scheduler.run("bucket", [job])
            overheads.append(time.perf_counter() - start - model_time[job])

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    await scheduler.close()
    # Per request: wall time not spent in the model, divided by the requests (what the
    # scheduler costs the worker). Latency minus model time also includes, for c > 1,
    # the time a request waits for the other requests ahead of it.
    return {
        "requests": n_requests, "concurrency": concurrency, "max_batch_size": max_batch_size,
        "overhead_per_request_ms": (wall - sum(batch_times)) / n_requests * 1000,
        "latency_minus_model_mean_ms": statistics.fmean(overheads) * 1000,
        "latency_minus_model_p50_ms": percentile(overheads, 50) * 1000,
        "latency_minus_model_p99_ms": percentile(overheads, 99) * 1000,
        "throughput_rps": n_requests / wall,
    }


# -- part 2: HTTP load against a real tiny decoder ------------------------------------------------
async def drive(url: str, concurrency: int, n_requests: int, time_limit_s: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    issued = 0
    stop_at = time.monotonic() + time_limit_s

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency + 4)) as client:
        before = parse_histogram_counts((await client.get(f"{url}/metrics")).text, "textsketch_batch_size")

        async def worker() -> None:
            nonlocal issued
            while issued < n_requests and time.monotonic() < stop_at:
                issued += 1
                body = pic_payload(token_ids=(320 + issued % 500, 530))
                start = time.perf_counter()
                response = await client.post(f"{url}/decode", content=body,
                                             headers={"Content-Type": "application/msgpack"})
                latencies.append(time.perf_counter() - start)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        after = parse_histogram_counts((await client.get(f"{url}/metrics")).text, "textsketch_batch_size")

    histogram, previous = {}, 0.0
    for le in sorted(after):
        cumulative = after[le] - before.get(le, 0.0)
        if cumulative - previous:
            histogram["+Inf" if le == float("inf") else str(int(le))] = cumulative - previous
        previous = cumulative
    ok = statuses.get(200, 0)
    return {
        "concurrency": concurrency, "requests": len(latencies), "ok": ok, "statuses": statuses,
        "wall_s": wall, "throughput_rps": ok / wall if wall else float("nan"),
        "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99),
        "batch_size_histogram (le: batches)": histogram,
    }


def http_part(args) -> list[dict]:
    results = []
    cache_dir = Path(args.cache_dir or Path(tempfile.gettempdir()) / "textsketch-bench-cache")
    log_dir = Path(tempfile.mkdtemp(prefix="load-bench-"))
    for label, batch in (("batching", args.max_batch_size), ("no-batching", 1)):
        env = {
            "TEXTSKETCH_PROFILE": "tiny", "TEXTSKETCH_CACHE_DIR": str(cache_dir),
            "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": str(batch),
            "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": str(args.max_queue_delay_ms),
            "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "256",
            "TEXTSKETCH_DECODER_REQUEST_TIMEOUT_S": "600",
            "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": json.dumps(sorted({1, batch})),
        }
        service = start_service("decoder_service", env, log_dir)
        try:
            service.wait_ready(600)
            for concurrency in args.concurrency:
                n = max(args.min_requests, min(args.requests_per_level, concurrency * args.rounds))
                row = asyncio.run(drive(service.url, concurrency, n, args.time_limit))
                row["mode"] = label
                row["max_batch_size"] = batch
                results.append(row)
                print(f"{label:>11} c={concurrency:>2}: {row['ok']:>3} ok in {row['wall_s']:6.1f} s, "
                      f"{row['throughput_rps']:.3f} img/s, p50 {row['p50_s']:.2f} s, p99 {row['p99_s']:.2f} s, "
                      f"batches {row['batch_size_histogram (le: batches)']}", flush=True)
        finally:
            service.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("scheduler", "http", "all"), default="all")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = concurrency x rounds (bounded)")
    parser.add_argument("--requests-per-level", type=int, default=64, help="upper bound of requests per level")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per level before no new requests")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-queue-delay-ms", type=float, default=20.0)
    parser.add_argument("--scheduler-requests", type=int, default=5000)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "load_bench.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    report: dict = {"args": vars(args), "cpu_count": os.cpu_count()}
    if args.part in ("scheduler", "all"):
        rows = []
        for concurrency, batch in ((1, 1), (32, 1), (32, 8)):
            row = asyncio.run(scheduler_overhead(args.scheduler_requests, concurrency, batch))
            rows.append(row)
            print(f"scheduler c={concurrency:>2} batch={batch}: overhead {row['overhead_per_request_ms']:.3f} ms/request; "
                  f"latency minus model p50 {row['latency_minus_model_p50_ms']:.3f} ms, "
                  f"p99 {row['latency_minus_model_p99_ms']:.3f} ms ({row['throughput_rps']:.0f} req/s, no-op model)",
                  flush=True)
        report["scheduler"] = rows
    if args.part in ("http", "all"):
        rows = http_part(args)
        report["http"] = rows
        by = {(r["mode"], r["concurrency"]): r for r in rows}
        ratios = {}
        for concurrency in args.concurrency:
            on, off = by.get(("batching", concurrency)), by.get(("no-batching", concurrency))
            if on and off and off["throughput_rps"]:
                ratios[str(concurrency)] = on["throughput_rps"] / off["throughput_rps"]
                print(f"throughput ratio batching/no-batching at c={concurrency}: {ratios[str(concurrency)]:.2f}x")
        report["throughput_ratio"] = ratios
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
