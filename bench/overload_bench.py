"""Overload: many more concurrent decode requests than the decoder's small queue holds.

A real uvicorn decoder on 127.0.0.1 (the real app, scheduler, bitstream and text
decoding). By default its model is the test ``PoisonReconstructor`` (flat images,
``--model-delay`` seconds per batch) so the run measures admission control, not
diffusion; ``--model tiny`` uses the tiny diffusion profile instead (seconds per
image on a CPU: use far fewer requests).

Each request must be answered: 200, or 429/503 with ``Retry-After``; no
connection errors, nothing lost (decoded jobs in /metrics == 200 answers), the
decoder ready afterwards.

    python bench/overload_bench.py --requests 2000 --concurrency 200 --max-queue-size 16

Prints the figures and writes ``bench/out/overload_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx
import psutil

from services.testing.fakes import FAKE_DECODER
from services.testing.load import metric_sum, percentile, post_all
from services.testing.payloads import pic_payload
from services.testing.servers import start_process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--max-queue-size", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--model", choices=("fake", "tiny"), default="fake")
    parser.add_argument("--model-delay", type=float, default=0.05, help="Fake model: seconds per batch.")
    parser.add_argument("--time-limit", type=float, default=300)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "overload_bench.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="overload-bench-"))
    env = {"TEXTSKETCH_CACHE_DIR": os.environ.get("TEXTSKETCH_CACHE_DIR", str(work / "cache")),
           "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
           "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": str(args.max_queue_size),
           "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": str(args.max_batch_size),
           "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "5",
           "TEXTSKETCH_DECODER_REQUEST_TIMEOUT_S": str(args.time_limit),
           "TEXTSKETCH_FAKE_DELAY_S": str(args.model_delay)}
    target = FAKE_DECODER if args.model == "fake" else "decoder_service.app:create_app"
    service = start_process(target, env, work)
    bodies = [pic_payload(token_ids=(1000 + i % 40000,)) for i in range(args.requests)]
    try:
        service.wait_ready(300)
        before = httpx.get(f"{service.url}/metrics", timeout=10).text
        process = psutil.Process(service.process.pid)
        rss_before = process.memory_info().rss
        start = time.perf_counter()
        answers = asyncio.run(asyncio.wait_for(
            post_all(f"{service.url}/decode", bodies, concurrency=args.concurrency, timeout_s=args.time_limit),
            args.time_limit + 30))
        seconds = time.perf_counter() - start
        rss_after = process.memory_info().rss
        after = httpx.get(f"{service.url}/metrics", timeout=10).text
        ready = httpx.get(f"{service.url}/health/ready", timeout=10).status_code
        tracebacks = service.log().count("Traceback")
    finally:
        service.stop()

    statuses = collections.Counter(a.status for a in answers)
    by_status = {str(s): [a.seconds for a in answers if a.status == s] for s in sorted(statuses)}
    decoded = metric_sum(after, "textsketch_batch_size_sum") - metric_sum(before, "textsketch_batch_size_sum")
    batches = metric_sum(after, "textsketch_batch_size_count") - metric_sum(before, "textsketch_batch_size_count")
    latencies = [a.seconds for a in answers]
    result = {
        "command": " ".join(sys.argv), "model": args.model,
        "model_delay_s_per_batch": args.model_delay if args.model == "fake" else None,
        "requests": args.requests, "answered": len(answers), "concurrency": args.concurrency,
        "max_queue_size": args.max_queue_size, "max_batch_size": args.max_batch_size, "seconds": round(seconds, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "connection_errors": statuses.get(0, 0),
        "refusals_without_retry_after": sum(1 for a in answers if a.status in (429, 503) and not a.retry_after),
        "unexpected_statuses": sum(v for k, v in statuses.items() if k not in (200, 429, 503)),
        "decoded_jobs_in_metrics": decoded, "batches": batches,
        "mean_batch_size": round(decoded / batches, 2) if batches else None,
        "lost": statuses.get(200, 0) - decoded,
        "latency_ms": {"all": {q: round(percentile(latencies, q) * 1e3, 1) for q in (50, 90, 99, 100)},
                       **{s: {q: round(percentile(v, q) * 1e3, 1) for q in (50, 90, 99, 100)}
                          for s, v in by_status.items()}},
        "ready_after": ready, "rss_mb_before": round(rss_before / 2**20, 1), "rss_mb_after": round(rss_after / 2**20, 1),
        "tracebacks_in_log": tracebacks,
    }
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    ok = (result["answered"] == args.requests and result["connection_errors"] == 0
          and result["unexpected_statuses"] == 0 and result["refusals_without_retry_after"] == 0
          and result["lost"] == 0 and ready == 200)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
