"""Decoder capacity probes, run the same way against two checkouts side by side (before / after).

Each probe starts its own decoder process on 127.0.0.1 from the checkout under test, with the
venv's Python. The current checkout starts through its launcher (``python -m decoder_service``);
a checkout without one (``--before``, e.g. a ``git worktree`` of an older commit) starts the way
it was started then: ``python -m uvicorn --factory ... --timeout-graceful-shutdown G``.

- ``amplify``: the real tiny diffusion decoder; the issue's 20-byte payload declaring an
  8192x8192 output, and a PIC payload declaring 8192x512. Status, answer bytes, seconds, and the
  process's peak memory growth (VmHWM after resetting it through /proc/<pid>/clear_refs, Linux).
- ``overload``: the real tiny decoder with a ``--deadline`` second request deadline
  (``TEXTSKETCH_DECODER_REQUEST_TIMEOUT_S``, both checkouts), warmed by one decode; then
  ``--requests`` PIC decodes (96x64, 768x512 working) at ``--concurrency``. Share of admitted
  requests (not 429) that finish 200, the 429s and their distinct Retry-After values, answers that
  never came (lost), batches and their mean size and seconds. ``overload`` clients send their next
  request at once after a 429; ``overload-polite`` clients first wait the Retry-After they got (as
  ``services.serving.client`` does).
- ``drain``: the fake model (1 s per batch, batch size 1) with ``--drain-requests`` queued, SIGTERM,
  and a request sent during the drain. The old checkout gets uvicorn's graceful timeout below its
  drain timeout (as scripts/serve.sh had it: 60 s against 120 s), scaled down to
  ``--grace`` seconds; the current one has its drain timeout set to ``--grace`` and the launcher
  sets uvicorn above it. Statuses of accepted requests (200 / typed 503/504 / 500 / lost).

    python bench/capacity_bench.py --before /tmp/before --parts amplify,overload,drain

Prints a table per probe and writes ``bench/out/capacity_bench.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import subprocess  # nosec B404 - starts this project's own apps
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx

from services.testing.load import metric_sum, post_all, proc_kib, reset_peak_rss
from services.testing.payloads import pic_payload
from services.testing.servers import ServiceProcess, free_port

AMPLIFIER = bytes.fromhex("986164cd2000cd200000c40601a4d24d5559c000")  # tiny PIC, 8192x8192, 20 bytes
MSGPACK = {"Content-Type": "application/msgpack"}
FAKE = "services.testing.fakes:create_fake_decoder_app"
REAL = "decoder_service.app:create_app"


def start_decoder(checkout: Path, target: str, env: dict[str, str], log_dir: Path,
                  grace_s: float = 60) -> ServiceProcess:
    """A decoder process started from ``checkout`` (the way that checkout was started)."""
    port = free_port()
    if (checkout / "decoder_service" / "__main__.py").is_file():
        command = [sys.executable, "-m", "decoder_service", "--app", target]
    else:
        command = [sys.executable, "-m", "uvicorn", "--factory", target, "--timeout-graceful-shutdown", str(int(grace_s))]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    log_path = log_dir / f"decoder-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(checkout), "TEXTSKETCH_PROFILE": "tiny",
                "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]", **env}
    process = subprocess.Popen(  # nosec B603 - fixed argv: this Python, the service
        command, cwd=checkout, env=full_env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    return ServiceProcess("decoder", port, process, log_path)


def amplify(checkout: Path, work: Path) -> list[dict]:
    decoder = start_decoder(checkout, REAL, {"TEXTSKETCH_CACHE_DIR": str(work / "cache")}, work)
    rows = []
    try:
        decoder.wait_ready(300)
        probes = [("20 B, 8192x8192 output", AMPLIFIER), ("PIC 8192x512", pic_payload(width=8192, height=512))]
        for name, body in probes:
            before = reset_peak_rss(decoder.process.pid)
            start = time.perf_counter()
            response = httpx.post(f"{decoder.url}/decode", content=body, headers=MSGPACK, timeout=600)
            seconds = time.perf_counter() - start
            rows.append({"probe": name, "request_bytes": len(body), "status": response.status_code,
                         "answer_bytes": len(response.content), "seconds": round(seconds, 2),
                         "peak_growth_mb": round((proc_kib(decoder.process.pid, "VmHWM") - before) / 1024, 1)})
    finally:
        decoder.stop()
    return rows


def overload(checkout: Path, work: Path, requests: int, concurrency: int, deadline_s: float,
             polite: bool = False) -> dict:
    decoder = start_decoder(checkout, REAL, {"TEXTSKETCH_CACHE_DIR": str(work / "cache"),
                                       "TEXTSKETCH_DECODER_REQUEST_TIMEOUT_S": str(deadline_s)}, work)
    try:
        decoder.wait_ready(300)
        warm = httpx.post(f"{decoder.url}/decode", content=pic_payload(), headers=MSGPACK, timeout=120)
        assert warm.status_code == 200, warm.text
        bodies = [pic_payload(token_ids=(1000 + i % 40000,)) for i in range(requests)]
        start = time.perf_counter()
        answers = asyncio.run(post_all(f"{decoder.url}/decode", bodies, concurrency=concurrency, timeout_s=600,
                                       honour_retry_after=polite))
        seconds = time.perf_counter() - start
        text = httpx.get(f"{decoder.url}/metrics", timeout=30).text
    finally:
        decoder.stop()
    batches = metric_sum(text, "textsketch_batch_size_count")
    model_s = metric_sum(text, "textsketch_inference_duration_seconds_sum")
    statuses = collections.Counter(a.status for a in answers)
    admitted = requests - statuses[429]
    retry_after = sorted({a.retry_after for a in answers if a.status == 429}, key=lambda v: float(v or 0))
    return {"clients": "honour Retry-After" if polite else "resend at once", "requests": requests,
            "concurrency": concurrency, "deadline_s": deadline_s, "seconds": round(seconds, 1),
            "statuses": dict(sorted(statuses.items())), "admitted": admitted,
            "admitted_ok_share": round(statuses[200] / admitted, 3) if admitted else None,
            "retry_after_values": retry_after[:12], "distinct_retry_after": len(retry_after),
            "lost": statuses[0], "batches": int(batches),
            "mean_batch_size": round(metric_sum(text, "textsketch_batch_size_sum") / batches, 2) if batches else None,
            "mean_batch_seconds": round(model_s / batches, 2) if batches else None}


def drain(checkout: Path, work: Path, n_requests: int, grace_s: float) -> dict:
    new = (checkout / "decoder_service" / "__main__.py").is_file()
    env = {"TEXTSKETCH_CACHE_DIR": str(work / "cache"), "TEXTSKETCH_FAKE_DELAY_S": "1.0",
           "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "1", "TEXTSKETCH_DECODER_MAX_QUEUE_SIZE": str(n_requests + 4)}
    if new:
        env["TEXTSKETCH_DECODER_DRAIN_TIMEOUT_S"] = str(grace_s)
    decoder = start_decoder(checkout, FAKE, env, work, grace_s=grace_s)
    try:
        decoder.wait_ready(300)

        async def main():
            async with httpx.AsyncClient(timeout=120) as client:
                warm = await client.post(f"{decoder.url}/decode", content=pic_payload(), headers=MSGPACK)
                assert warm.status_code == 200
                accepted = [asyncio.ensure_future(client.post(
                    f"{decoder.url}/decode", content=pic_payload(token_ids=(700 + i,)), headers=MSGPACK))
                    for i in range(n_requests)]
                await asyncio.sleep(1.0)
                decoder.process.send_signal(signal.SIGTERM)
                sent_at = time.monotonic()
                await asyncio.sleep(0.5)
                try:
                    during = (await client.post(f"{decoder.url}/decode", content=pic_payload(),
                                                headers=MSGPACK)).status_code
                except httpx.HTTPError as exc:
                    during = type(exc).__name__
                results = await asyncio.gather(*accepted, return_exceptions=True)
                return results, during, time.monotonic() - sent_at

        results, during, seconds = asyncio.run(main())
        decoder.process.wait(120)
    finally:
        decoder.stop()
    outcome = collections.Counter()
    for result in results:
        if isinstance(result, Exception):
            outcome["lost (" + type(result).__name__ + ")"] += 1
        elif result.status_code == 200:
            outcome["200"] += 1
        else:
            try:
                code = result.json().get("error")
            except ValueError:
                code = "plain text"
            outcome[f"{result.status_code} {code}"] += 1
    typed = sum(v for k, v in outcome.items() if k == "200" or k.startswith(("503 ", "504 ")))
    return {"accepted": n_requests, "outcomes": dict(outcome), "ok_or_typed_share": round(typed / n_requests, 3),
            "new_request_during_drain": during, "seconds_after_sigterm": round(seconds, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="Checkout of the old code to run the same probes against.")
    parser.add_argument("--parts", default="amplify,overload,overload-polite,drain")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--deadline", type=float, default=10.0, help="Overload probe: request deadline, seconds.")
    parser.add_argument("--drain-requests", type=int, default=12)
    parser.add_argument("--grace", type=float, default=4.0, help="Drain / graceful seconds of the drain probe.")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "capacity_bench.json")
    args = parser.parse_args()
    parts = args.parts.split(",")
    trees = ([("before", args.before.resolve())] if args.before else []) + [("after", REPO)]
    report: dict = {}
    for label, checkout in trees:
        work = Path(tempfile.mkdtemp(prefix=f"capacity-{label}-"))
        entry = report.setdefault(label, {"checkout": str(checkout)})
        if "amplify" in parts:
            entry["amplify"] = amplify(checkout, work)
            for row in entry["amplify"]:
                print(f"[{label}] amplify {row}", flush=True)
        for polite, part in ((False, "overload"), (True, "overload-polite")):
            if part in parts:
                entry[part] = overload(checkout, work, args.requests, args.concurrency, args.deadline, polite)
                print(f"[{label}] {part} {entry[part]}", flush=True)
        if "drain" in parts:
            entry["drain"] = drain(checkout, work, args.drain_requests, args.grace)
            print(f"[{label}] drain {entry['drain']}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
