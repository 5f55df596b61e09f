"""Hostile-payload fuzzing: the bitstream parser in-process, then a running decoder over HTTP.

Bodies come from ``services.testing.hostile.hostile_payloads``: msgpack traps
(4 GiB declared lengths, 5,000-deep nesting, wrong types, extreme sizes), random
bytes, and 1-4 random mutations of valid payloads (the golden files and
tiny-profile PIC/PICS payloads).

1. ``parser``: ``parse`` + the decoder's pre-model checks (working-size limit,
   prompt and sketch body decoding) on every body; any exception other than
   ``BitstreamError`` / ``ProfileMismatchError`` is a failure.
2. ``http``: the bodies POSTed to a real uvicorn decoder on 127.0.0.1 (default:
   the real app with the fake model, ``--model tiny`` for the tiny diffusion
   profile); every answer must be a 4xx with ``{"error", "detail"}`` or a 200
   for a body that is a valid tiny payload; no 5xx, no connection error, the
   decoder ready afterwards.

    python bench/fuzz_bench.py --parser-cases 100000 --http-cases 5000

Prints the figures and writes ``bench/out/fuzz_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
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

from services.bitstream.container import parse
from services.codec import check_working_size, payload_to_job
from services.errors import BitstreamError, ProfileMismatchError
from services.limits import DEFAULT_MAX_WORKING_PIXELS
from services.profiles import PROFILES_BY_ID
from services.testing.fakes import FAKE_DECODER
from services.testing.hostile import hostile_payloads
from services.testing.load import percentile, post_all
from services.testing.payloads import locally_valid
from services.testing.servers import start_process

MAX_WORKING_PIXELS = DEFAULT_MAX_WORKING_PIXELS  # CodecSettings.max_working_pixels default


def parser_part(n: int, seed: int, time_limit_s: float) -> dict:
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    times: list[float] = []
    start = time.perf_counter()
    for index, body in enumerate(hostile_payloads(n, seed)):
        if time.perf_counter() - start > time_limit_s:
            break
        t0 = time.perf_counter()
        try:
            payload = parse(body)
            outcome = "valid"
            profile = PROFILES_BY_ID[payload.profile]
            try:
                check_working_size(payload, profile, MAX_WORKING_PIXELS)
                payload_to_job(payload, profile)
            except BitstreamError:
                outcome = "body_error"
        except BitstreamError:
            outcome = "parse_error"
        except ProfileMismatchError:
            outcome = "profile_mismatch"
        except Exception as exc:  # noqa: BLE001 - the point is to catch anything untyped
            outcome = "UNEXPECTED"
            failures.append(f"case {index}: {exc!r}"[:300])
        times.append(time.perf_counter() - t0)
        outcomes[outcome] += 1
    return {"cases": sum(outcomes.values()), "seed": seed, "outcomes": dict(outcomes), "unexpected": failures[:20],
            "n_unexpected": len(failures), "seconds": round(time.perf_counter() - start, 2),
            "per_case_us_p50": round(percentile(times, 50) * 1e6, 1),
            "per_case_us_p99": round(percentile(times, 99) * 1e6, 1),
            "per_case_ms_max": round(max(times) * 1e3, 2)}


def http_part(n: int, seed: int, concurrency: int, model: str, time_limit_s: float) -> dict:
    bodies = list(hostile_payloads(n, seed))
    work = Path(tempfile.mkdtemp(prefix="fuzz-bench-"))
    env = {"TEXTSKETCH_CACHE_DIR": os.environ.get("TEXTSKETCH_CACHE_DIR", str(work / "cache")),
           "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]", "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": "1024"}
    target = FAKE_DECODER if model == "fake" else "decoder_service.app:create_app"
    service = start_process(target, env, work)
    answers = []
    try:
        service.wait_ready(300)
        process = psutil.Process(service.process.pid)
        rss_before = process.memory_info().rss
        start = time.perf_counter()
        for offset in range(0, n, 500):
            if time.perf_counter() - start > time_limit_s:
                break
            chunk = asyncio.run(post_all(f"{service.url}/decode", bodies[offset:offset + 500],
                                         concurrency=concurrency, timeout_s=120))
            answers += [dataclasses.replace(a, index=a.index + offset) for a in chunk]
        seconds = time.perf_counter() - start
        rss_after = process.memory_info().rss
        ready = httpx.get(f"{service.url}/health/ready", timeout=10).status_code
        log = service.log()
    finally:
        service.stop()
    statuses = collections.Counter(a.status for a in answers)
    errors = collections.Counter(a.error for a in answers if a.status != 200)
    ok_but_invalid = [a.index for a in answers if a.status == 200
                      and not locally_valid(bodies[a.index], MAX_WORKING_PIXELS)]
    missing_message = [a.index for a in answers if a.status not in (0, 200) and not (a.error and a.detail)]
    latencies = [a.seconds for a in answers]
    return {"requests": len(answers), "model": model, "concurrency": concurrency, "seconds": round(seconds, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "error_codes": dict(errors),
            "n_5xx": sum(v for k, v in statuses.items() if k >= 500), "connection_errors": statuses.get(0, 0),
            "ok_but_invalid": ok_but_invalid[:20], "missing_message": missing_message[:20],
            "latency_ms_p50": round(percentile(latencies, 50) * 1e3, 1),
            "latency_ms_p99": round(percentile(latencies, 99) * 1e3, 1),
            "latency_ms_max": round(max(latencies) * 1e3, 1),
            "ready_after": ready, "rss_mb_before": round(rss_before / 2**20, 1),
            "rss_mb_after": round(rss_after / 2**20, 1), "tracebacks_in_log": log.count("Traceback")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parser-cases", type=int, default=100_000)
    parser.add_argument("--http-cases", type=int, default=5_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", choices=("fake", "tiny"), default="fake")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--time-limit", type=float, default=600, help="Seconds per part at most.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "fuzz_bench.json")
    args = parser.parse_args()

    result: dict = {"command": " ".join(sys.argv)}
    if args.parser_cases:
        result["parser"] = parser_part(args.parser_cases, args.seed, args.time_limit)
        print("parser:", json.dumps(result["parser"], indent=1))
    if args.http_cases:
        result["http"] = http_part(args.http_cases, args.seed + 1, args.concurrency, args.model, args.time_limit)
        print("http:", json.dumps(result["http"], indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    ok = (result.get("parser", {}).get("n_unexpected", 0) == 0
          and result.get("http", {}).get("n_5xx", 0) == 0
          and result.get("http", {}).get("connection_errors", 0) == 0
          and not result.get("http", {}).get("ok_but_invalid")
          and not result.get("http", {}).get("missing_message")
          and result.get("http", {}).get("ready_after", 200) == 200)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
