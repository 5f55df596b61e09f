"""Faults: a decoder killed while it loads, SIGTERM with requests queued, failing pipeline calls.

All loopback (127.0.0.1), bounded in count and time.

1. ``kill``: the real decoder (tiny profile) started on an EMPTY cache folder, so
   loading builds and saves the tiny models; SIGKILL at several points of the
   load (``--kill-after``, seconds after the port opens). Before the kill, what
   clients get (503 not_ready + Retry-After); after it, what they get (a
   connection error); then a restart on the same cache folder and port: time to
   ready and a real decode.
2. ``drain``: a decoder (fake model, ``--drain-delay`` s per batch) holding many
   queued requests gets SIGTERM; more requests keep arriving during the drain.
   Every accepted request must complete with 200; late ones get 503 or a
   refused connection; nothing else.
3. ``poison``: the decoder app in-process with a model whose batch fails when a
   job carries the poison token; every failed request must have been in a
   batch with a poisoned job, every other request must succeed.

    python bench/fault_bench.py --part all

Prints the figures and writes ``bench/out/fault_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from services.testing.fakes import FAKE_DECODER, POISON_TOKEN, PoisonReconstructor
from services.testing.payloads import pic_payload
from services.testing.servers import serving, start_process

MSGPACK = {"Content-Type": "application/msgpack"}
DECODER = "decoder_service.app:create_app"


def kill_part(kill_after: list[float]) -> list[dict]:
    rows = []
    for delay in kill_after:
        work = Path(tempfile.mkdtemp(prefix="fault-kill-"))
        env = {"TEXTSKETCH_CACHE_DIR": str(work / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]"}
        first = start_process(DECODER, env, work)
        row: dict = {"kill_after_listening_s": delay}
        try:
            first.wait_listening()
            time.sleep(delay)
            ready = httpx.get(f"{first.url}/health/ready", timeout=5)
            decode = httpx.post(f"{first.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=60)
            row["before_kill"] = {"ready": ready.status_code, "ready_status": ready.json().get("status"),
                                  "decode": decode.status_code,
                                  "decode_error": decode.json().get("error") if decode.status_code != 200 else None,
                                  "retry_after": decode.headers.get("retry-after")}
            first.process.send_signal(signal.SIGKILL)
            row["exit_code"] = first.process.wait(30)
            cache = work / "cache"
            row["cache_at_kill"] = sorted(str(p.relative_to(cache)) for p in cache.glob("*/*")) if cache.exists() else []
            try:
                httpx.post(f"{first.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=5)
                row["after_kill"] = "answered?!"
            except httpx.HTTPError as exc:
                row["after_kill"] = type(exc).__name__
        finally:
            first.stop()
        start = time.perf_counter()
        second = start_process(DECODER, env, work, port=first.port)
        try:
            second.wait_ready(300)
            row["restart_ready_s"] = round(time.perf_counter() - start, 2)
            t0 = time.perf_counter()
            served = httpx.post(f"{second.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=300)
            row["restart_decode"] = served.status_code
            row["restart_decode_s"] = round(time.perf_counter() - t0, 2)
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            row["restart_error"] = repr(exc)[:300]
        finally:
            second.stop()
        row["ok"] = (row.get("before_kill", {}).get("decode") in (200, 503) and row.get("after_kill") == "ConnectError"
                     and row.get("restart_decode") == 200)
        print("kill:", json.dumps(row))
        rows.append(row)
    return rows


def drain_part(n_queued: int, n_late: int, delay_s: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fault-drain-"))
    env = {"TEXTSKETCH_CACHE_DIR": str(work / "cache"), "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
           "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "4", "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": str(n_queued * 2),
           "TEXTSKETCH_DECODER_MAX_QUEUE_DELAY_MS": "5", "TEXTSKETCH_FAKE_DELAY_S": str(delay_s)}
    service = start_process(FAKE_DECODER, env, work)

    async def late_request(client, i: int):
        try:
            response = await client.post(f"{service.url}/decode", content=pic_payload(token_ids=(30000 + i,)),
                                         headers=MSGPACK)
            return response.status_code
        except httpx.HTTPError as exc:
            return type(exc).__name__

    async def main():
        limits = httpx.Limits(max_connections=n_queued + n_late + 10)
        async with httpx.AsyncClient(timeout=600, limits=limits) as client:
            accepted = [asyncio.ensure_future(client.post(f"{service.url}/decode", headers=MSGPACK,
                                                          content=pic_payload(token_ids=(20000 + i,))))
                        for i in range(n_queued)]
            queued = previous = 0
            for _ in range(600):
                await asyncio.sleep(0.05)
                queued = (await client.get(f"{service.url}/health/ready")).json()["queued_jobs"]
                # all inside (queue + the running batch of 4), or the queue stopped growing: arrivals are done
                if queued + 4 >= n_queued or 0 < queued < previous:
                    break
                previous = queued
            sigterm_at = time.perf_counter()
            service.terminate()
            late = []
            for i in range(n_late):  # keep knocking while it drains
                late.append(await late_request(client, i))
                await asyncio.sleep(delay_s / 4)
            results = await asyncio.gather(*accepted, return_exceptions=True)
            return results, late, queued, sigterm_at

    try:
        service.wait_ready(120)
        results, late, queued, sigterm_at = asyncio.run(main())
        exit_code = service.process.wait(300)
        exit_s = time.perf_counter() - sigterm_at
    finally:
        service.stop()
    def outcome(r):
        if not isinstance(r, httpx.Response):
            return type(r).__name__
        return r.status_code if r.status_code == 200 else f"{r.status_code} {r.json().get('error')}"

    statuses = collections.Counter(outcome(r) for r in results)
    row = {"requests_before_sigterm": n_queued, "queued_at_sigterm": queued,
           "accepted_statuses": {str(k): v for k, v in statuses.items()},
           "completed_200": statuses.get(200, 0), "late_requests": n_late,
           "late_statuses": {str(k): v for k, v in collections.Counter(late).items()},
           "exit_code": exit_code, "sigterm_to_exit_s": round(exit_s, 2), "model_delay_s_per_batch": delay_s}
    # Accepted = inside the decoder when SIGTERM came: each must complete. A request still on its way
    # may be refused (503 draining) -- it was never accepted -- but nothing may fail otherwise.
    row["ok"] = (set(statuses) <= {200, "503 draining"} and statuses.get(200, 0) >= queued
                 and set(late) <= {503, "ConnectError"}
                 and exit_code in (0, -signal.SIGTERM))
    print("drain:", json.dumps(row))
    return row


def poison_part(n_requests: int, poison_rate: float, seed: int) -> dict:
    from decoder_service.app import create_app
    from decoder_service.settings import DecoderSettings
    from services.settings import CodecSettings

    made: list[PoisonReconstructor] = []

    def factory(profile, codec):
        made.append(PoisonReconstructor(profile, codec, delay_s=0.01))
        return made[-1]

    settings = DecoderSettings(handle_sigterm=False, max_batch_size=8, max_queue_delay_ms=10, max_queue_size=4096,
                               warmup_batch_sizes=[1],
                               codec=CodecSettings(profile="tiny", cache_dir=Path(tempfile.mkdtemp())))
    app = create_app(settings, reconstructor_factory=factory)
    rng = random.Random(seed)
    tokens = [(POISON_TOKEN,) if rng.random() < poison_rate else (40000 + i,) for i in range(n_requests)]

    async def main():
        semaphore = asyncio.Semaphore(32)
        async with serving(app) as client:
            async def one(t):
                async with semaphore:
                    return (await client.post("/decode", content=pic_payload(token_ids=t), headers=MSGPACK)).status_code
            statuses = await asyncio.gather(*(one(t) for t in tokens))
            return statuses, (await client.get("/health/ready")).status_code

    statuses, ready = asyncio.run(main())
    fake = made[0]
    poisoned = {job.token_ids for batch in fake.batches if any(POISON_TOKEN in j.token_ids for j in batch)
                for job in batch}
    wrong = [(t, s) for t, s in zip(tokens, statuses) if s != (500 if t in poisoned else 200)]
    n_poisoned_batches = sum(1 for b in fake.batches if any(POISON_TOKEN in j.token_ids for j in b))
    row = {"requests": n_requests, "poison_requests": sum(1 for t in tokens if t == (POISON_TOKEN,)),
           "batches": len(fake.batches), "poisoned_batches": n_poisoned_batches,
           "statuses": {str(k): v for k, v in collections.Counter(statuses).items()},
           "innocent_requests_in_poisoned_batches": sum(1 for t in tokens if t in poisoned and t != (POISON_TOKEN,)),
           "mismatches": len(wrong), "ready_after": ready}
    row["ok"] = not wrong and ready == 200
    print("poison:", json.dumps(row))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "kill", "drain", "poison"), default="all")
    parser.add_argument("--kill-after", type=float, nargs="+", default=[0.0, 1.0, 3.0, 6.0])
    parser.add_argument("--drain-requests", type=int, default=100)
    parser.add_argument("--drain-late", type=int, default=20)
    parser.add_argument("--drain-delay", type=float, default=0.2)
    parser.add_argument("--poison-requests", type=int, default=1000)
    parser.add_argument("--poison-rate", type=float, default=0.02)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "fault_bench.json")
    args = parser.parse_args()

    result: dict = {"command": " ".join(sys.argv)}
    if args.part in ("all", "kill"):
        result["kill"] = kill_part(args.kill_after)
    if args.part in ("all", "drain"):
        result["drain"] = drain_part(args.drain_requests, args.drain_late, args.drain_delay)
    if args.part in ("all", "poison"):
        result["poison"] = poison_part(args.poison_requests, args.poison_rate, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    ok = all(r["ok"] for r in result.get("kill", [])) and result.get("drain", {"ok": True})["ok"] and \
        result.get("poison", {"ok": True})["ok"]
    print(f"wrote {args.out}\n{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
