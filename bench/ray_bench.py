"""Ray Serve figures, one run side by side, on a local Ray cluster (127.0.0.1, fake CPU model).

    .venv/bin/python bench/ray_bench.py [--requests 160] [--delay 0.1] [--out bench/out/ray_bench.json]

1. Throughput of the decoder with 1 vs 2 replicas: mixed /decode requests through the encoder
   (deployment handle to the decoder), clients honouring Retry-After.
2. Ray's HTTP proxy overhead per request: GET /health/live of the decoder through the proxy
   (``/decoder/health/live``) vs the plain decoder under its launcher (uvicorn), sequential; p50 / p99.
3. Mean batch fill on a mixed-size workload, 2 replicas: the bucket-affine router vs Ray's default
   power-of-two-choices router. Fill = jobs per batch run / max_batch_size, from each replica's own
   ``textsketch_batch_size`` histogram (``/decoder/metrics`` scraped until every replica answered,
   told apart by ``X-Decoder-Replica``), before/after deltas.

The decoder is the real app, scheduler, bitstream and sketch decoding over the fake model
(``services.testing.fakes``: ``--delay`` seconds per batch whatever its size, like a GPU below
saturation). Prints what else ran on the machine (load average, busiest processes) with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from ray_service.testing import FAKE_DECODER, LocalServe, request_all, serve_config  # noqa: E402
from services.testing.load import metric_sum, percentile  # noqa: E402
from services.testing.payloads import pic_payload, tiny_pics_payload  # noqa: E402
from services.testing.servers import free_port, start_process  # noqa: E402

MAX_BATCH = 4


def mixed(n: int) -> list[tuple[str, bytes, dict]]:
    """Four buckets (three PIC working sizes and a PICS one) interleaved."""
    kinds = [pic_payload(width=96, height=64), pic_payload(width=64, height=96), pic_payload(width=128, height=64),
             tiny_pics_payload()]
    return [("/decode", kinds[i % len(kinds)], {}) for i in range(n)]


def latencies(url: str, n: int) -> dict:
    with httpx.Client(timeout=10) as client:
        for _ in range(20):  # warm the connection and the route
            client.get(url)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            assert client.get(url).status_code == 200
            times.append((time.perf_counter() - start) * 1000)
    return {"p50_ms": round(percentile(times, 50), 2), "p99_ms": round(percentile(times, 99), 2), "n": n}


def throughput(url: str, n: int, concurrency: int) -> dict:
    start = time.perf_counter()
    answers = asyncio.run(request_all(url, mixed(n), concurrency=concurrency, retries=20))
    seconds = time.perf_counter() - start
    ok = sum(a.status == 200 for a in answers)
    return {"requests": n, "ok": ok, "seconds": round(seconds, 2), "requests_per_s": round(ok / seconds, 2),
            "replicas_seen": len({a.headers.get("x-decoder-replica") for a in answers if a.status == 200})}


def replica_metrics(url: str, replicas: int, tries: int = 200) -> dict[str, str]:
    """``/decoder/metrics`` of every replica: scraped through the proxy until ``replicas`` names answered."""
    seen: dict[str, str] = {}
    with httpx.Client(timeout=10) as client:
        for _ in range(tries):
            response = client.get(f"{url}/decoder/metrics")
            seen[response.headers["x-decoder-replica"]] = response.text
            if len(seen) == replicas:
                return seen
    raise RuntimeError(f"only {len(seen)} of {replicas} replicas answered /decoder/metrics")


def batch_totals(url: str, replicas: int) -> dict[str, tuple[float, float]]:
    return {name: (metric_sum(text, "textsketch_batch_size_sum"), metric_sum(text, "textsketch_batch_size_count"))
            for name, text in replica_metrics(url, replicas).items()}


def batch_fill(url: str, n: int, concurrency: int) -> dict:
    before = batch_totals(url, 2)
    run = throughput(url, n, concurrency)
    after = batch_totals(url, 2)
    jobs = sum(after[k][0] - before.get(k, (0, 0))[0] for k in after)
    batches = sum(after[k][1] - before.get(k, (0, 0))[1] for k in after)
    return {"mean_batch": round(jobs / batches, 2), "mean_fill": round(jobs / batches / MAX_BATCH, 3),
            "batches": int(batches), "jobs": int(jobs), "requests_per_s": run["requests_per_s"], "ok": run["ok"]}


def machine() -> dict:
    """Load average and the busiest processes (ps: CPU share over each one's lifetime, command line cut)."""
    busiest = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "busiest": [" ".join(line.split())[:140] for line in busiest.splitlines()[1:8]]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.1, help="fake model seconds per batch")
    parser.add_argument("--latency-requests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ray_bench.json")
    args = parser.parse_args()
    env = {"TEXTSKETCH_FAKE_DELAY_S": str(args.delay), "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": str(MAX_BATCH),
           "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "20", "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "32"}
    report: dict = {"machine_before": machine(), "delay_s": args.delay, "max_batch_size": MAX_BATCH}
    workdir = Path(tempfile.mkdtemp(prefix="ray-bench-"))

    plain = start_process(FAKE_DECODER, {**env, "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]"}, workdir)
    try:
        plain.wait_ready(120)
        report["plain_health_live"] = latencies(f"{plain.url}/health/live", args.latency_requests)
    finally:
        plain.stop()

    cluster = LocalServe(workdir / "ray")
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def deploy(replicas: int, router: str) -> None:
        # A handle keeps the router class it was created with: the marker in both applications' environment
        # restarts the encoder too when the router changes, so its handle to the decoder uses the new one.
        cluster.deploy(serve_config(port, decoder={"num_replicas": replicas},
                                    args={"decoder_app": FAKE_DECODER, "router": router},
                                    env={**env, "TEXTSKETCH_BENCH_ROUTER": router}))
        cluster.wait_running(url, replicas)

    try:
        deploy(1, "bucket_affinity")
        report["ray_health_live"] = latencies(f"{url}/decoder/health/live", args.latency_requests)
        report["throughput_1_replica"] = throughput(url, args.requests, args.concurrency)
        deploy(2, "bucket_affinity")
        report["throughput_2_replicas"] = throughput(url, args.requests, args.concurrency)
        report["fill_bucket_affinity"] = batch_fill(url, args.requests, args.concurrency)
        deploy(2, "power_of_two")
        report["fill_power_of_two"] = batch_fill(url, args.requests, args.concurrency)
    finally:
        cluster.shutdown()
    report["machine_after"] = machine()

    plain_live, ray_live = report["plain_health_live"], report["ray_health_live"]
    one, two = report["throughput_1_replica"], report["throughput_2_replicas"]
    affine, p2c = report["fill_bucket_affinity"], report["fill_power_of_two"]
    print(f"machine: {report['machine_before']['cpus']} CPUs, load average before {report['machine_before']['loadavg']}, "
          f"after {report['machine_after']['loadavg']}")
    print("busiest processes before (%CPU over their lifetime, elapsed, command):")
    for line in report["machine_before"]["busiest"][:5]:
        print("   ", line)
    print(f"fake model: {args.delay} s per batch, max_batch_size {MAX_BATCH}; {args.requests} mixed requests, "
          f"concurrency {args.concurrency}")
    print(f"{'figure':44s} {'A':>24s} {'B':>24s}")
    print(f"{'throughput, req/s (A: 1 replica, B: 2)':44s} {one['requests_per_s']:>24} {two['requests_per_s']:>24}")
    print(f"{'GET health p50 ms (A: uvicorn, B: Ray proxy)':44s} {plain_live['p50_ms']:>24} {ray_live['p50_ms']:>24}")
    print(f"{'GET health p99 ms (A: uvicorn, B: Ray proxy)':44s} {plain_live['p99_ms']:>24} {ray_live['p99_ms']:>24}")
    print(f"{'mean batch fill (A: bucket-affine, B: p2c)':44s} {affine['mean_fill']:>24} {p2c['mean_fill']:>24}")
    print(f"{'mean jobs per batch (A: affine, B: p2c)':44s} {affine['mean_batch']:>24} {p2c['mean_batch']:>24}")
    print(f"{'throughput during fill run, req/s':44s} {affine['requests_per_s']:>24} {p2c['requests_per_s']:>24}")
    print(f"proxy overhead p50: {ray_live['p50_ms'] - plain_live['p50_ms']:.2f} ms, "
          f"p99: {ray_live['p99_ms'] - plain_live['p99_ms']:.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
